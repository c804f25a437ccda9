// The reaper's loop against an in-memory store on a manual clock, with a store that can be made
// unreachable: what a pass does right after an outage, and candidates it can never stop.
import t from 'tap';
import { createManualClock } from '../gateway/clock.js';
import { createActivityRecorder } from '../gateway/activity-recorder.js';
import { createLogger } from '../gateway/log.js';
import { createMetrics } from '../gateway/metrics.js';
import { StoreUnavailable, type StateStore } from '../gateway/store/contract.js';
import { createMemoryStore } from '../gateway/store/memory.js';
import { createWorkspaces } from '../gateway/workspaces.js';
import type { Provisioner } from '../provisioner/contract.js';
import { createReaper } from '../reaper/reaper.js';
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
  const workspaces = createWorkspaces({ store, provisioner, clock, metrics, log, instanceId: 'gw', startDeadlineMs: 60_000, routeCacheTtlMs: 1000 });
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
