// Cold start on first page load: exactly one start however many requests, only page loads start,
// failures are shown and never retried by themselves (issue 2).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import type { WorkspaceRecord } from '../gateway/store/contract.js';
import { lockKey } from '../gateway/workspaces.js';
import { NAVIGATE, XHR, request, sessionCookie, startTestGateway, until, waitRunning } from './helpers/gateway.js';
import { spawnGateway } from './helpers/process.js';
import { startRedis } from './helpers/redis.js';
import { connected, openWs } from './helpers/ws.js';

t.test('200 concurrent page loads of a stopped workspace start it once', async (t) => {
  const gw = await startTestGateway({ env: { DEMO_READY_DELAY: '1s' } });
  t.teardown(() => gw.close());
  const cookie = await gw.cookie('herd');
  const responses = await Promise.all(Array.from({ length: 200 }, () => request(gw.port, { host: 'ws-herd.localhost', headers: { ...NAVIGATE, cookie } })));
  t.ok(responses.every((r) => r.status === 200), 'every page load answered at once with a page');
  t.ok(responses.some((r) => r.headers['x-gateway-cold-start'] === '1'), 'the first says it is a cold start');
  // A load that arrives after the workspace came up (a slow, loaded machine: CI saw it) is served by
  // the workspace itself, which is right; what must never happen is anything else.
  const starting = responses.filter((r) => /Starting your workspace/.test(r.body));
  t.ok(starting.length > 0, 'the starting page');
  t.ok(responses.every((r) => /Starting your workspace/.test(r.body) || /Demo workspace <code>herd<\/code>/.test(r.body)), 'each load got the starting page or the workspace');
  t.equal((await waitRunning(gw.port, cookie, 'ws-herd.localhost')).state, 'running');
  t.equal(gw.provisioner.starts.length, 1, 'exactly one start');
  const page = await request(gw.port, { host: 'ws-herd.localhost', headers: { ...NAVIGATE, cookie } });
  t.match(page.body, /Demo workspace <code>herd<\/code>/, 'then the workspace itself');
  t.equal(gw.logs.filter((l) => l.event === 'start.requested').length, 1);
});

t.test('only a top-level page load may start a workspace', async (t) => {
  const gw = await startTestGateway();
  t.teardown(() => gw.close());
  const cookie = await gw.cookie('quiet');
  const host = 'ws-quiet.localhost';
  const rows: Array<[string, Record<string, string>, string]> = [
    ['XHR', { ...XHR }, 'GET'],
    ['script asset', { 'sec-fetch-mode': 'no-cors', 'sec-fetch-dest': 'script', accept: '*/*' }, 'GET'],
    ['POST form', { ...NAVIGATE }, 'POST'],
    ['program without fetch metadata', { accept: 'application/json' }, 'GET'],
    ['HEAD', { ...NAVIGATE }, 'HEAD'],
  ];
  for (const [name, headers, method] of rows) {
    const r = await request(gw.port, { host, method, headers: { ...headers, cookie } });
    t.equal(r.status, 503, name);
    t.equal(r.headers['x-gateway-error'], 'WORKSPACE_STOPPED', name);
    t.ok(Number(r.headers['retry-after']) > 0, `${name}: Retry-After`);
    if (method !== 'HEAD' && !headers.accept?.includes('text/html')) t.equal(JSON.parse(r.body).error.code, 'WORKSPACE_STOPPED');
  }
  await t.rejects(connected(openWs(gw.port, '/echo', { cookie, host })), { status: 503 } as never, 'a WebSocket reconnect loop gets 503');
  t.equal(gw.provisioner.starts.length, 0, 'nothing started');
});

t.test('a failed start shows its reason and is not retried by itself', async (t) => {
  const gw = await startTestGateway({ env: { LOCAL_WORKSPACE: 'code-server', CODE_SERVER_BIN: '/bin/false' } });
  t.teardown(() => gw.close());
  const cookie = await gw.cookie('broken');
  const host = 'ws-broken.localhost';
  await request(gw.port, { host, headers: { ...NAVIGATE, cookie } });
  const status = await waitRunning(gw.port, cookie, host);
  t.equal(status.state, 'failed');
  t.equal(status.reasonCode, 'TASK_STOPPED');
  t.match(String(status.reason), /exited/);
  const again = await request(gw.port, { host, headers: { ...NAVIGATE, cookie } });
  t.equal(again.status, 200);
  t.equal(again.headers['x-gateway-state'], 'failed', 'the page shows the failure');
  t.match(again.body, /"reasonCode":"TASK_STOPPED"/);
  t.equal(gw.provisioner.starts.length, 1, 'reloading does not retry');
  const xhr = await request(gw.port, { host, headers: { ...XHR, cookie } });
  t.equal(xhr.headers['x-gateway-error'], 'WORKSPACE_START_FAILED');
  const forged = await request(gw.port, { host, method: 'POST', path: '/__gateway/start', headers: { cookie } });
  t.equal(forged.status, 400, 'a cross-site form post cannot press the button');
  const retry = await request(gw.port, { host, method: 'POST', path: '/__gateway/start', headers: { cookie, 'x-requested-with': 'gateway' } });
  t.equal(retry.status, 202, 'the try-again button starts it again');
  t.equal((await waitRunning(gw.port, cookie, host)).state, 'failed');
  t.equal(gw.provisioner.starts.length, 2);
});

t.test('two gateway processes sharing Redis: 100 page loads over both, exactly one start', async (t) => {
  const redis = await startRedis();
  const dataDir = mkdtempSync(join(tmpdir(), 'wsgw-two-'));
  const env = { REDIS_URL: redis.url, LOCAL_DATA_DIR: dataDir, DEMO_READY_DELAY: '500ms' };
  const [a, b] = await Promise.all([spawnGateway(env), spawnGateway(env)]);
  t.teardown(async () => { await Promise.all([a.stop(), b.stop()]); await redis.stop(); rmSync(dataDir, { recursive: true, force: true }); });
  const cookie = await sessionCookie('shared');
  const host = 'ws-shared.localhost';
  const loads = Array.from({ length: 100 }, (_, i) => request(i % 2 ? a.port : b.port, { host, headers: { ...NAVIGATE, cookie } }));
  const responses = await Promise.all(loads);
  t.ok(responses.every((r) => r.status === 200));
  // Both replicas learn of readiness (pub/sub) and serve the workspace.
  for (const gw of [a, b]) { const s = await waitRunning(gw.port, cookie, host); t.equal(s.state, 'running', JSON.stringify(s)); }
  const started = [...a.logs, ...b.logs].filter((l) => l.event === 'start.requested');
  t.equal(started.length, 1, 'exactly one start across both replicas');
  for (const gw of [a, b]) {
    const page = await request(gw.port, { host, headers: { ...NAVIGATE, cookie } });
    t.match(page.body, /Demo workspace <code>shared<\/code>/);
  }
});

/**
 * A gateway whose workspace `id` was started by a page load, then left as a replica SIGKILLed between
 * writing 'stopping' and 'stopped' leaves it: the record, published. Returns the running record it had.
 */
async function diedMidStop(t: Test, id: string) {
  const gw = await startTestGateway();
  t.teardown(() => gw.close());
  const cookie = await gw.cookie(id);
  const host = `ws-${id}.localhost`;
  await request(gw.port, { host, headers: { ...NAVIGATE, cookie } });
  t.equal((await waitRunning(gw.port, cookie, host)).state, 'running');
  const running = (await gw.store.getWorkspace(id))!;
  const stopping: WorkspaceRecord = { ...running, state: 'stopping', since: Date.now(), reasonCode: 'idle', reason: 'stopped after being idle' };
  await gw.store.putWorkspace(stopping);
  await gw.store.publish({ record: stopping });
  return { gw, cookie, host, running };
}

t.test('a stop whose replica died midway: the next page load finishes it and starts the workspace', async (t) => {
  const { gw, cookie, host, running } = await diedMidStop(t, 'lost');
  const page = await request(gw.port, { host, headers: { ...NAVIGATE, cookie } });
  t.equal(page.status, 200, 'the starting page');
  // No status poll yet: the page load itself took the stop over (a poll would wait 20 s first).
  await until(() => gw.provisioner.stops.length === 1, 5000);
  const s = await waitRunning(gw.port, cookie, host);
  t.equal(s.state, 'running');
  t.ok(Number(s.generation) > running.generation, 'a new generation');
  t.same(gw.provisioner.stops, ['lost'], 'the old one stopped once');
  t.equal(gw.provisioner.starts.length, 2);
});

t.test('a stop whose replica died midway, loaded while its lock lasts: the starting page\'s status poll takes it over', async (t) => {
  const { gw, cookie, host, running } = await diedMidStop(t, 'lost2');
  t.ok(await gw.store.acquireLease(lockKey('lost2'), 'dead-replica', 1000), 'the dead replica\'s lock, for one more second');
  const page = await request(gw.port, { host, headers: { ...NAVIGATE, cookie } });
  t.equal(page.headers['x-gateway-state'], 'stopping', 'the page waits while the lock lasts');
  t.same(gw.provisioner.stops, [], 'nothing stopped over a held lock');
  // The status long-poll (20 s without a change) finds the lock lapsed and takes the stop over.
  const s = await waitRunning(gw.port, cookie, host, 45_000);
  t.equal(s.state, 'running');
  t.ok(Number(s.generation) > running.generation, 'a new generation');
  t.same(gw.provisioner.stops, ['lost2']);
  t.equal(gw.provisioner.starts.length, 2);
});
