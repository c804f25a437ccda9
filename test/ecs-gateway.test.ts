// The gateway with PROVISIONER=ecs against the fake AWS endpoint (real SDK clients on loopback):
// cold start end to end, one RunTask across replicas, rediscovery after Redis is emptied (issue 4).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { Redis } from 'ioredis';
import { systemClock } from '../gateway/clock.js';
import { createEcsProvisioner } from '../provisioner/ecs.js';
import { demoTasks, startFakeAws } from './fake-aws/index.js';
import { fakeAwsEnv, fakeEcsOptions } from './fake-aws/config.js';
import { NAVIGATE, TEST_ADMIN_TOKEN, request, sessionCookie, startTestGateway, waitRunning } from './helpers/gateway.js';
import { spawnGateway } from './helpers/process.js';
import { startRedis } from './helpers/redis.js';

t.test('cold start through the gateway with the ECS provisioner', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-ecs-'));
  const fake = await startFakeAws({ workspace: demoTasks(dir), durations: { provisioningMs: 50, pendingMs: 50 } });
  const provisioner = createEcsProvisioner(fakeEcsOptions(fake), { clock: systemClock });
  const gw = await startTestGateway({ provisioner });
  t.teardown(async () => { await gw.close(); await fake.close(); rmSync(dir, { recursive: true, force: true }); });
  const cookie = await gw.cookie('alice');
  const host = 'ws-alice.localhost';
  const first = await request(gw.port, { host, headers: { ...NAVIGATE, cookie } });
  t.equal(first.headers['x-gateway-cold-start'], '1');
  t.equal((await waitRunning(gw.port, cookie, host)).state, 'running');
  const page = await request(gw.port, { host, headers: { ...NAVIGATE, cookie } });
  t.match(page.body, /Demo workspace <code>alice<\/code>/, 'the workspace page, served from the task');
  t.equal(fake.count('CreateAccessPoint'), 1, 'one access point');
  t.equal(fake.count('RegisterTaskDefinition'), 1, 'one task definition');
  t.equal(fake.count('RunTask'), 1, 'one RunTask');
  t.equal(fake.count('RegisterInstance'), 1, 'one Cloud Map registration');

  // Stop, then start again: the access point and task definition are reused.
  const stop = await fetch(`http://127.0.0.1:${gw.adminPort}/api/workspaces/alice/stop`, { method: 'POST', headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}` } });
  t.equal(((await stop.json()) as { state: string }).state, 'stopped');
  t.ok(fake.count('StopTask') >= 1 && fake.count('DeregisterInstance') >= 1);
  await request(gw.port, { host, headers: { ...NAVIGATE, cookie } });
  t.equal((await waitRunning(gw.port, cookie, host)).state, 'running');
  t.equal(fake.count('CreateAccessPoint'), 1, 'no new access point on the second start');
  t.equal(fake.count('RegisterTaskDefinition'), 1, 'no new task definition on the second start');
  t.equal(fake.count('RunTask'), 2);
});

t.test('Cloud Map failing, no record: the page load gets 503 BACKEND_UNAVAILABLE and retries, never a blind second start', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-ecs-'));
  const fake = await startFakeAws({ workspace: demoTasks(dir), durations: { provisioningMs: 50, pendingMs: 50 } });
  const provisioner = createEcsProvisioner(fakeEcsOptions(fake, { retry: { baseMs: 10, capMs: 50, throttledBaseMs: 20 } }), { clock: systemClock });
  const gw = await startTestGateway({ provisioner });
  t.teardown(async () => { await gw.close(); await fake.close(); rmSync(dir, { recursive: true, force: true }); });
  const cookie = await gw.cookie('erin');
  const host = 'ws-erin.localhost';
  // The store knows nothing of erin (emptied, or a first start) and describe cannot answer.
  fake.fault('GetInstance', 500);
  const page = await request(gw.port, { host, headers: { ...NAVIGATE, cookie } });
  t.equal(page.status, 503);
  t.equal(page.headers['x-gateway-error'], 'BACKEND_UNAVAILABLE');
  t.ok(Number(page.headers['retry-after']) > 0, 'Retry-After');
  const admin = await fetch(`http://127.0.0.1:${gw.adminPort}/api/workspaces/erin/start`, { method: 'POST', headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}` } });
  t.equal(admin.status, 503);
  t.equal(((await admin.json()) as { error: { code: string } }).error.code, 'BACKEND_UNAVAILABLE', 'the admin API answers the same code');
  t.equal(fake.count('RunTask'), 0, 'nothing started blind');
  // Cloud Map answers again: the retried page load is an ordinary first start.
  fake.clearFaults();
  const again = await request(gw.port, { host, headers: { ...NAVIGATE, cookie } });
  t.equal(again.headers['x-gateway-cold-start'], '1');
  t.equal((await waitRunning(gw.port, cookie, host)).state, 'running');
  t.equal(fake.count('RunTask'), 1);
});

t.test('POST /api/workspaces/<id>/prepare registers the access point and task definition ahead of the first start', async (t) => {
  const fake = await startFakeAws({ durations: { provisioningMs: 50, pendingMs: 50 } });
  const provisioner = createEcsProvisioner(fakeEcsOptions(fake), { clock: systemClock });
  const gw = await startTestGateway({ provisioner });
  t.teardown(async () => { await gw.close(); await fake.close(); });
  const prepare = (id: string) => fetch(`http://127.0.0.1:${gw.adminPort}/api/workspaces/${id}/prepare`, { method: 'POST', headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}` } });
  const r = await prepare('carol');
  t.equal(r.status, 200);
  t.same(await r.json(), { id: 'carol', prepared: true });
  t.equal(fake.count('CreateAccessPoint'), 1, 'the access point');
  t.equal(fake.count('RegisterTaskDefinition'), 1, 'the family');
  t.equal(fake.count('RunTask'), 0, 'nothing started');
  t.same(await (await prepare('carol')).json(), { id: 'carol', prepared: true }, 'again: nothing more to do');
  t.equal(fake.count('RegisterTaskDefinition'), 1);
  // An enrolment script calls it once per student over one keep-alive connection: nothing gathers on it.
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(w.name);
  process.on('warning', onWarning);
  for (let i = 0; i < 15; i++) await (await prepare('carol')).json();
  await new Promise((r) => setImmediate(r));
  process.off('warning', onWarning);
  t.same(warnings, [], 'no listener piles up on the connection');

  // AWS failing (here: every RegisterTaskDefinition answered 500, retries included) is the catalogue's PREPARE_FAILED.
  fake.fault('RegisterTaskDefinition', 500);
  const failed = await prepare('dave');
  t.equal(failed.status, 503);
  t.equal(((await failed.json()) as { error: { code: string } }).error.code, 'PREPARE_FAILED');
  t.equal(failed.headers.get('x-gateway-error'), 'PREPARE_FAILED');
});

t.test('two gateway processes on one Redis, 200 page loads: one RunTask; then Redis emptied: found again, nothing started', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-ecs2-'));
  const fake = await startFakeAws({ workspace: demoTasks(dir), durations: { provisioningMs: 300, pendingMs: 300 } });
  const redis = await startRedis();
  const env = { ...fakeAwsEnv(fake), REDIS_URL: redis.url, RECONCILE_INTERVAL: '1s' };
  const [a, b] = await Promise.all([spawnGateway(env), spawnGateway(env)]);
  t.teardown(async () => { await Promise.all([a.stop(), b.stop()]); await fake.close(); await redis.stop(); rmSync(dir, { recursive: true, force: true }); });
  const cookie = await sessionCookie('bob');
  const host = 'ws-bob.localhost';
  const loads = await Promise.all(Array.from({ length: 200 }, (_, i) => request(i % 2 ? a.port : b.port, { host, headers: { ...NAVIGATE, cookie } })));
  t.ok(loads.every((r) => r.status === 200));
  for (const gw of [a, b]) t.equal((await waitRunning(gw.port, cookie, host)).state, 'running');
  t.equal(fake.count('RunTask'), 1, 'one RunTask for 200 page loads over two replicas');

  // Redis loses everything; a freshly started gateway finds the task through Cloud Map.
  await a.stop();
  await b.stop();
  const client = new Redis(redis.url);
  await client.flushall();
  client.disconnect();
  const c = await spawnGateway(env);
  t.teardown(() => c.stop());
  await c.waitFor((l) => l.event === 'workspace.adopted' && l.workspaceId === 'bob');
  const page = await request(c.port, { host, headers: { ...NAVIGATE, cookie } });
  t.match(page.body, /Demo workspace <code>bob<\/code>/, 'proxied to the running task');
  t.equal(fake.count('RunTask'), 1, 'nothing started');

  // On Node 20 the AWS SDK warns that its releases after early January 2027 need Node 22: one JSON log
  // line, not Node's nine lines of stderr, each an event of its own in CloudWatch Logs.
  for (const gw of [a, b, c]) t.notMatch(gw.stderr(), /Warning/, 'no warning printed on stderr');
  if (Number(process.versions.node.split('.')[0]) < 22) {
    t.ok([a, b, c].every((gw) => gw.logs.some((l) => l.event === 'process.warning' && /NodeVersionSupportWarning/.test(String(l.message)))), "the SDK's notice, logged");
  }
});
