// SIGTERM under load (issue 8), on the real entry point in its own process with a real Redis:
// readiness false at once, new connections served during the drain, WebSockets closed with 1001,
// activity flushed, leases released, exit 0 well before the ECS stop timeout.
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { loadConfig } from '../gateway/config.js';
import { createRedisStore } from '../gateway/store/redis.js';
import { NAVIGATE, request, sessionCookie, until, waitRunning } from './helpers/gateway.js';
import { spawnGateway } from './helpers/process.js';
import { startRedis } from './helpers/redis.js';
import { closed, connected, nextMessage, openWs } from './helpers/ws.js';

const status = (port: number, path: string) => new Promise<number>((resolve) => {
  http.get({ host: '127.0.0.1', port, path, agent: false }, (r) => { r.resume(); resolve(r.statusCode ?? 0); }).on('error', () => resolve(0));
});

t.test('the ECS stop timeout is 120 s; the hard shutdown limit is below it', async (t) => {
  t.ok(loadConfig({}).shutdownTimeoutMs < 120_000);
});

t.test('SIGTERM: drain, 1001, flush, release, exit 0', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const dataDir = mkdtempSync(join(tmpdir(), 'wsgw-sigterm-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  const gw = await spawnGateway({
    REDIS_URL: redis.url, LOCAL_DATA_DIR: dataDir, REAP_INTERVAL: '100ms', ACTIVITY_FLUSH_INTERVAL: '10m', DRAIN_PERIOD: '2s',
  });
  t.teardown(() => gw.stop('SIGKILL'));
  const { child, port, adminPort } = gw;
  const exited = gw.exited.then(() => ({ code: child.exitCode, signal: child.signalCode }));
  t.equal(await status(adminPort, '/readyz'), 200, 'ready once listening');

  const cookie = await sessionCookie('demo');
  await request(port, { headers: { ...NAVIGATE, cookie } });
  t.equal((await waitRunning(port, cookie)).state, 'running');
  const ws = await connected(openWs(port, '/echo', { cookie }));
  const store = await createRedisStore({ url: redis.url, prefix: 'wsgw:', commandTimeoutMs: 1000 });
  t.teardown(() => store.close());
  await until(async () => (await store.leaseOwner('reaper-leader')) !== undefined);
  t.pass('this replica leads the reaper');
  const lastTouch = Date.now();
  t.equal((await request(port, { path: '/headers', headers: { cookie } })).status, 200);
  const closeCode = closed(ws);

  child.kill('SIGTERM');
  await until(async () => (await status(adminPort, '/readyz')) === 503, 5000, 5);
  t.pass('readiness false');
  const during = await request(port, { path: '/headers', headers: { cookie } });
  t.equal(during.status, 200, 'a new connection is served during the drain period');
  const got = nextMessage(ws);
  ws.send('still');
  t.equal((await got).data.toString(), 'still', 'open WebSockets flow until the drain period ends');
  t.equal((await closeCode).code, 1001, 'then closed with 1001 (going away)');
  const exit = await exited;
  t.same(exit, { code: 0, signal: null }, `exit 0 ${gw.stderr().trim() ? `(stderr: ${gw.stderr().trim().slice(0, 500)})` : ''}`);
  t.ok((await store.getActivity('demo'))! >= lastTouch, 'activity flushed on the way out (the flush interval is 10 min)');
  t.equal(await store.leaseOwner('reaper-leader'), undefined, 'reaper leadership released');
  t.equal(await store.leaseOwner('lock:demo'), undefined, 'no workspace lock left');
});
