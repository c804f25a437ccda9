// Issue 7, scenario 5 (and issue 5's last bullet): 100,000 workspaces known to the Redis store.
// Measures Redis memory per idle (stopped) workspace and per running one, route resolution on a
// cache miss (workspaces.resolve: the request path's step after authorization), the gateway's
// memory per cached route, and one reaper pass over all of them with 1% idle candidates. All
// in-process with the real Redis store on a bench-started redis-server; the provisioner is a
// counting no-op (stopping is the provisioner's business, measured elsewhere).
import { performance } from 'node:perf_hooks';
import { Writable } from 'node:stream';
import { Redis } from 'ioredis';
import { systemClock } from '../../gateway/clock.js';
import { createLogger } from '../../gateway/log.js';
import { createMetrics } from '../../gateway/metrics.js';
import type { StateStore, WorkspaceRecord } from '../../gateway/store/contract.js';
import { createRedisStore } from '../../gateway/store/redis.js';
import { createIdentityKeys } from '../../gateway/workspace-proof.js';
import { createWorkspaces } from '../../gateway/workspaces.js';
import type { Provisioner } from '../../provisioner/contract.js';
import { createReaper } from '../../reaper/reaper.js';
import { targetLine, type Figure, type ScenarioResult, type Target } from '../result.js';
import { measureLayouts } from './b-layouts.js';
import { round, startBenchRedis } from '../lib.js';
import { gcFunction, parseInfo, pool, quantile } from './b-util.js';

export interface StateScaleOptions { quick: boolean; log: (s: string) => void; workspaces?: number }

const PREFIX = 'wsgw:';
const IDLE_TIMEOUT_MS = 15 * 60_000;
const MAX_SESSION_MS = 12 * 3_600_000;

/** Stops nothing, counts stops: the reaper's cost without a backend's. */
function noopProvisioner(): Provisioner & { stops: number } {
  const p = {
    kind: 'bench-noop',
    stops: 0,
    start: async () => { throw new Error('the bench provisioner starts nothing'); },
    stop: async () => { p.stops++; },
    describe: async () => undefined,
    list: async () => [],
    close: async () => undefined,
  };
  return p;
}

const idOf = (i: number) => `st${String(i).padStart(6, '0')}`;

/** A workspace the reaper stopped after being idle: what workspaces.stop leaves in the store. */
function idleRecord(id: string, now: number): WorkspaceRecord {
  const gen = Math.floor((now - 86_400_000) / 1000);
  return { id, state: 'stopped', generation: gen, since: now - 3_600_000, requestedAt: now - 7_200_000, startedAt: now - 7_190_000, reasonCode: 'idle', reason: 'stopped after being idle' };
}

/** A running ECS workspace as the gateway records it. */
function runningRecord(id: string, i: number, now: number): WorkspaceRecord {
  return {
    id, state: 'running', generation: Math.floor(now / 1000) - 1800, since: now - 1_800_000, stage: 'ready',
    endpoint: { host: `10.0.${(i >> 8) & 255}.${i & 255}`, port: 8080 },
    handle: `arn:aws:ecs:eu-west-1:123456789012:task/workspaces/${i.toString(16).padStart(32, '0')}`,
    requestedAt: now - 1_830_000, startedAt: now - 1_800_000,
  };
}

async function usedMemory(admin: Redis): Promise<number> {
  return Number(parseInfo(await admin.info('memory')).used_memory);
}

export async function run(opts: StateScaleOptions): Promise<ScenarioResult> {
  const n = opts.workspaces ?? 100_000;
  const runningCount = Math.round(n / 10);
  const idleCandidates = Math.round(n / 100);
  const redis = await startBenchRedis();
  const admin = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await admin.connect();
  let store: StateStore | undefined;
  const closers: Array<() => Promise<unknown>> = [];
  try {
    store = await createRedisStore({ url: redis.url, prefix: PREFIX, commandTimeoutMs: 10_000 });
    const s = store;
    const now = Date.now();
    opts.log(`state-scale: writing ${n} workspaces through the store API`);

    // 1. Every workspace known, stopped after being idle: Redis memory per idle workspace.
    const mem0 = await usedMemory(admin);
    let t = performance.now();
    await pool(n, 256, (i) => s.putWorkspace(idleRecord(idOf(i), now)));
    const writeMs = performance.now() - t;
    const mem1 = await usedMemory(admin);
    const perIdle = (mem1 - mem0) / n;
    const sample = await Promise.all(Array.from({ length: 200 }, (_, k) => admin.call('MEMORY', 'USAGE', `${PREFIX}w:${idOf(Math.floor((k * n) / 200))}`, 'SAMPLES', '0') as Promise<number>));
    const recordKeyBytes = sample.reduce((a, b) => a + Number(b), 0) / sample.length;
    // Layouts before this branch kept every id in one sorted set as well (absent now: 0).
    const idsIndexBytes = Number((await admin.call('MEMORY', 'USAGE', `${PREFIX}ids`, 'SAMPLES', '0')) ?? 0) / n;
    const jsonBytes = await admin.strlen(`${PREFIX}w:${idOf(1)}`);
    const dbsize = await admin.dbsize();

    // 2. 10% running (with activity), 1% of all idle past IDLE_TIMEOUT: the reaper's candidates.
    await pool(runningCount, 256, (i) => s.putWorkspace(runningRecord(idOf(i), i, now)));
    const activity: Array<[string, number]> = [];
    for (let i = 0; i < runningCount; i++) activity.push([idOf(i), i < idleCandidates ? now - IDLE_TIMEOUT_MS - 60_000 - i : now - 60_000]);
    for (let i = 0; i < activity.length; i += 5000) await s.recordActivity(activity.slice(i, i + 5000));
    const mem2 = await usedMemory(admin);
    const perRunningExtra = (mem2 - mem1) / runningCount;

    // 3. Route resolution on a cache miss: each id resolved once (cold cache), one at a time.
    const metrics = createMetrics({ enabled: true, defaultMetrics: false });
    closers.push(async () => metrics.close());
    const sink = new Writable({ write(_c, _e, cb) { cb(); } });
    const log = createLogger('info', sink);
    const provisioner = noopProvisioner();
    const make = (instanceId: string) => {
      const w = createWorkspaces({ store: s, provisioner, clock: systemClock, metrics, log, instanceId, startDeadlineMs: 300_000, routeCacheTtlMs: 30_000, identityKeys: createIdentityKeys('bench') });
      closers.push(() => w.close());
      return w;
    };
    const w1 = make('bench-resolve');
    const sequential = Math.min(3000, runningCount);
    const lat: number[] = [];
    for (let i = idleCandidates; i < idleCandidates + sequential && i < runningCount; i++) {
      t = performance.now();
      const route = await w1.resolve(idOf(i));
      lat.push((performance.now() - t) * 1000);
      if (route.kind !== 'running') throw new Error(`expected ${idOf(i)} running`);
    }
    // The same with 64 misses in flight (many first requests at once): throughput.
    const concurrentIds = Array.from({ length: Math.min(5000, n - runningCount) }, (_, k) => idOf(runningCount + k));
    t = performance.now();
    await pool(concurrentIds.length, 64, (k) => w1.resolve(concurrentIds[k]));
    const missesPerSecond = concurrentIds.length / ((performance.now() - t) / 1000);

    // 4. Gateway memory per cached route: heap after caching every running workspace's route.
    const gc = gcFunction();
    const w2 = make('bench-cache');
    await pool(runningCount, 128, (i) => w2.resolve(idOf(i)));
    gc();
    const heap1 = process.memoryUsage().heapUsed;
    const cached = w2.cachedRoutes();
    // And back: the same moment without the routes, so unrelated heap drift cancels out.
    for (let i = 0; i < runningCount; i++) w2.forget(idOf(i));
    gc();
    const heap2 = process.memoryUsage().heapUsed;
    const perRoute = (heap1 - heap2) / cached;

    // 5. One reaper pass over all of them (leader lease, candidates by one range query, each
    //    re-checked under its lock, stopped, recorded).
    const reaper = createReaper({
      store: s, workspaces: w1, clock: systemClock, metrics, log, instanceId: 'bench-reaper',
      idleTimeoutMs: IDLE_TIMEOUT_MS, maxSessionMs: MAX_SESSION_MS, intervalMs: 30_000, autoStart: false,
    });
    closers.push(() => reaper.close());
    opts.log(`state-scale: reaper pass over ${n} workspaces (${runningCount} running, ${idleCandidates} idle)`);
    t = performance.now();
    const summary = await reaper.pass();
    const passMs = performance.now() - t;
    t = performance.now();
    const second = await reaper.pass();
    const secondMs = performance.now() - t;
    const stillRunning = await s.countRunning();
    // The admin listing pays for the missing index: one page scans every record key.
    t = performance.now();
    const page = await s.listWorkspaces({ limit: 100 });
    const listMs = performance.now() - t;
    t = performance.now();
    const runningPage = await s.listWorkspaces({ limit: 100, state: 'running' });
    const listRunningMs = performance.now() - t;
    if (page.items.length !== 100 || page.items[0].id !== idOf(0)) throw new Error('listWorkspaces returned an unexpected first page');

    // 6. The same idle records under the proposed layouts (flushes the database: last).
    const layoutCount = opts.quick ? 20_000 : n;
    opts.log(`state-scale: Redis layouts compared on ${layoutCount} idle records`);
    const layouts = await measureLayouts(admin, layoutCount, (i) => idleRecord(idOf(i), now));

    const figures: Figure[] = [
      { name: 'workspaces in the store', value: n, unit: 'count' },
      { name: 'write rate through the store API (256 in flight)', value: Math.round(n / (writeMs / 1000)), unit: '/s' },
      { name: 'Redis memory per idle workspace', value: round(perIdle, 1), unit: 'B' },
      { name: '  of which the record key (MEMORY USAGE)', value: round(recordKeyBytes, 1), unit: 'B' },
      { name: '  of which the ids index (sorted set)', value: round(idsIndexBytes, 1), unit: 'B' },
      { name: '  record value length (stored JSON)', value: jsonBytes, unit: 'B' },
      { name: 'Redis keys', value: dbsize, unit: 'count' },
      { name: 'Redis memory per running workspace, beyond idle', value: round(perRunningExtra, 1), unit: 'B' },
      { name: 'route resolution, cache miss, p50', value: round(quantile(lat, 0.5), 1), unit: 'µs' },
      { name: 'route resolution, cache miss, p99', value: round(quantile(lat, 0.99), 1), unit: 'µs' },
      { name: 'route resolutions, cache miss, 64 in flight', value: Math.round(missesPerSecond), unit: '/s' },
      { name: 'gateway heap per cached route (cached - forgotten)', value: round(perRoute, 1), unit: 'B' },
      { name: 'reaper pass: candidates', value: summary.candidates, unit: 'count' },
      { name: 'reaper pass: stopped', value: summary.stopped.length, unit: 'count' },
      { name: 'reaper pass: provisioner stops', value: provisioner.stops, unit: 'count' },
      { name: 'reaper pass', value: round(passMs, 1), unit: 'ms' },
      { name: 'reaper pass with nothing to do', value: round(secondMs, 2), unit: 'ms' },
      { name: 'running after the pass', value: stillRunning, unit: 'count' },
      { name: 'admin listing: first page of 100', value: round(listMs, 1), unit: 'ms' },
      { name: `admin listing: first page of 100 running (${runningPage.items.length} found)`, value: round(listRunningMs, 1), unit: 'ms' },
    ];
    const targets: Target[] = [
      { name: 'state-scale: reaper pass over 100,000 workspaces', value: round(passMs, 1), limit: 2000, unit: 'ms', op: '<=', met: passMs <= 2000 && summary.stopped.length === idleCandidates },
      { name: 'state-scale: Redis memory per idle workspace', value: round(perIdle, 1), limit: 300, unit: 'B', op: '<=', met: perIdle <= 300 },
    ];
    const notes = [
      `state-scale: ${n} workspaces written through the Redis store's putWorkspace; idle = stopped after being idle (record as workspaces.stop leaves it, stored as ${jsonBytes} B of JSON, ids like ${idOf(1)}); ${runningCount} running (ECS-like endpoint and task ARN, activity in the sorted set), ${idleCandidates} of them idle for longer than IDLE_TIMEOUT=15m.`,
      'state-scale: memory = INFO used_memory delta / count (jemalloc, Redis 7, default encodings); route resolution = workspaces.resolve(id) with an empty route cache (one GET + JSON parse), timed in-process; heap per route = heapUsed with the routes cached minus heapUsed after forgetting them (forced GC both times) / cached routes; admin listing = listWorkspaces, which scans every record key since the store keeps no id index.',
      `state-scale: reaper pass = createReaper(...).pass() with the Redis store, a workspaces coordinator and a counting no-op provisioner; second pass ${second.candidates} candidates.`,
    ];
    if (summary.stopped.length !== idleCandidates) notes.push(`state-scale: the pass stopped ${summary.stopped.length} of ${idleCandidates} idle candidates (skipped ${summary.skipped}).`);
    for (const x of targets) opts.log(targetLine(x));
    notes.push(`state-scale: layouts system = Redis memory per idle workspace for ${layoutCount} records written by pipeline under today's layout and the proposed ones (see bench/scenarios/b-layouts.ts); prefix buckets keep lexical listing order because (id prefix, id) sorts as id does.`);
    return {
      scenario: 'state scale (100,000 workspaces)',
      systems: [{ system: 'gateway + Redis store', figures }, { system: 'Redis layouts (idle workspace)', figures: layouts }],
      targets, notes,
    };
  } finally {
    for (const c of closers.reverse()) await c().catch(() => undefined);
    await store?.close();
    admin.disconnect();
    await redis.stop();
  }
}
