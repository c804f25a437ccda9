// Access control at its edges (issue 3): a sign-in link raced on two replicas, expiry to the
// millisecond on the injected clock, a changed GATEWAY_SECRET, malformed and crowded cookies, the
// revocation cutoff's lifetime in Redis, and an upgrade in flight while its session is revoked.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { Redis } from 'ioredis';
import t from 'tap';
import { createManualClock } from '../gateway/clock.js';
import { NAVIGATE, TEST_ADMIN_TOKEN, TEST_SECRET, XHR, request, startTestGateway, type RawResponse, type TestGateway } from './helpers/gateway.js';
import { createAuth } from '../gateway/auth.js';
import { startRedis } from './helpers/redis.js';
import { acceptWebSocket, registerRunning, startRecordingUpstream } from './helpers/upstream.js';
import { closed, connected, openWs } from './helpers/ws.js';

const code = (r: RawResponse) => r.headers['x-gateway-error'];
const HOST = 'ws-rec.localhost';

function login(gw: TestGateway, token: string, host = HOST): Promise<RawResponse> {
  return request(gw.port, { host, path: `/__gateway/login?token=${encodeURIComponent(token)}`, headers: { ...NAVIGATE, 'sec-fetch-site': 'none' } });
}

/** Sends the same sign-in link to every gateway at once, `times` each; the statuses and codes that came back. */
async function race(gws: TestGateway[], token: string, times: number): Promise<Array<[number, string | undefined]>> {
  const all = await Promise.all(gws.flatMap((gw) => Array.from({ length: times }, () => login(gw, token))));
  return all.map((r) => [r.status, code(r) as string | undefined]);
}

t.test('a sign-in link used at once on two replicas sharing Redis, and many times on one memory-store replica: exactly one session', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const env = { RATE_SIGNIN_PER_MINUTE: '1000' };
  const a = await startTestGateway({ redisUrl: redis.url, env });
  const b = await startTestGateway({ redisUrl: redis.url, env });
  const mem = await startTestGateway({ env });
  t.teardown(async () => { await a.close(); await b.close(); await mem.close(); });
  for (let i = 0; i < 3; i++) {
    const shared = await race([a, b], await a.gateway.auth.createLoginToken('rec', `jti-race-${i}`), 5);
    t.equal(shared.filter(([s]) => s === 303).length, 1, `redis, round ${i}: one sign-in`);
    t.same(shared.filter(([s]) => s !== 303), Array(9).fill([401, 'LOGIN_TOKEN_USED']), 'the rest: used');
    const one = await race([mem], await mem.gateway.auth.createLoginToken('rec', `jti-race-${i}`), 10);
    t.equal(one.filter(([s]) => s === 303).length, 1, `memory, round ${i}: one sign-in`);
    t.same(one.filter(([s]) => s !== 303), Array(9).fill([401, 'LOGIN_TOKEN_USED']), 'the rest: used');
  }
});

t.test('expiry to the millisecond on the injected clock: sessions (both lanes) and sign-in links', async (t) => {
  const start = Date.UTC(2026, 2, 2, 9, 0, 0, 250);
  const clock = createManualClock(start);
  const gw = await startTestGateway({ clock, env: { SESSION_TTL: '1h', LOGIN_TOKEN_MAX_TTL: '2m', RATE_SIGNIN_PER_MINUTE: '1000' } });
  const up = await startRecordingUpstream();
  t.teardown(async () => { await gw.close(); await up.close(); });
  await registerRunning(gw.store, 'rec', up.port);
  const auth = gw.gateway.auth;
  const session = await auth.createSession('rec');
  const cookie = `wsgw-session=${session.value}`;
  // exp is whole seconds (RFC 7519 4.1.4): the session ends at the second its lifetime reaches, never later.
  t.ok(session.expiresAt <= start + 3_600_000 && session.expiresAt > start + 3_600_000 - 1000, 'ends within its lifetime');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const get = (keep: boolean) => request(gw.port, { host: HOST, path: '/p', headers: { ...XHR, cookie }, agent: keep ? agent : false });
  t.equal((await get(false)).status, 200, 'node:http verifies it');
  t.equal((await get(true)).status, 200);
  t.equal((await get(true)).status, 200, 'the warm lane keeps it');
  const ends = auth.sessionFor([session.value], 'rec').then((s) => s!.expiresAt);
  clock.set((await ends) - 1);
  t.equal((await get(true)).status, 200, 'a millisecond before its end: warm lane');
  t.equal((await get(false)).status, 200, 'a millisecond before its end: node:http');
  clock.set(await ends);
  const warmEnd = await get(true);
  t.same([warmEnd.status, code(warmEnd)], [401, 'NOT_SIGNED_IN'], 'at its end: warm lane refuses');
  const end = await get(false);
  t.same([end.status, code(end)], [401, 'NOT_SIGNED_IN'], 'at its end: node:http refuses');

  clock.set(start);
  const token = await auth.createLoginToken('rec', 'jti-edge-1');
  const exp = Math.floor((start + 120_000) / 1000) * 1000;
  clock.set(exp - 1);
  t.equal((await login(gw, token)).status, 303, 'a sign-in link a millisecond before its end');
  clock.set(start);
  const late = await auth.createLoginToken('rec', 'jti-edge-2');
  clock.set(exp);
  const r = await login(gw, late);
  t.same([r.status, code(r)], [401, 'LOGIN_TOKEN_EXPIRED'], 'at its end: expired');
});

t.test('a changed GATEWAY_SECRET: sessions and links of the old key are refused with their codes, not a 500', async (t) => {
  const old = await startTestGateway();
  const oldCookie = await old.cookie('rec');
  const oldLink = await old.gateway.auth.createLoginToken('rec', 'jti-rotated');
  await old.close();
  const gw = await startTestGateway({ env: { GATEWAY_SECRET: 'a-new-secret-after-rotation-0123456789abcdef', PLATFORM_LOGIN_URL: 'https://platform.example/login' } });
  const up = await startRecordingUpstream();
  t.teardown(async () => { await gw.close(); await up.close(); });
  await registerRunning(gw.store, 'rec', up.port);
  const xhr = await request(gw.port, { host: HOST, path: '/p', headers: { ...XHR, cookie: oldCookie } });
  t.same([xhr.status, code(xhr)], [401, 'NOT_SIGNED_IN'], 'a program: 401 NOT_SIGNED_IN');
  const page = await request(gw.port, { host: HOST, path: '/p', headers: { ...NAVIGATE, 'sec-fetch-site': 'none', cookie: oldCookie } });
  t.equal(page.status, 303, 'a page load: to the platform to sign in again');
  t.match(page.headers.location, /^https:\/\/platform\.example\/login\?return_to=/);
  const status = await request(gw.port, { host: HOST, path: '/__gateway/status', headers: { ...XHR, cookie: oldCookie } });
  t.same([status.status, code(status)], [401, 'NOT_SIGNED_IN'], 'the status poll');
  const ws = await connected(openWs(gw.port, '/s', { cookie: oldCookie, host: HOST })).then(() => 101, (e: { status?: number }) => e.status);
  t.equal(ws, 401, 'a WebSocket');
  const link = await login(gw, oldLink);
  t.same([link.status, code(link)], [401, 'LOGIN_TOKEN_INVALID'], 'an old sign-in link');
  t.equal(up.requests.length, 0);
  t.notOk(gw.logs.some((l) => l.event === 'request.error' || l.event === 'upgrade.error'), 'nothing logged as a fault of ours');
});

t.test('GATEWAY_SECRET_ACCEPTED: sessions and links signed under it are taken, nothing is signed with it', async (t) => {
  const clock = createManualClock(1_764_316_800_000);
  const OLD = 'the-old-secret-0123456789-0123456789-abcdef';
  const NEW = 'the-new-secret-0123456789-0123456789-abcdef';
  const auth = (secret: string, acceptedSecret?: string) => createAuth({ secret, acceptedSecret, sessionTtlMs: 3_600_000, loginTokenMaxTtlMs: 300_000, clock });
  const rotated = auth(NEW, OLD);
  const signers: Array<[string, ReturnType<typeof auth>, boolean]> = [
    ['the current secret', auth(NEW), true],
    ['the accepted secret', auth(OLD), true],
    ['a secret neither', auth('a-third-secret-0123456789-0123456789-abcdef'), false],
  ];
  for (const [name, signer, taken] of signers) {
    const cookie = (await signer.createSession('w')).value;
    t.equal((await rotated.sessionFor([cookie], 'w'))?.workspaceId, taken ? 'w' : undefined, `a session under ${name}`);
    t.equal(rotated.verifiedSessionFor([cookie], 'w')?.workspaceId, taken ? 'w' : undefined, `then on the warm lane, under ${name}`);
    const link = await rotated.checkLoginToken(await signer.createLoginToken('w', `jti-${name}`), 'w');
    t.same(link.ok ? 'ok' : link.reason, taken ? 'ok' : 'signature', `a sign-in link under ${name}`);
  }
  const oldLink = await auth(OLD).createLoginToken('w', 'jti-late');
  const oldCookie = (await auth(OLD).createSession('w')).value;
  t.equal(await auth(NEW).sessionFor([oldCookie], 'w'), undefined, 'without the accepted secret: the old session refused, as before');
  t.match(await auth(NEW).checkLoginToken(oldLink, 'w'), { ok: false, reason: 'signature' }, 'and the old link');
  t.match(await rotated.checkLoginToken(oldLink, 'x'), { ok: false, reason: 'wrong_workspace' }, 'an accepted link still names its workspace');
  clock.advance(300_001);
  t.match(await rotated.checkLoginToken(oldLink, 'w'), { ok: false, code: 'LOGIN_TOKEN_EXPIRED' }, 'and expires as its own would');
  const mine = (await rotated.createSession('w')).value;
  t.equal(await auth(OLD).sessionFor([mine], 'w'), undefined, 'what it signs is under the current secret only');
  t.equal((await auth(NEW).sessionFor([mine], 'w'))?.workspaceId, 'w');
});

t.test('malformed, crowded and oversized cookies: 401 or 431 with a code, never a crash', async (t) => {
  const gw = await startTestGateway({ env: { MAX_HEADER_SIZE: '16384' } });
  const up = await startRecordingUpstream();
  t.teardown(async () => { await gw.close(); await up.close(); });
  await registerRunning(gw.store, 'rec', up.port);
  const valid = await gw.cookie('rec');
  const b64 = (s: string) => Buffer.from(s).toString('base64url');
  const rows: Array<[string, string, number, string]> = [
    ['not base64', 'wsgw-session=%%%!!', 401, 'NOT_SIGNED_IN'],
    ['three bad parts', 'wsgw-session=a.b.c', 401, 'NOT_SIGNED_IN'],
    ['header not JSON', `wsgw-session=${b64('{')}.${b64('{}')}.x`, 401, 'NOT_SIGNED_IN'],
    ['payload not JSON', `wsgw-session=${b64('{"alg":"HS256","typ":"wsgw-session"}')}.${b64('[')}.x`, 401, 'NOT_SIGNED_IN'],
    ['empty value', 'wsgw-session=', 401, 'NOT_SIGNED_IN'],
    ['a lone quote', 'wsgw-session="', 401, 'NOT_SIGNED_IN'],
    ['unicode', 'wsgw-session=\u00e9\u00e9', 401, 'NOT_SIGNED_IN'],
    ['200 copies of a bad one', Array(200).fill('wsgw-session=a.b.c').join('; '), 401, 'NOT_SIGNED_IN'],
    ['500 other cookies and the valid one last', `${Array.from({ length: 500 }, (_, i) => `c${i}=v`).join('; ')}; ${valid}`, 200, ''],
    // A session is looked for among the first four values only (auth.ts MAX_SESSION_VALUES).
    ['three bad values, then the valid one', `${Array(3).fill('wsgw-session=a.b.c').join('; ')}; ${valid}`, 200, ''],
    ['four bad values, then the valid one', `${Array(4).fill('wsgw-session=a.b.c').join('; ')}; ${valid}`, 401, 'NOT_SIGNED_IN'],
    ['one value of 15,000 characters', `wsgw-session=${'A'.repeat(15_000)}`, 401, 'NOT_SIGNED_IN'],
    ['over the header limit', `wsgw-session=${'A'.repeat(20_000)}`, 431, 'HEADERS_TOO_LARGE'],
  ];
  for (const [name, cookie, status, want] of rows) {
    for (const keep of [false, true]) {
      const agent = keep ? new http.Agent({ keepAlive: true, maxSockets: 1 }) : false;
      const r = await request(gw.port, { host: HOST, path: '/p', headers: { ...XHR, cookie }, agent }).catch((e: Error) => ({ status: 0, headers: {}, body: e.message }) as RawResponse);
      if (agent) agent.destroy();
      t.equal(r.status, status, `${name}${keep ? ' (kept-alive)' : ''}: ${status}`);
      if (want) t.equal(code(r), want, `${name}: ${want}`);
    }
  }
  t.equal((await request(gw.port, { host: HOST, path: '/p', headers: { ...XHR, cookie: valid } })).status, 200, 'still up');
  t.notOk(gw.logs.some((l) => l.event === 'request.error'), 'nothing logged as a fault of ours');
});

t.test("the revocation cutoff's key in Redis lasts past the longest session and no longer", async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const gw = await startTestGateway({ redisUrl: redis.url, env: { SESSION_TTL: '12h', LOGIN_TOKEN_MAX_TTL: '5m' } });
  t.teardown(() => gw.close());
  const r = await fetch(`http://127.0.0.1:${gw.adminPort}/api/workspaces/rec/revoke-sessions`, { method: 'POST', headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}` } });
  t.equal(r.status, 200);
  const client = new Redis(redis.url);
  t.teardown(() => client.disconnect());
  const ttl = await client.pttl(`${gw.config.redisPrefix}revoked:rec`);
  t.ok(ttl > 12 * 3_600_000, `kept past a session issued just before it (${ttl} ms)`);
  t.ok(ttl <= 12 * 3_600_000 + 5 * 60_000, 'and not for ever');
});

t.test('an upgrade in flight when its session is revoked: the WebSocket does not outlive the revocation', async (t) => {
  const gw = await startTestGateway();
  const held: Array<() => void> = [];
  const sockets = new Set<Duplex>();
  const arrived: Array<() => void> = [];
  const server = http.createServer((_req, res) => res.end('ok'));
  server.on('upgrade', (req, socket: Duplex) => {
    sockets.add(socket);
    held.push(() => acceptWebSocket(req, socket));
    for (const f of arrived.splice(0)) f();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(async () => { await gw.close(); for (const s of sockets) s.destroy(); await new Promise((r) => server.close(r)); });
  await registerRunning(gw.store, 'rec', (server.address() as AddressInfo).port);
  const cookie = await gw.cookie('rec');
  const ws = openWs(gw.port, '/s', { cookie, host: HOST });
  const open = connected(ws).then(() => 'open', (e: { status?: number; headers?: Record<string, string> }) => `refused ${e.status} ${e.headers?.['x-gateway-error']}`);
  const wsClosed = closed(ws);
  await new Promise<void>((r) => arrived.push(r)); // authorized: the upgrade reached the workspace
  const rev = await fetch(`http://127.0.0.1:${gw.adminPort}/api/workspaces/rec/revoke-sessions`, { method: 'POST', headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}` } });
  t.equal(rev.status, 200, 'revoked while the workspace has not answered');
  held.shift()!();
  const how = await open;
  if (how === 'open') {
    const bound = new Promise<{ code: number }>((r) => setTimeout(() => r({ code: 0 }), 3000).unref());
    t.equal((await Promise.race([wsClosed, bound])).code, 1008, 'opened, then closed with 1008 at once');
  } else t.equal(how, 'refused 401 NOT_SIGNED_IN', 'or refused as a revoked session is');
  t.equal(gw.gateway.openWebSockets(), 0, 'no pair of the revoked session is left');
});

t.test('a sign-in link made on a replica whose clock runs ahead is taken by one behind it, within its own lifetime', async (t) => {
  // The lifetime check compared the link's exp with the checking replica's clock, allowing 1 s: a link
  // made on a replica 10 s ahead read as 10 s too long-lived on the other and was refused 'lifetime'.
  const at = Date.UTC(2026, 10, 28, 9, 0, 0);
  const opts = { secret: TEST_SECRET, sessionTtlMs: 3_600_000, loginTokenMaxTtlMs: 300_000 };
  const ahead = createAuth({ ...opts, clock: createManualClock(at + 10_000) });
  const behind = createAuth({ ...opts, clock: createManualClock(at - 10_000) });
  const check = await behind.checkLoginToken(await ahead.createLoginToken('rec', 'jti-skew'), 'rec');
  t.equal(check.ok, true, 'accepted');
  // Still refused: a link signed for longer than LOGIN_TOKEN_MAX_TTL, whatever the clocks.
  const longer = createAuth({ ...opts, loginTokenMaxTtlMs: 600_000, clock: createManualClock(at) });
  const tooLong = await behind.checkLoginToken(await longer.createLoginToken('rec', 'jti-long', 600_000), 'rec');
  t.same(tooLong.ok ? 'ok' : [tooLong.code, tooLong.reason], ['LOGIN_TOKEN_INVALID', 'lifetime'], 'an over-long lifetime is refused');
  // A signer whose clock runs far ahead (two hours) made a link that would stay good here for two hours.
  const farAhead = createAuth({ ...opts, clock: createManualClock(at + 2 * 3_600_000) });
  const late = await behind.checkLoginToken(await farAhead.createLoginToken('rec', 'jti-far'), 'rec');
  t.same(late.ok ? 'ok' : [late.code, late.reason], ['LOGIN_TOKEN_INVALID', 'lifetime'], 'a link from a signer far ahead is refused');
});
