// The workspace lifecycle (gateway/workspaces.ts) in one process against the fake AWS endpoint:
// replicas are two createWorkspaces on one store, each with its own ECS provisioner, and the store's
// leases run on a manual clock, so a holder "paused" past its lease is one clock step.
import t from 'tap';
import { createManualClock, systemClock } from '../gateway/clock.js';
import { createLogger } from '../gateway/log.js';
import { createMetrics } from '../gateway/metrics.js';
import type { StateStore, WorkspaceRecord } from '../gateway/store/contract.js';
import { createMemoryStore } from '../gateway/store/memory.js';
import { createRedisStore } from '../gateway/store/redis.js';
import { createWorkspaces, startClaimed } from '../gateway/workspaces.js';
import { createReaper } from '../reaper/reaper.js';
import { createEcsProvisioner } from '../provisioner/ecs.js';
import { startFakeAws, type FakeAwsOptions } from './fake-aws/index.js';
import { fakeEcsOptions } from './fake-aws/config.js';
import { until } from './fake-aws/harness.js';
import { startRedis } from './helpers/redis.js';

const LEASE_MS = 300;

async function setup(t: { teardown(fn: () => unknown): void }, fakeOpts: FakeAwsOptions = {}, shared?: StateStore) {
  const fake = await startFakeAws(fakeOpts);
  const clock = createManualClock(Date.now());
  const store = shared ?? createMemoryStore(clock);
  const log = createLogger('silent');
  const replica = (name: string) => {
    const provisioner = createEcsProvisioner(
      fakeEcsOptions(fake, { describePollMs: 30, awsCallTimeoutMs: 1000, startDeadlineMs: 20_000, retry: { baseMs: 10, capMs: 50, throttledBaseMs: 20 } }),
      { clock: systemClock },
    );
    const workspaces = createWorkspaces({
      store, provisioner, clock, metrics: createMetrics({ enabled: false, defaultMetrics: false }), log,
      instanceId: name, startDeadlineMs: 20_000, routeCacheTtlMs: 1000, leaseTtlMs: LEASE_MS,
    });
    return { provisioner, workspaces };
  };
  const a = replica('a');
  const b = replica('b');
  t.teardown(async () => {
    for (const r of [a, b]) { await r.workspaces.close(); await r.provisioner.close(); }
    await fake.close();
  });
  return { fake, clock, store, a, b };
}

t.test('whether a start that lost its lock leaves its task to the store', async (t) => {
  const rec = (state: WorkspaceRecord['state'], generation: number): WorkspaceRecord => ({ id: 'w', state, generation, since: 0 });
  const rows: Array<[string, WorkspaceRecord | undefined, boolean]> = [
    ['taken over: starting, same generation', rec('starting', 7), true],
    ['the taker finished: running, same generation', rec('running', 7), true],
    ['being stopped, same generation', rec('stopping', 7), true],
    ['the store was emptied', undefined, false],
    ['a newer generation started', rec('starting', 8), false],
    ['the taker failed it', rec('failed', 7), false],
    ['stopped', rec('stopped', 7), false],
  ];
  for (const [name, record, leave] of rows) t.equal(startClaimed(record, 7), leave, name);
});

t.test('a holder that lost its lease mid-start leaves the task to the replica that took the start over', async (t) => {
  const { fake, clock, store, a, b } = await setup(t, { durations: { provisioningMs: 1500, pendingMs: 100, stoppingMs: 10 } });
  await a.workspaces.requestStart('paused', { retryFailed: false });
  await until(async () => (await store.getWorkspace('paused'))?.handle !== undefined, 10_000, 'the task recorded');
  const handle = (await store.getWorkspace('paused'))!.handle;
  // Replica a stalls past its lease (a long GC, a starved event loop); b's status poll takes over.
  clock.advance(LEASE_MS + 1);
  const resumed = await b.workspaces.requestStart('paused', { retryFailed: false });
  t.equal(resumed?.state, 'starting');
  t.equal(resumed?.handle, handle, 'b resumes the recorded task');
  await until(async () => !a.workspaces.isStarting('paused'), 5000, 'a noticing its lease is gone');
  await until(async () => !b.workspaces.isStarting('paused'), 15_000, 'b finishing the start');
  const r = await store.getWorkspace('paused');
  t.equal(r?.state, 'running', `the start b resumed finishes (${r?.reasonCode ?? ''} ${r?.reason ?? ''})`);
  t.equal(r?.handle, handle);
  t.equal(fake.count('RunTask'), 1, 'one task');
  t.equal(fake.count('StopTask'), 0, 'nobody stopped it');
});

t.test('a stop that AWS refused leaves the workspace as it was, and the next reaper pass stops it', async (t) => {
  const { fake, clock, store, a } = await setup(t, { durations: { provisioningMs: 30, pendingMs: 30, stoppingMs: 10 } });
  await a.workspaces.requestStart('refused', { retryFailed: false });
  await until(async () => (await store.getWorkspace('refused'))?.state === 'running', 15_000, 'running');
  const idle = 15 * 60_000;
  const reaper = createReaper({
    store, workspaces: a.workspaces, clock, metrics: createMetrics({ enabled: false, defaultMetrics: false }), log: createLogger('silent'),
    instanceId: 'reaper', idleTimeoutMs: idle, maxSessionMs: 12 * 3_600_000, intervalMs: 1000, autoStart: false, leaderLeaseTtlMs: 60_000,
  });
  t.teardown(() => reaper.close());
  clock.advance(idle + 1);
  fake.fault('StopTask', 500, 3); // every attempt of one call (5xx: 3 attempts)
  const first = await reaper.pass();
  t.same(first.stopped, [], 'StopTask failed');
  t.equal((await store.getWorkspace('refused'))?.state, 'running', 'not stuck in stopping: page loads still reach it');
  const second = await reaper.pass();
  t.same(second.stopped.map((s) => s.id), ['refused'], 'the next pass stops it');
  t.equal((await store.getWorkspace('refused'))?.state, 'stopped');
  t.equal(fake.count('StopTask'), 1, 'one StopTask answered');
});

t.test('Redis restarted empty mid-start: the task nobody can claim any more is stopped', async (t) => {
  const redis = await startRedis();
  const store = await createRedisStore({ url: redis.url, prefix: 'wl:', commandTimeoutMs: 500 });
  t.teardown(async () => { await store.close(); await redis.stop(); });
  const { fake, a } = await setup(t, { durations: { provisioningMs: 10_000, pendingMs: 100, stoppingMs: 10 } }, store);
  await a.workspaces.requestStart('emptied', { retryFailed: false });
  await until(async () => (await store.getWorkspace('emptied'))?.handle !== undefined, 10_000, 'the task recorded');
  await redis.restart();
  await until(() => !a.workspaces.isStarting('emptied'), 10_000, 'the start giving up its lost lock');
  await until(() => fake.count('StopTask') === 1, 5000, 'the unclaimed task stopped');
  t.equal(fake.count('RunTask'), 1);
});
