// Revoking a workspace's sessions (admin API revoke-sessions): a workspace handed to another
// student, or a cookie left on a shared machine. Sessions and sign-in links issued before the
// cutoff are refused on both lanes and on every replica, its open WebSockets are closed, and the
// next owner's sign-in works at once.
import { createHmac } from 'node:crypto';
import http from 'node:http';
import { SignJWT } from 'jose';
import t from 'tap';
import { createAuth } from '../gateway/auth.js';
import { createManualClock } from '../gateway/clock.js';
import { createMetrics } from '../gateway/metrics.js';
import { createRevocations, revokedBy, type RevocationSource } from '../gateway/revocations.js';
import { StoreUnavailable, type StateStore } from '../gateway/store/contract.js';
import { createMemoryStore } from '../gateway/store/memory.js';
import { NAVIGATE, TEST_ADMIN_TOKEN, TEST_SECRET, XHR, loginUrl, request, startTestGateway, until, type TestGateway } from './helpers/gateway.js';
import { startRedis } from './helpers/redis.js';
import { registerRunning, startRecordingUpstream, type RecordingUpstream } from './helpers/upstream.js';
import { closed, connected, openWs } from './helpers/ws.js';

async function revoke(gw: TestGateway, id: string): Promise<{ status: number; body: { id?: string; revokedBefore?: number; error?: { code: string } } }> {
  const r = await fetch(`http://127.0.0.1:${gw.adminPort}/api/workspaces/${id}/revoke-sessions`, { method: 'POST', headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}` } });
  return { status: r.status, body: await r.json() as never };
}

/** Follows a sign-in link as a browser's address bar would: the cookie it sets, or the error code. */
async function signIn(port: number, link: string): Promise<{ status: number; cookie?: string; code?: string }> {
  const u = new URL(link);
  const r = await request(port, { host: u.hostname, path: u.pathname + u.search, headers: { ...NAVIGATE, 'sec-fetch-site': 'none' } });
  const set = ([] as string[]).concat(r.headers['set-cookie'] ?? [])[0];
  return { status: r.status, cookie: set?.split(';')[0], code: r.headers['x-gateway-error'] as string | undefined };
}

t.test('revokedBy table: a session signed below the epoch in force is void, one signed at or above it holds', async (t) => {
  const rows: Array<[string, number, number | undefined, boolean]> = [
    ['no epoch in force', 1_000, undefined, false],
    ['signed one below', 1_999, 2_000, true],
    ['signed under the epoch (the next owner signing in at once)', 2_000, 2_000, false],
    ['signed above (the store\'s time, later)', 2_001, 2_000, false],
    ['signed long before', 0, 2_000, true],
  ];
  for (const [name, signed, inForce, want] of rows) t.equal(revokedBy(signed, inForce), want, name);
});

t.test('a cookie signed before revocation epochs existed: its issue time stands in for the epoch', async (t) => {
  const clock = createManualClock(1_764_316_800_000);
  const auth = createAuth({ secret: TEST_SECRET, sessionTtlMs: 3_600_000, loginTokenMaxTtlMs: 300_000, clock });
  // Signed as the release before epochs signed it: the same key, `iat_ms` and no `rev`.
  const key = createHmac('sha256', TEST_SECRET).update('workspace-gateway/session').digest();
  const issued = clock.now() - 5_000;
  const legacy = await new SignJWT({ iat_ms: issued }).setProtectedHeader({ alg: 'HS256', typ: 'wsgw-session' })
    .setSubject('w').setIssuedAt(Math.floor(issued / 1000)).setExpirationTime(Math.floor(issued / 1000) + 3600).sign(key);
  const session = await auth.sessionFor([legacy], 'w');
  t.equal(session?.epoch, issued, 'its epoch is when it was issued');
  t.equal(revokedBy(session!.epoch, issued + 1), true, 'void under a revocation after it');
  t.equal(revokedBy(session!.epoch, issued), false, 'not under one before it');
  const current = await auth.sessionFor([(await auth.createSession('w', 42)).value], 'w');
  t.equal(current?.epoch, 42, 'a session signed now carries the epoch it was given');
});

t.test('a replica learns cutoffs from events at once, and from the store after a missed one', async (t) => {
  const clock = createManualClock(1_764_316_800_000);
  const store = createMemoryStore(clock);
  const seen: Array<[string, string, number, RevocationSource]> = [];
  const make = (name: string) => createRevocations({ store, clock, metrics: createMetrics({ enabled: false, defaultMetrics: false }), refreshMs: 30_000, keepMs: 60_000, onRevoked: (id, c, how) => seen.push([name, id, c, how]) });
  const a = make('a');
  const b = make('b');
  t.teardown(() => { a.close(); b.close(); });
  const issued = clock.now() - 1;
  t.equal(b.voidsNow('w', issued), undefined, 'a workspace not learnt yet: the lane cannot decide');
  t.equal(await b.voids('w', issued), false, 'asked of the store: nothing revoked');
  t.equal(b.voidsNow('w', issued), false, 'now known without waiting');

  const cutoff = await a.revoke('w');
  t.equal(cutoff, clock.now() + 1, 'one past the store\'s time: everything signed so far is below it');
  await new Promise((r) => setImmediate(r)); // the store's events are asynchronous, as Redis pub/sub is
  t.equal(b.voidsNow('w', issued), true, 'the other replica was told by the event');
  t.equal(b.voidsNow('w', cutoff), false, 'a session issued at the cutoff holds');
  t.same(seen, [['a', 'w', cutoff, 'made'], ['b', 'w', cutoff, 'announced']], 'both replicas heard it once (their WebSockets are closed), each knowing how');

  // A revocation whose event b missed (Redis reconnecting): b still uses what it knows until the
  // refresh period has passed, then reads the store again in the background.
  clock.advance(5_000);
  const missed = await store.revokeSessions('w', 60_000);
  const later = clock.now();
  t.equal(b.voidsNow('w', later), false, 'within the refresh period: the known cutoff');
  clock.advance(30_001);
  t.equal(b.voidsNow('w', later), false, 'stale: still the known cutoff while the store is read');
  await new Promise((r) => setImmediate(r));
  t.equal(b.voidsNow('w', later), true, 'the missed cutoff, learnt from the store');
  t.same(seen.slice(2), [['b', 'w', missed, 'read']], 'learnt by a read, not a revocation made now');
  seen.length = 0;
  const c = make('c');
  t.teardown(() => c.close());
  t.equal(await c.voids('w', later), true, 'a replica started after it reads the cutoff');
  t.same(seen, [['c', 'w', missed, 'read']], 'and says it read it');
  seen.length = 0;
  const again = await a.revoke('w');
  t.equal(again >= clock.now(), true);
  await new Promise((r) => setImmediate(r));
  t.same(seen.filter(([, , , how]) => how === 'made'), [['a', 'w', again, 'made']], 'a revocation made is reported where it was made');
  t.same(seen.filter(([, , , how]) => how !== 'made').map(([name, , , how]) => [name, how]), [['b', 'announced'], ['c', 'announced']], 'and announced to the others');
  // Made again in the same millisecond: the epoch still moves past everything signed since the last one.
  seen.length = 0;
  const third = await a.revoke('w');
  t.ok(third > again, 'a revocation in the same millisecond moves the epoch too');
  await new Promise((r) => setImmediate(r));
  t.same(seen, [['a', 'w', third, 'made'], ['b', 'w', third, 'announced'], ['c', 'w', third, 'announced']], 'reported where it was made, announced to the others');
});

t.test('a store that cannot answer: sessions are let in on what the replica knows (as cached routes are served), and it is asked again', async (t) => {
  const clock = createManualClock(1_764_316_800_000);
  const store = createMemoryStore(clock);
  let down = true;
  const flaky: StateStore = { ...store, revocationEpoch: (id) => (down ? Promise.reject(new StoreUnavailable('redis: down')) : store.revocationEpoch(id)) };
  const metrics = createMetrics({ enabled: true, defaultMetrics: false });
  const r = createRevocations({ store: flaky, clock, metrics, refreshMs: 30_000, keepMs: 60_000 });
  t.teardown(() => r.close());
  await store.revokeSessions('w', 60_000); // made elsewhere; its event never reached this replica
  const issued = clock.now();
  t.equal(await r.voids('w', issued), false, 'the store cannot answer: let in');
  t.equal(r.voidsNow('w', issued), false, 'and the warm lane takes it until the refresh');
  t.match(await metrics.registry.metrics(), /wsgw_store_errors_total 1\b/, 'counted as a store error');
  down = false;
  clock.advance(30_001);
  r.voidsNow('w', issued);
  await new Promise((resolve) => setImmediate(resolve));
  t.equal(r.voidsNow('w', issued), true, 'read again once the store answers: void');
});

t.test("revoke-sessions: the old session is refused on both lanes, its WebSocket closed, its unused sign-in link void; the next sign-in works", async (t) => {
  const gw = await startTestGateway();
  const up = await startRecordingUpstream();
  const other = await startRecordingUpstream();
  t.teardown(async () => { await gw.close(); await up.close(); await other.close(); });
  await registerRunning(gw.store, 'rec', up.port);
  await registerRunning(gw.store, 'other', other.port);
  const host = 'ws-rec.localhost';
  const cookie = await gw.cookie('rec');
  const otherCookie = await gw.cookie('other');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const get = (c: string, o: { agent?: http.Agent | false; headers?: Record<string, string>; path?: string; h?: string } = {}) =>
    request(gw.port, { host: o.h ?? host, path: o.path ?? '/page', headers: { ...(o.headers ?? XHR), cookie: c }, agent: o.agent ?? false });

  t.equal((await get(cookie)).status, 200, 'node:http verifies the cookie');
  const warm = await get(cookie, { agent });
  t.equal(warm.status, 200);
  t.not(warm.headers.connection, 'close', 'the warm lane took it (node:http would have closed the connection)');
  t.equal((await get(cookie, { agent })).status, 200, 'and the next on the same connection');
  const ws = await connected(openWs(gw.port, '/socket', { cookie, host: 'ws-rec.localhost' }));
  const wsClosed = closed(ws);
  const unusedLink = await loginUrl(gw.adminPort, 'rec');
  const reached = up.requests.length;

  const r = await revoke(gw, 'rec');
  t.equal(r.status, 200);
  t.equal(r.body.id, 'rec');
  t.ok(Number.isSafeInteger(r.body.revokedBefore) && Math.abs(r.body.revokedBefore! - Date.now()) < 5_000, 'the cutoff is now, in epoch ms');

  t.equal((await wsClosed).code, 1008, 'its open WebSocket is closed with 1008 (policy violation)');
  const onLane = await get(cookie, { agent });
  t.equal(onLane.status, 401, 'the kept-alive warm connection: refused');
  t.equal(onLane.headers['x-gateway-error'], 'NOT_SIGNED_IN');
  t.equal((await get(cookie)).headers['x-gateway-error'], 'NOT_SIGNED_IN', 'a new connection: refused');
  const page = await get(cookie, { headers: { ...NAVIGATE, 'sec-fetch-site': 'none' } });
  t.equal(page.headers['x-gateway-error'], 'NOT_SIGNED_IN', 'a page load: refused');
  t.equal((await get(cookie, { path: '/__gateway/status' })).headers['x-gateway-error'], 'NOT_SIGNED_IN', 'the status poll: refused');
  t.equal(await connected(openWs(gw.port, '/socket', { cookie, host })).then(() => 101, (e: { status?: number }) => e.status), 401, 'a WebSocket reconnect: refused');
  t.equal(up.requests.length, reached, 'nothing of the revoked session reached the workspace');
  t.same(await signIn(gw.port, unusedLink), { status: 401, cookie: undefined, code: 'LOGIN_TOKEN_INVALID' }, 'a sign-in link handed out before: void');

  t.equal((await get(otherCookie, { h: 'ws-other.localhost' })).status, 200, "another workspace's session is untouched");

  const fresh = await signIn(gw.port, await loginUrl(gw.adminPort, 'rec'));
  t.equal(fresh.status, 303, 'a link handed out after the revocation signs in at once');
  t.equal((await get(fresh.cookie!)).status, 200, 'and its session is let in');
  t.equal((await get(fresh.cookie!, { agent })).status, 200, 'on the warm lane too');
  const again = await connected(openWs(gw.port, '/socket', { cookie: fresh.cookie, host }));
  again.close();
  t.equal(up.requests.length, reached + 3, 'exactly the new session\'s requests reached the workspace');
  t.ok(gw.logs.some((l) => l.event === 'sessions.revoked' && l.workspaceId === 'rec' && l.websocketsClosed === 1), 'logged, with the WebSockets it closed');
  t.match(await gw.metrics.registry.metrics(), /wsgw_signin_failures_total\{reason="revoked"\} [1-9]/, 'counted as a sign-in failure of its own reason');
});

t.test('replicas sharing Redis: one revocation holds on all of them, including one started after it', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const up: RecordingUpstream = await startRecordingUpstream();
  t.teardown(() => up.close());
  const a = await startTestGateway({ redisUrl: redis.url });
  const b = await startTestGateway({ redisUrl: redis.url });
  t.teardown(async () => { await a.close(); await b.close(); });
  await registerRunning(a.store, 'rec', up.port);
  const host = 'ws-rec.localhost';
  const cookie = await a.cookie('rec');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const get = (gw: TestGateway, withAgent = false) => request(gw.port, { host, path: '/page', headers: { ...XHR, cookie }, agent: withAgent ? agent : false });
  t.equal((await get(b)).status, 200);
  t.equal((await get(b, true)).status, 200, 'warm on replica b');
  const onB = await connected(openWs(b.port, '/socket', { cookie, host }));
  const onBClosed = closed(onB);

  t.equal((await revoke(a, 'rec')).status, 200, 'revoked through replica a');
  t.equal((await onBClosed).code, 1008, "replica b closed the WebSocket it held");
  t.equal((await get(b, true)).status, 401, "replica b's warm connection: refused");
  const c = await startTestGateway({ redisUrl: redis.url });
  t.teardown(() => c.close());
  t.equal((await get(c)).headers['x-gateway-error'], 'NOT_SIGNED_IN', 'a replica started after it reads the cutoff from the store');
});

t.test('log lines say what happened: one `sessions.revoked` for the revocation made, other replicas say they heard it, a replica reading an old cutoff says it learnt it', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const up: RecordingUpstream = await startRecordingUpstream();
  t.teardown(() => up.close());
  // debug: the lines a replica keeps at debug must still be there, under their own names.
  const env = { LOG_LEVEL: 'debug' };
  const a = await startTestGateway({ redisUrl: redis.url, env });
  const b = await startTestGateway({ redisUrl: redis.url, env });
  t.teardown(async () => { await a.close(); await b.close(); });
  await registerRunning(a.store, 'rec', up.port);
  const host = 'ws-rec.localhost';
  const cookie = await a.cookie('rec');
  const get = (gw: TestGateway) => request(gw.port, { host, path: '/page', headers: { ...XHR, cookie }, agent: false });
  const events = (gw: TestGateway, name: string) => gw.logs.filter((l) => l.event === name && l.workspaceId === 'rec');
  t.equal((await get(b)).status, 200, 'b has read the workspace (no cutoff yet)');
  const onB = await connected(openWs(b.port, '/socket', { cookie, host }));
  const onBClosed = closed(onB);

  t.equal((await revoke(a, 'rec')).status, 200);
  t.equal((await onBClosed).code, 1008);
  t.equal(events(a, 'sessions.revoked').length, 1, 'the replica the revocation was made on logs it once');
  t.equal(events(a, 'sessions.revoked')[0]?.level, 30, 'at info');
  t.equal(events(a, 'sessions.revoked_elsewhere').length + events(a, 'sessions.cutoff_learned').length, 0, 'its own event back from Redis is not news');
  t.equal(events(b, 'sessions.revoked').length, 0, 'the replica that was told does not log a revocation of its own');
  const heard = events(b, 'sessions.revoked_elsewhere');
  t.equal(heard.length, 1, 'it logs that it was told');
  t.equal(heard[0]?.websocketsClosed, 1, 'with the WebSocket it closed');

  // A second revocation in a row: made again, logged again, even where the cutoff did not move.
  t.equal((await revoke(a, 'rec')).status, 200);
  t.equal(events(a, 'sessions.revoked').length, 2, 'each revocation made is logged where it was made');

  const c = await startTestGateway({ redisUrl: redis.url, env });
  t.teardown(() => c.close());
  t.equal((await get(c)).headers['x-gateway-error'], 'NOT_SIGNED_IN');
  t.equal(events(c, 'sessions.revoked').length, 0, 'a replica started later made no revocation');
  t.equal(events(c, 'sessions.revoked_elsewhere').length, 0, 'and was told of none');
  const learnt = events(c, 'sessions.cutoff_learned');
  t.equal(learnt.length, 1, 'it learnt an old cutoff from the store');
  t.equal(learnt[0]?.level, 20, 'at debug: nothing happened but a read');
});

t.test('replicas whose clocks disagree: a revocation voids exactly the sessions signed before it, whichever replica signed them', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const up: RecordingUpstream = await startRecordingUpstream();
  t.teardown(() => up.close());
  // Half a minute either side of the real time: NTP-less hosts drift that far, and any skew above the
  // time between a revocation and the next sign-in is enough.
  const SKEW = 30_000;
  const ahead = await startTestGateway({ redisUrl: redis.url, clock: { now: () => Date.now() + SKEW } });
  const behind = await startTestGateway({ redisUrl: redis.url, clock: { now: () => Date.now() - SKEW } });
  t.teardown(async () => { await ahead.close(); await behind.close(); });
  await registerRunning(ahead.store, 'rec', up.port);
  const host = 'ws-rec.localhost';
  const get = (gw: TestGateway, cookie: string) => request(gw.port, { host, path: '/page', headers: { ...XHR, cookie }, agent: false });
  const both = async (cookie: string) => [(await get(ahead, cookie)).status, (await get(behind, cookie)).status];

  t.test('signed in on the replica ahead just before a revocation made on the one behind: void', async (t) => {
    const before = await signIn(ahead.port, await loginUrl(ahead.adminPort, 'rec'));
    t.equal(before.status, 303);
    t.same(await both(before.cookie!), [200, 200], 'let in everywhere before the revocation');
    const ws = await connected(openWs(ahead.port, '/socket', { cookie: before.cookie, host }));
    const wsClosed = closed(ws);
    t.equal((await revoke(behind, 'rec')).status, 200);
    t.same(await both(before.cookie!), [401, 401], 'refused on both replicas after it');
    t.equal((await wsClosed).code, 1008, 'its WebSocket on the replica ahead is closed');
  });

  t.test('signed in on the replica behind just after a revocation made on the one ahead: holds', async (t) => {
    const old = await signIn(behind.port, await loginUrl(behind.adminPort, 'rec'));
    t.equal((await revoke(ahead, 'rec')).status, 200);
    const after = await signIn(behind.port, await loginUrl(behind.adminPort, 'rec'));
    t.equal(after.status, 303, 'the next owner signs in at once');
    t.equal(after.code, undefined);
    t.same(await both(after.cookie!), [200, 200], 'and is let in on both replicas');
    const ws = await connected(openWs(behind.port, '/socket', { cookie: after.cookie, host }));
    ws.close();
    t.same(await both(old.cookie!), [401, 401], 'the session before the revocation is still void');
  });
});

t.test('Redis restarted empty after a revocation: a replica that knows the epoch refuses a voided sign-in link as it refuses a voided session', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const up: RecordingUpstream = await startRecordingUpstream();
  t.teardown(() => up.close());
  const gw = await startTestGateway({ redisUrl: redis.url });
  t.teardown(() => gw.close());
  await registerRunning(gw.store, 'rec', up.port);
  const host = 'ws-rec.localhost';
  const cookie = await gw.cookie('rec');
  const voidedLink = await loginUrl(gw.adminPort, 'rec');
  const get = (c: string) => request(gw.port, { host, path: '/page', headers: { ...XHR, cookie: c }, agent: false });
  t.equal((await revoke(gw, 'rec')).status, 200);
  t.equal((await get(cookie)).headers['x-gateway-error'], 'NOT_SIGNED_IN', 'the old session: refused');

  // No persistence: the epoch (and the route) is gone from the store; this replica still knows it.
  await redis.restart();
  await until(() => registerRunning(gw.store, 'rec', up.port).then(() => true, () => false));
  t.equal((await get(cookie)).headers['x-gateway-error'], 'NOT_SIGNED_IN', 'the old session: still refused on the replica that learnt the epoch');
  t.same(await signIn(gw.port, voidedLink), { status: 401, cookie: undefined, code: 'LOGIN_TOKEN_INVALID' }, 'the voided link: refused too, not a fresh session');
  const fresh = await signIn(gw.port, await loginUrl(gw.adminPort, 'rec'));
  t.equal(fresh.status, 303, 'a link handed out now signs in');
  t.equal((await get(fresh.cookie!)).status, 200, 'and its session is let in');
});
