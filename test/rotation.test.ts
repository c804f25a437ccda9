// Rotating GATEWAY_SECRET with replicas of two configurations serving at once (a rolling deploy):
// with GATEWAY_SECRET_ACCEPTED naming the other one, each replica takes the other's sessions, sign-in
// links and workspace starts as its own (README "Rotating GATEWAY_SECRET"). Without it, as before: the
// other's sessions are refused and its starts stopped as `unproven`.
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { NAVIGATE, loginUrl, request, startTestGateway, until, waitRunning, type TestGateway } from './helpers/gateway.js';
import type { WorkspaceRecord } from '../gateway/store/contract.js';
import { startRedis, type TestRedis } from './helpers/redis.js';

const OLD = 'old-secret-0123456789-0123456789-abcdef';
const NEW = 'new-secret-0123456789-0123456789-abcdef';

/** Two replicas sharing one Redis and one data folder (the local provisioner's run.json): A and B. */
async function replicas(t: Test, redis: TestRedis, envA: Record<string, string>, envB: Record<string, string>): Promise<[TestGateway, TestGateway]> {
  const dataDir = mkdtempSync(join(tmpdir(), 'rotation-'));
  const a = await startTestGateway({ redisUrl: redis.url, dataDir, env: envA });
  const b = await startTestGateway({ redisUrl: redis.url, dataDir, env: envB });
  t.teardown(async () => { await b.close(); await a.close(); rmSync(dataDir, { recursive: true, force: true }); });
  return [a, b];
}

/** Follows a sign-in link on `port` as a browser's address bar would: the cookie it sets, or the error code. */
async function redeem(port: number, link: string): Promise<{ status: number; cookie?: string; code?: string }> {
  const u = new URL(link);
  const r = await request(port, { host: u.hostname, path: u.pathname + u.search, headers: { ...NAVIGATE, 'sec-fetch-site': 'none' } });
  const set = ([] as string[]).concat(r.headers['set-cookie'] ?? [])[0];
  return { status: r.status, cookie: set?.split(';')[0], code: r.headers['x-gateway-error'] as string | undefined };
}

const page = (gw: TestGateway, host: string, cookie: string, agent?: http.Agent) =>
  request(gw.port, { host, path: '/', headers: { ...NAVIGATE, cookie }, ...(agent ? { agent } : {}) });

/**
 * `from` signs in and starts the workspace; `to` serves it: the session, a sign-in link, and page
 * loads on fresh and kept-alive connections, none failing and nothing stopped as unproven.
 * `fromAccepts`: `from` accepts `to`'s secret too, so the session `to` signs holds on `from`.
 */
async function servesAcross(t: Test, from: TestGateway, to: TestGateway, id: string, fromAccepts: boolean) {
  const host = `ws-${id}.localhost`;
  const cookie = await from.cookie(id);
  t.equal((await page(from, host, cookie)).status, 200, 'the first page load, on the replica that starts it');
  t.equal((await waitRunning(from.port, cookie, host)).state, 'running');
  const generation = (await from.store.getWorkspace(id))!.generation;

  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  for (const [name, via] of [['a new connection', undefined], ['kept alive', agent], ['kept alive, again (the warm lane)', agent]] as const) {
    const r = await page(to, host, cookie, via);
    t.same([r.status, r.headers['x-gateway-error'], /Demo workspace/.test(r.body)], [200, undefined, true], `the other replica serves it with the first one's session: ${name}`);
  }

  const link = await redeem(to.port, await loginUrl(from.adminPort, id));
  t.equal(link.status, 303, "the first replica's sign-in link redeems on the other");
  t.ok(link.cookie, 'and sets a session');
  const back = await page(from, host, link.cookie ?? '');
  if (fromAccepts) t.equal(back.status, 200, 'which the first replica takes too');
  else t.equal(back.headers['x-gateway-error'], 'NOT_SIGNED_IN', 'which the first replica, not accepting the new secret, refuses (step 2 starts from step 1 for that)');

  // Only a failed request starts the recheck that stops an unproven start, and none failed.
  const record = await to.store.getWorkspace(id);
  t.same([record?.state, record?.generation], ['running', generation], 'still running, the same start');
  t.same([...from.logs, ...to.logs].filter((l) => l.event === 'workspace.unproven'), [], 'nobody stopped it as unproven');
}

t.test('A signs with the old secret only, B with the new one accepting the old: B takes what A signed and started', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const [a, b] = await replicas(t, redis, { GATEWAY_SECRET: OLD }, { GATEWAY_SECRET: NEW, GATEWAY_SECRET_ACCEPTED: OLD });
  await servesAcross(t, a, b, 'rot2', false);
});

t.test('during step 2\'s rolling deploy: A of step 1 (old, accepting new) beside B of step 2 (new, accepting old), both ways', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const [a, b] = await replicas(t, redis, { GATEWAY_SECRET: OLD, GATEWAY_SECRET_ACCEPTED: NEW }, { GATEWAY_SECRET: NEW, GATEWAY_SECRET_ACCEPTED: OLD });
  await servesAcross(t, a, b, 'rot1a', true);
  await servesAcross(t, b, a, 'rot1b', true);
});

t.test('without an accepted secret: the other secret\'s sessions are refused and its starts stopped as unproven, as before', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const [a, b] = await replicas(t, redis, { GATEWAY_SECRET: OLD }, { GATEWAY_SECRET: NEW });
  const id = 'norot';
  const host = `ws-${id}.localhost`;
  const cookieA = await a.cookie(id);
  t.equal((await page(a, host, cookieA)).status, 200);
  t.equal((await waitRunning(a.port, cookieA, host)).state, 'running');
  t.not((await page(b, host, cookieA)).status, 200, "B refuses A's session");
  t.equal((await redeem(b.port, await loginUrl(a.adminPort, id))).code, 'LOGIN_TOKEN_INVALID', "and A's sign-in link");
  const r = await page(b, host, await b.cookie(id));
  t.same([r.status, r.headers['x-gateway-error']], [502, 'UPSTREAM_UNREACHABLE'], "A's start cannot prove itself to B");
  const stopped = await until(async () => { const w = await b.store.getWorkspace(id); return w?.state === 'stopped' ? w : undefined; }, 10_000) as WorkspaceRecord;
  t.equal(stopped.reasonCode, 'unproven', 'stopped as unproven');
});
