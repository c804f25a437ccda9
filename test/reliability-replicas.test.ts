// Two gateway replicas (real processes) sharing a real Redis with PROVISIONER=ecs against the fake
// AWS endpoint (issue 8): 50 first page loads on each for one workspace, the replica driving the
// start SIGKILLed in the middle of it, and one AWS response lost. Exactly one task; the survivor
// takes the start over once the dead one's lease expires and resumes from the recorded task.
import t from 'tap';
import { createRedisStore } from '../gateway/store/redis.js';
import { startFakeAws } from './fake-aws/index.js';
import { fakeAwsEnv } from './fake-aws/config.js';
import { NAVIGATE, request, sessionCookie, until, waitRunning } from './helpers/gateway.js';
import { spawnGateway, type GatewayProcess } from './helpers/process.js';
import { startRedis } from './helpers/redis.js';

t.test('two replicas, one killed mid-start, one AWS response lost: exactly one task', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  // Slow enough that the start is still in flight when the driving replica dies.
  const fake = await startFakeAws({ durations: { provisioningMs: 2000, pendingMs: 500 } });
  t.teardown(() => fake.close());

  async function replica(): Promise<GatewayProcess> {
    const gw = await spawnGateway({
      ...fakeAwsEnv(fake), REDIS_URL: redis.url, REAPER: 'off', RECONCILE_INTERVAL: '10m',
      // 50 simultaneous first loads each count against the per-workspace start limit (reported to the lead).
      RATE_STARTS_PER_MINUTE: '1000',
    });
    t.teardown(() => gw.stop('SIGKILL'));
    return gw;
  }
  const [a, b] = await Promise.all([replica(), replica()]);
  const store = await createRedisStore({ url: redis.url, prefix: 'wsgw:', commandTimeoutMs: 1000 });
  t.teardown(() => store.close());

  const id = 'stu1';
  const host = `ws-${id}.localhost`;
  const cookie = await sessionCookie(id);
  const load = (port: number) => request(port, { host, headers: { ...NAVIGATE, cookie } }).then((r) => r.status, () => 0);

  // Replica A gets the first 50 page loads and drives the start.
  const first = await Promise.all(Array.from({ length: 50 }, () => load(a.port)));
  t.same(new Set(first), new Set([200]), 'A: 50 starting pages');
  const recorded = (await until(async () => { const r = await store.getWorkspace(id); return r?.handle ? r : undefined; }, 20_000))!;
  t.equal(recorded.state, 'starting', 'the task handle is recorded while the start is in flight');

  // A dies mid-start; B's 50 page loads arrive meanwhile; one AWS response to B is lost.
  fake.fault('DescribeTasks', 'drop', 1);
  a.child.kill('SIGKILL');
  await a.exited;
  const second = await Promise.all(Array.from({ length: 50 }, () => load(b.port)));
  t.same(new Set(second), new Set([200]), 'B: 50 starting pages, none starts another task');

  // Nobody drives the start now: B's status long-poll takes it over when A's lease has expired.
  const done = await waitRunning(b.port, cookie, host, 90_000);
  t.equal(done.state, 'running', 'the survivor finished the start');
  t.equal(done.generation, recorded.generation, 'the same generation, resumed rather than started over');
  const tasks = fake.tasks().filter((task) => (task.tags ?? []).some((tag: { key: string; value: string }) => tag.key === 'workspace-id' && tag.value === id));
  t.equal(tasks.length, 1, 'exactly one task');
  t.equal(tasks[0].taskArn, recorded.handle, 'the one the dead replica recorded');
  t.ok(fake.count('DescribeTasks', 'fault') >= 1, 'an AWS response was lost along the way');
  const page = await request(b.port, { host, path: '/', headers: { cookie } });
  t.equal(page.status, 200, 'and B serves the workspace');
});
