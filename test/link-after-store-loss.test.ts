// A sign-in link is one-time because its jti is recorded in the store. A store that lost its data
// (Redis restarted empty: no persistence, a flush; the memory store of a restarted gateway) has lost
// that record too, so a link signed before the loss is refused, whether or not it was used: the
// student asks for a new one. Sessions are not touched (a Redis restart must not log out a class).
import { createHmac } from 'node:crypto';
import { SignJWT } from 'jose';
import t from 'tap';
import { createManualClock, type Clock } from '../gateway/clock.js';
import { NAVIGATE, TEST_SECRET, XHR, loginUrl, request, startTestGateway, until, type RawResponse, type TestGateway } from './helpers/gateway.js';
import { startRedis } from './helpers/redis.js';
import { registerRunning, startRecordingUpstream } from './helpers/upstream.js';

const HOST = 'ws-rec.localhost';
const code = (r: RawResponse) => r.headers['x-gateway-error'];
const env = { RATE_SIGNIN_PER_MINUTE: '1000' };

/** This machine's clock moved by `offsetMs`: a replica whose clock is off from Redis's. */
const offBy = (offsetMs: number): Clock => ({ now: () => Date.now() + offsetMs });

/** The token of a link the admin API hands the platform. */
async function newLink(gw: TestGateway): Promise<string> {
  return new URL(await loginUrl(gw.adminPort, 'rec')).searchParams.get('token')!;
}

function login(gw: TestGateway, token: string): Promise<RawResponse> {
  return request(gw.port, { host: HOST, path: `/__gateway/login?token=${encodeURIComponent(token)}`, headers: { ...NAVIGATE, 'sec-fetch-site': 'none' } });
}

const sessionOf = (r: RawResponse) => String(r.headers['set-cookie']).split(';')[0];

t.test('Redis restarted empty: links signed before refused on every replica, sessions and later links kept, whatever the replicas\' clocks', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  // 20 s either side of Redis's clock: within what auth.ts allows between replicas (LINK_CLOCK_SKEW_MS).
  const ahead = await startTestGateway({ redisUrl: redis.url, env, clock: offBy(20_000) });
  const behind = await startTestGateway({ redisUrl: redis.url, env, clock: offBy(-20_000) });
  const up = await startRecordingUpstream();
  t.teardown(async () => { await ahead.close(); await behind.close(); await up.close(); });

  const used = await newLink(ahead);
  const first = await login(ahead, used);
  t.equal(first.status, 303, 'a link signs in once');
  const cookie = sessionOf(first);
  const again = await login(behind, used);
  t.same([again.status, code(again)], [401, 'LOGIN_TOKEN_USED'], 'and is refused as used on another replica');
  const unused = await newLink(behind);

  await redis.restart();
  await until(async () => (await ahead.store.ping()) && (await behind.store.ping()));

  for (const [name, gw] of [['ahead', ahead], ['behind', behind]] as const) {
    const replay = await login(gw, used);
    t.same([replay.status, code(replay)], [401, 'LOGIN_TOKEN_EXPIRED'], `the used link, replayed after the loss on the replica ${name}: refused`);
  }
  const never = await login(behind, unused);
  t.same([never.status, code(never)], [401, 'LOGIN_TOKEN_EXPIRED'], 'a link signed before the loss and never used: refused too (it cannot be told from a used one)');
  t.match(await behind.metrics.registry.metrics(), /wsgw_signin_failures_total\{reason="store_reset"\} 2\b/, 'counted under a reason of its own');

  // The session the link gave still holds: nothing about sessions depends on the store's data.
  await registerRunning(ahead.store, 'rec', up.port);
  const page = await request(ahead.port, { host: HOST, path: '/p', headers: { ...XHR, cookie } });
  t.equal(page.status, 200, 'the session signed in before the loss still works');

  // Signed after the loss: works once, on the replica running behind Redis's clock too.
  for (const gw of [behind, ahead]) {
    const fresh = await newLink(gw);
    t.equal((await login(gw, fresh)).status, 303, 'a link signed after the loss signs in');
    const replay = await login(gw === ahead ? behind : ahead, fresh);
    t.same([replay.status, code(replay)], [401, 'LOGIN_TOKEN_USED'], 'once');
  }
});

t.test('one replica on the memory store: a link used before the gateway restarted is refused after it', async (t) => {
  const before = await startTestGateway({ env });
  const used = await newLink(before);
  const unused = await newLink(before);
  t.equal((await login(before, used)).status, 303, 'a link signs in once');
  await before.close();

  // Same GATEWAY_SECRET, new process: its store holds nothing from before.
  const after = await startTestGateway({ env });
  t.teardown(() => after.close());
  for (const [name, token] of [['used', used], ['never used', unused]] as const) {
    const r = await login(after, token);
    t.same([r.status, code(r)], [401, 'LOGIN_TOKEN_EXPIRED'], `a link signed before the restart (${name}): refused`);
  }
  const fresh = await newLink(after);
  t.equal((await login(after, fresh)).status, 303, 'a link signed after the restart signs in');
});

t.test('a link with only a whole-second iat (no rev: an older release\'s) counts to the end of that second', async (t) => {
  const began = Date.UTC(2026, 2, 2, 9, 0, 0, 400);
  const gw = await startTestGateway({ env, clock: createManualClock(began) });
  t.teardown(() => gw.close());
  const key = new Uint8Array(createHmac('sha256', TEST_SECRET).update('workspace-gateway/login-token').digest());
  const signedIn = (second: number, jti: string) => new SignJWT({ sub: 'rec', jti, iat: second, exp: second + 120 }).setProtectedHeader({ alg: 'HS256' }).sign(key);
  const second = Math.floor(began / 1000);
  const before = await login(gw, await signedIn(second - 1, 'jti-second-before'));
  t.same([before.status, code(before)], [401, 'LOGIN_TOKEN_EXPIRED'], 'signed in the second before the store began: refused');
  t.equal((await login(gw, await signedIn(second, 'jti-same-second'))).status, 303, 'signed in the second it began: not known to be before it');
});
