// The reaper's loop against an in-memory store on a manual clock, with a store that can be made
// unreachable: what a pass does right after an outage, and candidates it can never stop.
import { Writable } from 'node:stream';
import t from 'tap';
import { createManualClock } from '../gateway/clock.js';
import { createActivityRecorder } from '../gateway/activity-recorder.js';
import { createLogger } from '../gateway/log.js';
import { createMetrics } from '../gateway/metrics.js';
import { StoreUnavailable, type StateStore } from '../gateway/store/contract.js';
import { createMemoryStore } from '../gateway/store/memory.js';
import { createIdentityKeys } from '../gateway/workspace-proof.js';
import { createWorkspaces } from '../gateway/workspaces.js';
import type { Provisioner } from '../provisioner/contract.js';
import { LEADER_KEY, createReaper } from '../reaper/reaper.js';
import { storeSettled } from '../reaper/verdict.js';

const IDLE = 15 * 60_000;
const FLUSH = 5000;

/** A memory store whose every call throws StoreUnavailable while `down` is set. */
function flakyStore(inner: StateStore) {
  const state = { down: false };
  const store = new Proxy(inner, {
    get(target, key, receiver) {
      const v = Reflect.get(target, key, receiver);
      if (typeof v !== 'function' || key === 'subscribe' || key === 'close') return v;
      return (...args: unknown[]) => (state.down ? Promise.reject(new StoreUnavailable('down')) : (v as (...a: unknown[]) => unknown).apply(target, args));
    },
  });
  return { store, state };
}

function fakeProvisioner(): Provisioner & { stops: string[] } {
  const stops: string[] = [];
  return {
    kind: 'fake', stops,
    async start(req) { return { endpoint: { host: '127.0.0.1', port: 1 }, handle: `h-${req.workspaceId}` }; },
    async stop(id) { stops.push(id); },
    async describe() { return undefined; },
    async list() { return []; },
    async close() {},
  };
}

function setup(t: { teardown(fn: () => unknown): void }, reaperOpts: { batch?: number } = {}) {
  const clock = createManualClock(Date.UTC(2026, 0, 1));
  const { store, state } = flakyStore(createMemoryStore(clock));
  const metrics = createMetrics({ enabled: false, defaultMetrics: false });
  const log = createLogger('silent');
  const provisioner = fakeProvisioner();
  const workspaces = createWorkspaces({ store, provisioner, clock, metrics, log, instanceId: 'gw', startDeadlineMs: 60_000, routeCacheTtlMs: 1000, identityKeys: createIdentityKeys('test') });
  const activity = createActivityRecorder({ store, clock, metrics, instanceId: 'gw', flushIntervalMs: FLUSH });
  const reaper = createReaper({
    store, workspaces, clock, metrics, log, instanceId: 'reaper', idleTimeoutMs: IDLE, maxSessionMs: 12 * 3_600_000,
    intervalMs: 30_000, autoStart: false, leaderLeaseTtlMs: 3_600_000, activityFlushIntervalMs: FLUSH, ...reaperOpts,
  });
  t.teardown(async () => { state.down = false; await reaper.close(); await activity.close(); await workspaces.close(); });
  return { clock, store, state, provisioner, workspaces, activity, reaper };
}

async function running(s: ReturnType<typeof setup>, id: string) {
  await s.workspaces.requestStart(id, { retryFailed: false });
  for (let i = 0; i < 100 && (await s.store.getWorkspace(id))?.state !== 'running'; i++) await new Promise((r) => setTimeout(r, 5));
}

t.test('store settled after an outage', async (t) => {
  const now = 1_000_000;
  const rows: Array<[string, number | undefined, boolean]> = [
    ['no outage seen', undefined, true],
    ['back just now', now, false],
    ['back one ms short of the settle time', now - 14_999, false],
    ['back for the settle time', now - 15_000, true],
  ];
  for (const [name, backSince, settled] of rows) t.equal(storeSettled({ now, backSince, settleMs: 15_000 }), settled, name);
});

t.test('a pass right after the store comes back waits for the activity buffered meanwhile', async (t) => {
  const s = setup(t);
  await running(s, 'typing');
  await s.reaper.pass();
  s.state.down = true;
  // Twenty minutes of outage: the student types throughout; it is held in memory, and reaper passes reap nothing.
  for (let m = 0; m < 20; m++) {
    s.clock.advance(60_000);
    s.activity.touch('typing');
    await s.activity.flush();
    t.same((await s.reaper.pass()).stopped, [], 'nothing reaped while the store is away');
  }
  s.state.down = false;
  // The store is back; the reaper's timer fires before the gateway's flush timer has.
  const pass = await s.reaper.pass();
  t.same(pass.stopped, [], 'the student typing all along is not reaped');
  t.equal(pass.settling, true, 'the pass waits for the gateways to flush');
  t.same(s.provisioner.stops, []);
  await s.activity.flush();
  s.clock.advance(3 * FLUSH);
  t.same((await s.reaper.pass()).stopped, [], 'nor once the buffer is written');
  s.clock.advance(IDLE);
  t.same((await s.reaper.pass()).stopped.map((x) => x.id), ['typing'], 'idle after that: reaped');
});

t.test('workspaces whose start failed do not hold the candidate batch for ever', async (t) => {
  const s = setup(t, { batch: 2 });
  // Two students whose starts failed long ago (their starting page counted as activity) and never came back.
  for (const id of ['failed1', 'failed2']) {
    await s.store.putWorkspace({ id, state: 'failed', generation: 1, since: s.clock.now(), reasonCode: 'NO_CAPACITY', reason: 'no capacity' });
    s.activity.touch(id);
  }
  await s.activity.flush();
  s.clock.advance(60_000);
  await running(s, 'idle');
  s.clock.advance(IDLE + 1);
  const first = await s.reaper.pass();
  t.same(first.stopped, [], 'the batch held the two failed ones');
  const second = await s.reaper.pass();
  t.same(second.stopped.map((x) => x.id), ['idle'], 'the next pass reaches the idle running workspace');
  t.equal((await s.store.getWorkspace('failed1'))?.state, 'failed', 'a failed workspace stays failed (its page shows why)');
  t.equal(await s.store.getActivity('failed1'), undefined, 'its activity is no longer a candidate');
});

/** The fake provisioner, its stops held until released one by one (a slow StopTask). */
function heldProvisioner(): Provisioner & { stops: string[]; release(): void; open(): void } {
  const inner = fakeProvisioner();
  const waiting: Array<() => void> = [];
  let held = true;
  return {
    ...inner,
    async stop(id, handle, reason) {
      if (held) await new Promise<void>((r) => waiting.push(r));
      await inner.stop(id, handle, reason);
    },
    stops: inner.stops,
    release() { waiting.shift()?.(); },
    /** Stops no longer held: the one waiting and any later one go through. */
    open() { held = false; for (const r of waiting.splice(0)) r(); },
  };
}

/** A reaper whose pass outlasts its lease: three idle workspaces, one stop at a time, each held. */
async function slowPass(t: { teardown(fn: () => unknown): void }) {
  const LEASE = 3000;
  const clock = createManualClock(Date.UTC(2026, 0, 1));
  const store = createMemoryStore(clock);
  const metrics = createMetrics({ enabled: false, defaultMetrics: false });
  const log = createLogger('silent');
  const provisioner = heldProvisioner();
  const workspaces = createWorkspaces({ store, provisioner, clock, metrics, log, instanceId: 'gw-a', startDeadlineMs: 60_000, routeCacheTtlMs: 1000, identityKeys: createIdentityKeys('test') });
  const reaper = createReaper({
    store, workspaces, clock, metrics, log, instanceId: 'reaper-a', idleTimeoutMs: IDLE, maxSessionMs: 12 * 3_600_000,
    intervalMs: 1000, autoStart: false, leaderLeaseTtlMs: LEASE, concurrency: 1,
  });
  t.teardown(async () => { provisioner.open(); await reaper.close(); await workspaces.close(); });
  for (const id of ['w1', 'w2', 'w3']) {
    await workspaces.requestStart(id, { retryFailed: false });
    for (let i = 0; i < 100 && (await store.getWorkspace(id))?.state !== 'running'; i++) await new Promise((r) => setTimeout(r, 5));
    await store.resetActivity(id, clock.now());
  }
  clock.advance(IDLE + 1);
  const stopsCalled = async (n: number) => {
    for (let i = 0; i < 400 && (await store.getWorkspace(['w1', 'w2', 'w3'][n - 1]))?.state !== 'stopping'; i++) await new Promise((r) => setTimeout(r, 5));
  };
  return { LEASE, clock, store, metrics, log, provisioner, reaper, stopsCalled };
}

t.test('a pass longer than the leader lease keeps renewing it: no second reaper takes over mid-pass', async (t) => {
  const { LEASE, clock, store, metrics, log, provisioner, reaper, stopsCalled } = await slowPass(t);
  // Another replica, with its own workspaces coordinator and provider, on the same store.
  const otherProvisioner = fakeProvisioner();
  const otherWorkspaces = createWorkspaces({ store, provisioner: otherProvisioner, clock, metrics, log, instanceId: 'gw-b', startDeadlineMs: 60_000, routeCacheTtlMs: 1000, identityKeys: createIdentityKeys('test') });
  const other = createReaper({
    store, workspaces: otherWorkspaces, clock, metrics, log, instanceId: 'reaper-b', idleTimeoutMs: IDLE, maxSessionMs: 12 * 3_600_000,
    intervalMs: 1000, autoStart: false, leaderLeaseTtlMs: LEASE,
  });
  t.teardown(async () => { await other.close(); await otherWorkspaces.close(); });

  const pass = reaper.pass();
  await stopsCalled(1);
  clock.advance(LEASE - 1000);
  provisioner.release();
  await stopsCalled(2);
  clock.advance(LEASE - 1000); // past the lease taken at the start of the pass
  t.equal(await store.leaseOwner(LEADER_KEY), 'reaper-a', 'the lease was renewed during the pass');
  const second = await other.pass();
  t.equal(second.leader, false, 'the other reaper does not lead while the pass runs');
  t.same(otherProvisioner.stops, [], 'and stops nothing');
  provisioner.release();
  await stopsCalled(3);
  provisioner.release();
  t.same((await pass).stopped.map((x) => x.id), ['w1', 'w2', 'w3']);
});

t.test('a pass that lost the leader lease hands out no more candidates', async (t) => {
  const { LEASE, clock, store, provisioner, reaper, stopsCalled } = await slowPass(t);
  const pass = reaper.pass();
  await stopsCalled(1);
  // The first stop outlasts the lease (AWS throttling); another replica's reaper takes it.
  clock.advance(LEASE + 1);
  t.equal(await store.acquireLease(LEADER_KEY, 'reaper-b', 60_000), true);
  provisioner.open();
  const summary = await pass;
  t.same(summary.stopped.map((x) => x.id), ['w1'], 'the stop in hand is finished');
  t.same(provisioner.stops, ['w1'], 'no further candidate is stopped by the former leader');
  t.equal(reaper.isLeader(), false);
  t.equal(await store.leaseOwner(LEADER_KEY), 'reaper-b', 'the new leader keeps its lease');
});

t.test('a timed pass that throws is logged as reaper.pass_failed and the next one still runs, never an unhandled rejection', async (t) => {
  // A pass catches what the store and the provisioner throw; what is left is a fault in the code,
  // here a store answer of the wrong shape. On the interval it went nowhere: an unhandled rejection.
  const clock = createManualClock(Date.UTC(2026, 0, 1));
  const inner = createMemoryStore(clock);
  let calls = 0;
  const store = new Proxy(inner, {
    get(target, key, receiver) {
      if (key === 'activityBefore') return async () => { calls++; return undefined; };
      return Reflect.get(target, key, receiver);
    },
  });
  const lines: Array<{ event?: string }> = [];
  const sink = new Writable({ write(chunk, _enc, done) { lines.push(JSON.parse(String(chunk))); done(); } });
  const log = createLogger('info', sink);
  const metrics = createMetrics({ enabled: false, defaultMetrics: false });
  const workspaces = createWorkspaces({ store, provisioner: fakeProvisioner(), clock, metrics, log, instanceId: 'gw', startDeadlineMs: 60_000, routeCacheTtlMs: 1000, identityKeys: createIdentityKeys('test') });
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => { unhandled.push(reason); };
  process.on('unhandledRejection', onUnhandled);
  const reaper = createReaper({ store, workspaces, clock, metrics, log, instanceId: 'reaper', idleTimeoutMs: IDLE, maxSessionMs: 12 * 3_600_000, intervalMs: 20, leaderLeaseTtlMs: 3_600_000 });
  t.teardown(async () => { process.off('unhandledRejection', onUnhandled); await reaper.close(); await workspaces.close(); });
  for (let i = 0; i < 200 && calls < 3; i++) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setImmediate(r));
  t.ok(calls >= 3, `passes went on after the first failed (${calls})`);
  t.ok(lines.filter((l) => l.event === 'reaper.pass_failed').length >= 2, 'each failed pass logged as reaper.pass_failed');
  t.same(unhandled, [], 'no unhandled rejection');
});

t.test('closing while a timed pass is in flight that then throws: the close completes and gives the leader lease back', async (t) => {
  // A pass that throws is logged as reaper.pass_failed where it was started; close() awaited the same
  // promise and threw too: the standalone reaper's close stopped there (its store and provisioner left
  // open, exit 1 with shutdown.error) and the leader lease was held until it expired.
  const clock = createManualClock(Date.UTC(2026, 0, 1));
  const inner = createMemoryStore(clock);
  let answer: ((v: undefined) => void) | undefined;
  const store = new Proxy(inner, {
    get(target, key, receiver) {
      if (key === 'activityBefore') return () => new Promise<undefined>((resolve) => { answer = resolve; });
      return Reflect.get(target, key, receiver);
    },
  });
  const log = createLogger('silent');
  const metrics = createMetrics({ enabled: false, defaultMetrics: false });
  const workspaces = createWorkspaces({ store, provisioner: fakeProvisioner(), clock, metrics, log, instanceId: 'gw', startDeadlineMs: 60_000, routeCacheTtlMs: 1000, identityKeys: createIdentityKeys('test') });
  t.teardown(() => workspaces.close());
  const reaper = createReaper({ store, workspaces, clock, metrics, log, instanceId: 'reaper', idleTimeoutMs: IDLE, maxSessionMs: 12 * 3_600_000, intervalMs: 20, leaderLeaseTtlMs: 3_600_000 });
  for (let i = 0; i < 200 && answer === undefined; i++) await new Promise((r) => setTimeout(r, 10));
  t.ok(answer !== undefined, 'a timed pass is in flight');
  t.equal(await inner.leaseOwner(LEADER_KEY), 'reaper', 'it leads');
  const closed = reaper.close().then(() => 'closed', (err: unknown) => `threw: ${String(err)}`);
  answer!(undefined); // an answer of the wrong shape: the pass throws
  t.equal(await closed, 'closed', 'the close completed');
  t.equal(await inner.leaseOwner(LEADER_KEY), undefined, 'the leader lease given back');
});
