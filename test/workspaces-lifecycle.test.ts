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
import { GatewayError } from '../gateway/errors.js';
import { createIdentityKeys } from '../gateway/workspace-proof.js';
import { createWorkspaces, interruptedStopReason, lockKey, startClaimed } from '../gateway/workspaces.js';
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
      instanceId: name, startDeadlineMs: 20_000, routeCacheTtlMs: 1000, leaseTtlMs: LEASE_MS, identityKeys: createIdentityKeys('test'),
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

// A replica that dies (SIGKILL, OOM) between writing 'stopping' and 'stopped' leaves this record,
// its lock lapsing 15 s later. A live stop holds and renews its lock, so a free lock means nobody
// is carrying the stop through.
async function orphanedStop(store: StateStore, clock: { now(): number }, running: WorkspaceRecord): Promise<WorkspaceRecord> {
  const stopping: WorkspaceRecord = { ...running, state: 'stopping', since: clock.now(), reasonCode: 'idle', reason: 'stopped after being idle' };
  await store.putWorkspace(stopping);
  return stopping;
}

t.test('a stop whose replica died midway is carried through by the next start request, which then starts', async (t) => {
  const { fake, clock, store, a, b } = await setup(t, { durations: { provisioningMs: 30, pendingMs: 30, stoppingMs: 10 } });
  await a.workspaces.requestStart('orphan', { retryFailed: false });
  await until(async () => (await store.getWorkspace('orphan'))?.state === 'running', 15_000, 'running');
  const running = (await store.getWorkspace('orphan'))!;
  await orphanedStop(store, clock, running);

  // While its replica is alive the stop holds the lock: a page load leaves it alone.
  t.ok(await store.acquireLease(lockKey('orphan'), 'a:live-stop', LEASE_MS), 'a live stop holds the lock');
  t.equal((await b.workspaces.requestStart('orphan', { retryFailed: false }))?.state, 'stopping', 'a live stop is left to its replica');
  t.equal(fake.count('StopTask'), 0, 'nothing stopped over its head');

  // The replica died: its lease lapses, and the next page load (or status poll) finishes the stop.
  clock.advance(LEASE_MS + 1);
  await b.workspaces.requestStart('orphan', { retryFailed: false });
  await until(async () => {
    const r = await store.getWorkspace('orphan');
    return r?.state === 'running' && r.generation > running.generation;
  }, 15_000, 'a new generation running');
  const after = (await store.getWorkspace('orphan'))!;
  t.same(fake.callsOf('StopTask').map((c) => c.input.task), [running.handle], 'the recorded task stopped, once');
  t.equal(fake.count('RunTask'), 2, 'then one new task');
  t.not(after.handle, running.handle);
});

t.test('a stop whose replica died midway is carried through by the reaper\'s next pass', async (t) => {
  const { fake, clock, store, a } = await setup(t, { durations: { provisioningMs: 30, pendingMs: 30, stoppingMs: 10 } });
  await a.workspaces.requestStart('orphan2', { retryFailed: false });
  await until(async () => (await store.getWorkspace('orphan2'))?.state === 'running', 15_000, 'running');
  const running = (await store.getWorkspace('orphan2'))!;
  const idle = 15 * 60_000;
  const reaper = createReaper({
    store, workspaces: a.workspaces, clock, metrics: createMetrics({ enabled: false, defaultMetrics: false }), log: createLogger('silent'),
    instanceId: 'reaper', idleTimeoutMs: idle, maxSessionMs: 12 * 3_600_000, intervalMs: 1000, autoStart: false, leaderLeaseTtlMs: 60 * 60_000,
  });
  t.teardown(() => reaper.close());
  clock.advance(idle + 1);
  await orphanedStop(store, clock, running);
  t.ok(await store.acquireLease(lockKey('orphan2'), 'a:live-stop', LEASE_MS), 'a live stop holds the lock');
  await reaper.pass();
  t.equal((await store.getWorkspace('orphan2'))?.state, 'stopping', 'a live stop is left to its replica');
  t.equal(fake.count('StopTask'), 0);

  clock.advance(LEASE_MS + 1);
  t.same((await reaper.pass()).finished, ['orphan2'], 'the pass finishes the stop its replica left');
  const r = await store.getWorkspace('orphan2');
  t.equal(r?.state, 'stopped', 'no longer stuck in stopping');
  t.equal(r?.reasonCode, 'idle', 'with the reason the dead replica recorded');
  t.same(fake.callsOf('StopTask').map((c) => c.input.task), [running.handle], 'the recorded task stopped');
  t.equal(await store.getActivity('orphan2'), undefined, 'its activity cleared, as after any stop');
});

t.test('a stop records its reason with \'stopping\', so a replica finishing it for a dead one knows why', async (t) => {
  const { store, a } = await setup(t, { durations: { provisioningMs: 30, pendingMs: 30, stoppingMs: 10 } });
  await a.workspaces.requestStart('why', { retryFailed: false });
  await until(async () => (await store.getWorkspace('why'))?.state === 'running', 15_000, 'running');
  const seen: WorkspaceRecord[] = [];
  const off = store.subscribe((e) => { if ('record' in e && e.record.id === 'why') seen.push(e.record); });
  t.equal(await a.workspaces.stop('why', async () => ({ reasonCode: 'admin', reason: 'stopped by the platform' })), 'stopped');
  await new Promise((r) => setImmediate(r));
  off();
  const stopping = seen.find((r) => r.state === 'stopping');
  t.same([stopping?.reasonCode, stopping?.reason], ['admin', 'stopped by the platform']);

  const rec = (extra: Partial<WorkspaceRecord>): WorkspaceRecord => ({ id: 'w', state: 'stopping', generation: 7, since: 0, ...extra });
  const rows: Array<[string, WorkspaceRecord, string]> = [
    ['reaped for idleness', rec({ reasonCode: 'idle', reason: 'stopped after being idle' }), 'idle'],
    ['stopped by an admin', rec({ reasonCode: 'admin', reason: 'x' }), 'admin'],
    ['written before reasons went with stopping', rec({}), 'stop_resumed'],
  ];
  for (const [name, record, code] of rows) t.equal(interruptedStopReason(record).reasonCode, code, name);
});

t.test('the store came back empty and the provider cannot say what runs: no second task beside the live one', async (t) => {
  const { fake, clock, a } = await setup(t, { durations: { provisioningMs: 30, pendingMs: 30, stoppingMs: 10 } });
  const first = await a.workspaces.requestStart('dup', { retryFailed: false });
  await until(async () => !a.workspaces.isStarting('dup'), 15_000, 'running');
  // A replica on the emptied store (Redis restarted empty) while Cloud Map fails.
  const emptied = createMemoryStore(clock);
  const provisioner = createEcsProvisioner(fakeEcsOptions(fake, { describePollMs: 30, awsCallTimeoutMs: 1000, retry: { baseMs: 10, capMs: 50, throttledBaseMs: 20 } }), { clock: systemClock });
  const c = createWorkspaces({
    store: emptied, provisioner, clock, metrics: createMetrics({ enabled: false, defaultMetrics: false }), log: createLogger('silent'),
    instanceId: 'c', startDeadlineMs: 20_000, routeCacheTtlMs: 1000, leaseTtlMs: LEASE_MS, identityKeys: createIdentityKeys('test'),
  });
  t.teardown(async () => { await c.close(); await provisioner.close(); });
  fake.fault('GetInstance', 500);
  const err = await c.requestStart('dup', { retryFailed: false }).then(() => undefined, (e: unknown) => e);
  t.equal(err instanceof GatewayError ? err.code : String(err), 'BACKEND_UNAVAILABLE', 'a retryable error, not a start');
  t.equal(await emptied.getWorkspace('dup'), undefined, 'nothing recorded');
  t.equal(await emptied.leaseOwner(lockKey('dup')), undefined, 'the lock released');
  await new Promise((r) => setTimeout(r, 300));
  t.equal(fake.count('RunTask'), 1, 'no second task');

  // Once the provider answers, the page's retry finds the live task, and a new student starts as usual.
  fake.clearFaults();
  const adopted = await c.requestStart('dup', { retryFailed: false });
  t.same([adopted?.state, adopted?.handle], ['running', (await a.workspaces.read('dup'))?.handle ?? first?.handle], 'the live task adopted');
  t.equal((await c.requestStart('fresh', { retryFailed: false }))?.state, 'starting', 'a first start goes ahead when describe answers');
});

t.test('a stop that loses its lock: before it writes stopping it stops nothing, and mid-stop it leaves the holder the activity', async (t) => {
  const { store, clock, fake, a } = await setup(t, { durations: { provisioningMs: 30, pendingMs: 30, stoppingMs: 200 } });
  const steal = async (id: string) => { clock.advance(LEASE_MS + 1); t.ok(await store.acquireLease(lockKey(id), 'thief', 60_000), 'another holder took the lock'); };
  await a.workspaces.requestStart('early', { retryFailed: false });
  await until(async () => (await store.getWorkspace('early'))?.state === 'running', 15_000, 'running');
  // Paused past its lease between reading the record and writing 'stopping' (the verdict's re-read).
  const early = await a.workspaces.stop('early', async () => { await steal('early'); return { reasonCode: 'admin', reason: 'stopped by the platform' }; });
  t.equal(early, 'busy', 'fenced out: the stop is not carried on');
  t.equal((await store.getWorkspace('early'))?.state, 'running');
  t.equal(fake.count('StopTask'), 0, 'no task stopped under a lock it no longer held');

  await a.workspaces.requestStart('late', { retryFailed: false });
  await until(async () => (await store.getWorkspace('late'))?.state === 'running', 15_000, 'running');
  await store.recordActivity([['late', clock.now()]]);
  const stopping = a.workspaces.stop('late', async () => ({ reasonCode: 'admin', reason: 'stopped by the platform' }));
  await until(async () => (await store.getWorkspace('late'))?.state === 'stopping', 5000, 'stopping');
  await steal('late');
  await stopping;
  t.equal((await store.getWorkspace('late'))?.state, 'stopping', "its 'stopped' was fenced out: the record is the holder's");
  t.not(await store.getActivity('late'), undefined, "and so is the activity: not cleared under another holder's lock");
});
