// Workspace lifecycle as the gateway sees it: resolve a route (cache, then store), start a workspace
// exactly once per generation across replicas, stop it, and re-check a route after an upstream
// failure. States: stopped -> starting -> running -> stopping -> stopped (and failed, with a reason).
//
// Exactly-once: one process shares one start between concurrent requests (the in-flight map); replicas
// take the workspace lock, a lease in the store (SET NX PX, renewed while held, expiring if the holder
// dies), and every record write is fenced by it. Other replicas learn of changes by pub/sub at once.
import { randomUUID } from 'node:crypto';
import type { Endpoint, Provisioner, RunningWorkspace, StageReport } from '../provisioner/contract.js';
import { StartFailure } from '../provisioner/contract.js';
import type { Clock } from './clock.js';
import { GatewayError } from './errors.js';
import type { Metrics } from './metrics.js';
import type { Logger } from './log.js';
import type { Fence, StateStore, WorkspaceEvent, WorkspaceRecord } from './store/contract.js';
import type { Departure } from './departure.js';
import { claimFor, type Claim, type IdentityKeys, type Upstream } from './workspace-proof.js';

export interface WorkspacesOptions {
  store: StateStore;
  provisioner: Provisioner;
  clock: Clock;
  metrics: Metrics;
  log: Logger;
  instanceId: string;
  startDeadlineMs: number;
  routeCacheTtlMs: number;
  /** Workspace lock lease; renewed every third of it while a start or stop runs. */
  leaseTtlMs?: number;
  /** Each start's key (gateway/workspace-proof.ts): given to the start, and asked of its connections. */
  identityKeys: IdentityKeys;
  /** The keys under GATEWAY_SECRET_ACCEPTED: never given to a start, but a proof under one is taken too (a rotation). */
  acceptedIdentityKeys?: IdentityKeys;
}

export type Route =
  | { kind: 'running'; endpoint: Upstream; generation: number }
  | { kind: 'not-running'; record: WorkspaceRecord | undefined };

export interface StopReason { reasonCode: string; reason: string }

export interface StartHow { retryFailed: boolean; requestId?: string; admit?: () => Promise<boolean> }

/** Why a stop its replica did not finish was begun: recorded with 'stopping' (older records lack it). */
export function interruptedStopReason(record: WorkspaceRecord): StopReason {
  return { reasonCode: record.reasonCode ?? 'stop_resumed', reason: record.reason ?? 'a stop interrupted by a gateway failure' };
}

interface CacheEntry { endpoint: Upstream; generation: number; checkedAt: number }

export const lockKey = (id: string) => `lock:${id}`;

/** Generations never repeat, even after the store is lost: at least the start's Unix second. */
export function nextGeneration(previous: number | undefined, nowMs: number): number {
  return Math.max((previous ?? 0) + 1, Math.floor(nowMs / 1000));
}

/**
 * Whether the store still names this generation as live (starting, running or stopping): a start that
 * lost its lock then leaves its task to the lock holder. Otherwise (the store emptied, a newer
 * generation, failed) nobody will resume or claim the task. Stop only on this evidence: an unreadable
 * store leaves the task to reconcile.
 */
export function startClaimed(record: WorkspaceRecord | undefined, generation: number): boolean {
  return record !== undefined && record.generation === generation && (record.state === 'starting' || record.state === 'running' || record.state === 'stopping');
}

/** An unreachable workspace is rechecked at most this often, and asked again this many times. */
const RECHECK_EVERY_MS = 2000;
const RECHECK_FOLLOW_UPS = 3;

/** Why a workspace whose own task answered without a valid proof is stopped (stable code; README). */
export const UNPROVEN_STOP: StopReason = {
  reasonCode: 'unproven',
  reason: 'the workspace answered but could not prove it is this start: GATEWAY_SECRET changed since it started, '
    + 'or its image lacks the workspace-identity preload; stopped so that the next page load starts it with a current key',
};

const sameAddress = (a: Endpoint, b: Endpoint) => a.host === b.host && a.port === b.port;
/** Both keys: a claim that accepted a second key was refused under that one as well. */
const sameClaim = (a: Claim, b: Claim) => a.workspaceId === b.workspaceId && a.key === b.key && a.acceptedKey === b.acceptedKey;

export function createWorkspaces(opts: WorkspacesOptions) {
  const { store, provisioner, clock, metrics, log } = opts;
  const leaseTtlMs = opts.leaseTtlMs ?? 15_000;
  const cache = new Map<string, CacheEntry>();
  const refreshing = new Set<string>();
  const inFlight = new Map<string, { controller: AbortController; done: Promise<void> }>();
  const waiters = new Map<string, Set<(r: WorkspaceRecord) => void>>();
  const rechecks = new Map<string, number>();
  let closed = false;

  const owner = () => `${opts.instanceId}:${randomUUID()}`;

  /**
   * Where a running record's requests go: with the claim its connections must prove when its
   * provisioner's workspaces prove themselves. Built once per route, not per request.
   */
  function upstreamOf(id: string, generation: number, endpoint: Endpoint): Upstream {
    if (endpoint.proves !== true) return endpoint;
    return { host: endpoint.host, port: endpoint.port, proves: true, claim: claimOf(id, generation) };
  }

  const claimOf = (id: string, generation: number): Claim => claimFor(opts, id, generation);

  function applyEvent(record: WorkspaceRecord) {
    if (record.state === 'running' && record.endpoint) {
      cache.set(record.id, { endpoint: upstreamOf(record.id, record.generation, record.endpoint), generation: record.generation, checkedAt: clock.now() });
    } else {
      cache.delete(record.id);
    }
    const set = waiters.get(record.id);
    if (set) { waiters.delete(record.id); for (const w of set) w(record); }
  }
  const unsubscribe = store.subscribe((e: WorkspaceEvent) => { if ('record' in e) applyEvent(e.record); });

  async function write(record: WorkspaceRecord, fence: Fence): Promise<boolean> {
    const ok = await store.putWorkspace(record, fence);
    if (ok) {
      applyEvent(record);
      await store.publish({ record }).catch(() => metrics.storeError());
    }
    return ok;
  }

  function refreshInBackground(id: string) {
    if (refreshing.has(id)) return;
    refreshing.add(id);
    store.getWorkspace(id).then(async (r) => {
      if (r?.state === 'running' && r.endpoint) { applyEvent(r); return; }
      if (r) { cache.delete(id); return; }
      // The store has forgotten a workspace we are serving (it was emptied): keep serving it, and
      // record it again from the provisioner so the reaper and other replicas know it (issue 8).
      const hit = cache.get(id);
      if (hit) hit.checkedAt = clock.now();
      const found = await provisioner.describe(id);
      if (found) await adoptUnknown(found);
      else cache.delete(id);
    }).catch(() => metrics.storeError()).finally(() => refreshing.delete(id));
  }

  // Concurrent reads of one workspace share one store round trip: when a class's starting pages all
  // wake at once, 1,000 long-polls must not become 1,000 Redis reads.
  const reads = new Map<string, Promise<WorkspaceRecord | undefined>>();
  function read(id: string): Promise<WorkspaceRecord | undefined> {
    let p = reads.get(id);
    if (!p) {
      p = store.getWorkspace(id).finally(() => reads.delete(id));
      reads.set(id, p);
    }
    return p;
  }

  /** The cached route, if any: a stale one is still used while it is refreshed in the background. */
  function resolveCached(id: string): Route | undefined {
    const hit = cache.get(id);
    if (!hit) return undefined;
    if (clock.now() - hit.checkedAt > opts.routeCacheTtlMs) { metrics.routeCache('stale'); refreshInBackground(id); }
    else metrics.routeCache('hit');
    return { kind: 'running', endpoint: hit.endpoint, generation: hit.generation };
  }

  /** A running record's upstream, as its cached route has it (the route was cached with the record). */
  function upstream(record: WorkspaceRecord): Upstream | undefined {
    if (record.state !== 'running' || !record.endpoint) return undefined;
    const hit = cache.get(record.id);
    return hit !== undefined && hit.generation === record.generation ? hit.endpoint : upstreamOf(record.id, record.generation, record.endpoint);
  }

  /** Route cache first (no network on a warm request), then the store. */
  async function resolve(id: string): Promise<Route> {
    const cached = resolveCached(id);
    if (cached) return cached;
    metrics.routeCache('miss');
    const record = await read(id);
    if (record?.state === 'running' && record.endpoint) {
      applyEvent(record);
      return { kind: 'running', endpoint: upstream(record)!, generation: record.generation };
    }
    return { kind: 'not-running', record };
  }

  function holdLease(key: string, own: string, onLost: () => void): () => void {
    const timer = setInterval(() => {
      store.renewLease(key, own, leaseTtlMs).then((held) => { if (!held) onLost(); }).catch(() => metrics.storeError());
    }, Math.max(50, Math.floor(leaseTtlMs / 3)));
    timer.unref();
    return () => clearInterval(timer);
  }

  async function adopt(found: RunningWorkspace, fence: Fence, now: number): Promise<WorkspaceRecord> {
    const record: WorkspaceRecord = {
      id: found.workspaceId, state: 'running', generation: found.generation, since: now,
      endpoint: found.endpoint, handle: found.handle, startedAt: found.startedAt ?? now, stage: 'ready',
    };
    await write(record, fence);
    // Its activity is unknown: a full idle window from the moment it is seen (issue 5).
    await store.resetActivity(found.workspaceId, now);
    log.info({ event: 'workspace.adopted', workspaceId: found.workspaceId, generation: found.generation }, 'running workspace rediscovered');
    return record;
  }

  /**
   * Asks for a start and answers at once with the record: the start itself runs in the background.
   * `retryFailed` is true only for an explicit "try again" (a failed start never loops by itself).
   */
  async function requestStart(id: string, how: StartHow): Promise<WorkspaceRecord | undefined> {
    if (closed) return store.getWorkspace(id);
    if (inFlight.has(id)) return store.getWorkspace(id);
    let record = await store.getWorkspace(id);
    if (record?.state === 'running') return record;
    if (record?.state === 'failed' && !how.retryFailed) return record;
    // A live stop holds the lock (renewed every third of its lease) and is left to finish: 'stopping'.
    const fence = { key: lockKey(id), owner: owner() };
    if (!(await store.acquireLease(fence.key, fence.owner, leaseTtlMs))) return record ?? store.getWorkspace(id);
    if (inFlight.has(id)) { await store.releaseLease(fence.key, fence.owner); return store.getWorkspace(id); }
    let handedOff = false;
    try {
      record = await store.getWorkspace(id);
      if (record?.state === 'running' || (record?.state === 'failed' && !how.retryFailed)) return record;
      if (record?.state === 'stopping') {
        // We hold its lock, so the replica that wrote 'stopping' died before 'stopped': left so, no page
        // load ever started it again. Finish that stop, then start, in the background (a stop waits up
        // to 30 s for the task to end).
        handedOff = true;
        finishThenStart(record, fence, how);
        return record;
      }
      if (!record) {
        // Unknown to the store: it may be running after all (the store was emptied). Never start twice:
        // a provider that cannot say (Cloud Map or ECS failing) fails this page load with a retryable
        // error; starting anyway ran a second task on the same home until reconcile stopped one.
        const found = await provisioner.describe(id).catch((err: unknown) => {
          throw new GatewayError('BACKEND_UNAVAILABLE', 'cannot tell whether the workspace is already running; try again', { cause: err });
        });
        if (found) return await adopt(found, fence, clock.now());
      }
      const next = await begin(id, record, fence, how);
      if (!next) return store.getWorkspace(id);
      handedOff = true;
      return next;
    } finally {
      if (!handedOff) await store.releaseLease(fence.key, fence.owner).catch(() => metrics.storeError());
    }
  }

  /** Under the lock: writes the start (resumed or a new generation) and runs it; undefined if fenced out. */
  async function begin(id: string, record: WorkspaceRecord | undefined, fence: Fence, how: StartHow): Promise<WorkspaceRecord | undefined> {
    const now = clock.now();
    let next: WorkspaceRecord;
    if (record?.state === 'starting') {
      // The previous holder died mid-start: resume the same generation from its recorded stage.
      next = { ...record, since: now };
      log.info({ event: 'start.resumed', workspaceId: id, generation: record.generation, handle: record.handle, requestId: how.requestId }, 'resuming a start whose holder is gone');
    } else {
      // Rate limits count real starts only, not the page loads that share one (issue 3).
      if (how.admit && !(await how.admit())) throw new GatewayError('RATE_LIMITED', 'too many starts of this workspace; wait a minute');
      next = {
        id, state: 'starting', generation: nextGeneration(record?.generation, now), since: now, stage: 'queued', requestedAt: now,
        // Kept so the starting page can say why it stopped last time ("stopped after being idle").
        reasonCode: record?.state === 'stopped' ? record.reasonCode : undefined,
        reason: record?.state === 'stopped' ? record.reason : undefined,
      };
      log.info({ event: 'start.requested', workspaceId: id, generation: next.generation, requestId: how.requestId }, 'start requested');
    }
    if (!(await write(next, fence))) return undefined;
    run(next, fence, how.requestId);
    return next;
  }

  /**
   * A stop its replica did not finish (we hold its lock): stop the recorded task, write 'stopped',
   * then start as the page load asked. Shares the in-flight slot, so this process asks only once.
   */
  function finishThenStart(stopping: WorkspaceRecord, fence: Fence, how: StartHow) {
    const id = stopping.id;
    const controller = new AbortController();
    const stopRenewing = holdLease(fence.key, fence.owner, () => controller.abort());
    const entry = { controller, done: Promise.resolve() };
    inFlight.set(id, entry);
    entry.done = (async () => {
      let handedOff = false;
      try {
        const stopped = await finishStop(stopping, fence);
        if (!stopped || closed || controller.signal.aborted) return;
        stopRenewing();
        inFlight.delete(id);
        handedOff = (await begin(id, stopped, fence, how)) !== undefined;
      } catch (err) {
        log.warn({ event: 'stop.finish_failed', workspaceId: id, generation: stopping.generation, requestId: how.requestId, err: (err as Error).message }, 'could not finish an interrupted stop');
      } finally {
        stopRenewing();
        if (inFlight.get(id) === entry) inFlight.delete(id);
        if (!handedOff) await store.releaseLease(fence.key, fence.owner).catch(() => metrics.storeError());
      }
    })();
  }

  function run(initial: WorkspaceRecord, fence: Fence, requestId?: string) {
    const id = initial.id;
    const controller = new AbortController();
    let current = { ...initial };
    let stageAt = clock.now();
    const stopRenewing = holdLease(fence.key, fence.owner, () => controller.abort(new StartFailure('ABORTED', 'the workspace lock was lost')));
    const deadline = setTimeout(() => controller.abort(new StartFailure('START_DEADLINE', `the start took longer than ${Math.round(opts.startDeadlineMs / 1000)} s`)), opts.startDeadlineMs);
    deadline.unref();
    let writes = Promise.resolve();
    const queueWrite = (r: WorkspaceRecord) => { writes = writes.then(() => write(r, fence).then(() => undefined)).catch(() => metrics.storeError()); };

    // A class of 500 moves every queued student's position on each admission: writing (and
    // publishing, and waking every long-poll) each move is quadratic. Stage changes are written at
    // once; position-only changes at most once a second per workspace, the latest one last.
    let lastWrite = 0;
    let trailing: NodeJS.Timeout | undefined;
    const writeNow = () => { if (trailing) { clearTimeout(trailing); trailing = undefined; } lastWrite = clock.now(); queueWrite(current); };
    const onStage = (report: StageReport) => {
      if (controller.signal.aborted) return;
      const now = clock.now();
      const stageChanged = report.stage !== current.stage;
      if (stageChanged) { metrics.stage(current.stage ?? 'queued', (now - stageAt) / 1000); stageAt = now; }
      current = { ...current, stage: report.stage, queuePosition: report.stage === 'queued' ? report.queuePosition : undefined };
      // 'ready' is written together with the running state a moment later: one write, one wake-up.
      if (report.stage === 'ready') return;
      if (stageChanged || now - lastWrite >= 1000) { writeNow(); return; }
      trailing ??= setTimeout(() => { trailing = undefined; if (!controller.signal.aborted && current.state === 'starting') writeNow(); }, 1000 - (now - lastWrite));
    };
    const onHandle = (handle: string) => { current = { ...current, handle }; queueWrite(current); };

    const done = (async () => {
      metrics.startsInFlight(inFlight.size);
      try {
        // The keys its connections are asked for (claimOf): the start is given the first alone.
        const { key: identityKey, acceptedKey: acceptedIdentityKey } = claimOf(id, initial.generation);
        const result = await provisioner.start({
          workspaceId: id, generation: initial.generation, identityKey, acceptedIdentityKey, signal: controller.signal, onStage, onHandle, resumeHandle: initial.handle,
        });
        controller.signal.throwIfAborted();
        const now = clock.now();
        metrics.stage(current.stage ?? 'probing', (now - stageAt) / 1000);
        await writes;
        current = { ...current, state: 'running', stage: 'ready', queuePosition: undefined, endpoint: result.endpoint, handle: result.handle, startedAt: now, since: now, reasonCode: undefined, reason: undefined };
        // Activity starts now, so a fresh workspace gets a full idle window.
        await store.resetActivity(id, now).catch(() => metrics.storeError());
        if (!(await write(current, fence))) throw new StartFailure('ABORTED', 'the workspace lock was lost before the start was recorded');
        metrics.coldStart('ready', (now - (initial.requestedAt ?? now)) / 1000);
        log.info({ event: 'start.ready', workspaceId: id, generation: initial.generation, requestId, seconds: (now - (initial.requestedAt ?? now)) / 1000 }, 'workspace ready');
      } catch (err) {
        const failure = controller.signal.aborted && controller.signal.reason instanceof StartFailure ? controller.signal.reason
          : err instanceof StartFailure ? err : new StartFailure('BACKEND_UNAVAILABLE', (err as Error).message ?? String(err), { cause: err });
        if (failure.code === 'ABORTED') {
          metrics.coldStart('aborted');
          // Shutting down: leave the record as starting; the lease lapses and another replica resumes it.
          if (closed) return;
          // The lock was lost (this replica stalled past its lease, or the store was emptied). A replica
          // that took the start over resumes this very task: stopping it failed their start
          // (provisioner/README.md, "Deadline"). Stopped only when the store no longer names it.
          const fresh = await store.getWorkspace(id).then((r) => ({ r }), () => undefined);
          const leave = !fresh || startClaimed(fresh.r, initial.generation);
          log.warn({ event: 'start.abandoned', workspaceId: id, generation: initial.generation, requestId, reason: failure.message, taskStopped: !leave }, 'the workspace lock was lost mid-start');
          if (!leave && current.handle) await provisioner.stop(id, current.handle, 'start abandoned: the workspace lock was lost').catch(() => undefined);
          return;
        }
        if (current.handle) await provisioner.stop(id, current.handle, `start failed: ${failure.code}`).catch(() => undefined);
        await writes;
        const now = clock.now();
        current = { ...current, state: 'failed', since: now, reasonCode: failure.code, reason: failure.message, endpoint: undefined, queuePosition: undefined };
        await write(current, fence).catch(() => metrics.storeError());
        metrics.coldStart('failed', undefined, { code: failure.code, stage: current.stage });
        log.warn({ event: 'start.failed', workspaceId: id, generation: initial.generation, requestId, code: failure.code, reason: failure.message }, 'workspace start failed');
      } finally {
        clearTimeout(deadline);
        if (trailing) clearTimeout(trailing);
        stopRenewing();
        inFlight.delete(id);
        metrics.startsInFlight(inFlight.size);
        await store.releaseLease(fence.key, fence.owner).catch(() => metrics.storeError());
      }
    })();
    inFlight.set(id, { controller, done });
  }

  /**
   * Stops a workspace under its lock. `decide` runs after the lock is taken, on a fresh record, and
   * returns the reason to stop or null to leave it running: a workspace that became active in
   * between is left alone (issue 5).
   */
  async function stop(id: string, decide: (record: WorkspaceRecord) => Promise<StopReason | null>): Promise<'stopped' | 'finished' | 'busy' | 'not-running' | 'kept'> {
    const fence = { key: lockKey(id), owner: owner() };
    if (!(await store.acquireLease(fence.key, fence.owner, leaseTtlMs))) return 'busy';
    const stopRenewing = holdLease(fence.key, fence.owner, () => undefined);
    try {
      const record = await store.getWorkspace(id);
      if (!record || (record.state !== 'running' && record.state !== 'failed' && record.state !== 'stopping')) return 'not-running';
      // We hold its lock, so the replica that wrote 'stopping' died before 'stopped': finish its stop.
      if (record.state === 'stopping') return (await finishStop(record, fence)) ? 'finished' : 'busy';
      const why = await decide(record);
      if (!why) return 'kept';
      // The reason goes with 'stopping' so that whoever finishes a stop this replica cannot knows it.
      // Fenced out: the lock was lost (paused past its lease) and the holder decides, not this stop.
      if (!(await write({ ...record, state: 'stopping', since: clock.now(), ...why }, fence))) return 'busy';
      try {
        await provisioner.stop(id, record.handle, why.reason);
      } catch (err) {
        // The provider refused (StopTask throttled or failing past its retries): put the record back as
        // it was. Left 'stopping', no page load started it again and the reaper's verdict never
        // retried it; as it was, the reaper's next pass tries again, and a task that did stop is
        // found gone by the next failed request (recheck).
        await write(record, fence).catch(() => metrics.storeError());
        throw err;
      }
      // Lost mid-stop: the task is stopped, but the record and its activity are the new holder's.
      await writeStopped(record, why, fence);
      const reaped = why.reasonCode === 'idle' || why.reasonCode === 'max_session';
      log.info({ event: reaped ? 'workspace.reaped' : 'workspace.stopped', workspaceId: id, generation: record.generation, reason: why.reasonCode }, 'workspace stopped');
      return 'stopped';
    } finally {
      stopRenewing();
      await store.releaseLease(fence.key, fence.owner).catch(() => metrics.storeError());
    }
  }

  /**
   * Finishes a stop whose replica died between 'stopping' and 'stopped', under the caller's lock:
   * the recorded task is stopped (idempotent), then 'stopped'. Undefined when the lock was lost.
   */
  async function finishStop(stopping: WorkspaceRecord, fence: Fence): Promise<WorkspaceRecord | undefined> {
    const why = interruptedStopReason(stopping);
    log.warn({ event: 'stop.resumed', workspaceId: stopping.id, generation: stopping.generation, handle: stopping.handle, reason: why.reasonCode }, 'finishing a stop whose holder is gone');
    await provisioner.stop(stopping.id, stopping.handle, why.reason);
    return writeStopped(stopping, why, fence);
  }

  /**
   * Under the lock, once its task is stopped: the record as stopped for this reason, and its activity
   * cleared. Undefined, and the activity left alone, when fenced out: both are the new holder's then.
   */
  async function writeStopped(record: WorkspaceRecord, why: StopReason, fence: Fence): Promise<WorkspaceRecord | undefined> {
    const stopped: WorkspaceRecord = { ...record, state: 'stopped', since: clock.now(), endpoint: undefined, handle: undefined, stage: undefined, queuePosition: undefined, ...why };
    if (!(await write(stopped, fence))) return undefined;
    await store.clearActivity(record.id).catch(() => metrics.storeError());
    return stopped;
  }

  /** Marks a running workspace of this generation stopped because its task is gone (under its lock). */
  async function markGone(id: string, generation: number | undefined, reasonCode: string, reason: string): Promise<boolean> {
    const fence = { key: lockKey(id), owner: owner() };
    if (!(await store.acquireLease(fence.key, fence.owner, leaseTtlMs))) return false;
    try {
      const fresh = await store.getWorkspace(id);
      if (fresh?.state !== 'running' || (generation !== undefined && fresh.generation !== generation)) return false;
      await write({ ...fresh, state: 'stopped', since: clock.now(), endpoint: undefined, handle: undefined, reasonCode, reason }, fence);
      log.warn({ event: 'workspace.gone', workspaceId: id, generation: fresh.generation, reason: reasonCode }, 'workspace no longer running');
      return true;
    } finally {
      await store.releaseLease(fence.key, fence.owner).catch(() => metrics.storeError());
    }
  }

  /** Records a running workspace the store did not know (reconcile, rediscovery), under its lock. */
  async function adoptUnknown(found: RunningWorkspace): Promise<boolean> {
    const fence = { key: lockKey(found.workspaceId), owner: owner() };
    if (!(await store.acquireLease(fence.key, fence.owner, leaseTtlMs))) return false;
    try {
      const fresh = await store.getWorkspace(found.workspaceId);
      if (fresh && fresh.state !== 'stopped' && fresh.state !== 'failed') return false;
      await adopt(found, fence, clock.now());
      return true;
    } finally {
      await store.releaseLease(fence.key, fence.owner).catch(() => metrics.storeError());
    }
  }

  /**
   * After an upstream refused or reset a connection: drop the cached route and ask the provisioner
   * whether the workspace still runs; if it is gone, mark it stopped so the next page load starts it.
   * `unprovenAt`: the upstream (with its claim) whose server answered in full without a valid proof
   * (workspace-proof.ts answeredUnproven), so that a recorded task that cannot prove itself is stopped.
   */
  function recheck(id: string, unprovenAt?: Upstream) {
    cache.delete(id);
    const last = rechecks.get(id) ?? 0;
    if (clock.now() - last < RECHECK_EVERY_MS) return;
    rechecks.set(id, clock.now());
    if (rechecks.size > 10_000) rechecks.clear();
    void checkGone(id, 0, unprovenAt);
  }

  /**
   * Whether the server that answered without a proof at `at` is the recorded start itself: the
   * provisioner finds the record's generation running at the record's address, and `at` is that
   * address, challenged for that generation. An ENI's IP or a bound port is one task's or process's
   * at a time, so nobody else answered: that start holds no key this gateway accepts.
   */
  function isRecordedStart(record: WorkspaceRecord, found: RunningWorkspace, at: Upstream): boolean {
    return record.endpoint !== undefined && found.generation === record.generation
      && sameAddress(found.endpoint, record.endpoint) && sameAddress(at, record.endpoint)
      && at.claim !== undefined && sameClaim(at.claim, claimOf(record.id, record.generation));
  }

  /**
   * Stops a workspace whose own start answers but cannot prove itself (its key is not this gateway's:
   * GATEWAY_SECRET rotated, a task rediscovered from before the proof, an image without the preload).
   * Left running, every request got 502 and page loads kept it alive until MAX_SESSION; stopped, the
   * next page load starts it afresh with a key this gateway derives. Under the lock, re-decided on the
   * fresh record: a start or stop in between leaves it alone.
   */
  async function stopUnproven(id: string, generation: number, at: Upstream): Promise<void> {
    const fields = { event: 'workspace.unproven', workspaceId: id, generation, host: at.host, port: at.port };
    try {
      const outcome = await stop(id, async (fresh) => (fresh.state === 'running' && fresh.generation === generation
        && fresh.endpoint !== undefined && sameAddress(fresh.endpoint, at) ? UNPROVEN_STOP : null));
      log.warn({ ...fields, outcome }, 'the workspace answered without a valid proof: stopped, so its next page load starts it with a current key');
    } catch (err) {
      log.warn({ ...fields, outcome: 'failed', err: (err as Error).message }, 'the workspace answered without a valid proof; stopping it failed');
    }
  }

  /**
   * Whether an unreachable workspace is gone. A provisioner may not know it yet (a killed process not
   * reaped, a task ECS still lists as RUNNING), so one that still says "running" is asked again a few
   * times, a recheck interval apart: one failed reconnect is then enough to mark the workspace stopped.
   * A recorded start that answered without a proof (`unprovenAt`) is stopped instead: it never will.
   */
  async function checkGone(id: string, attempt: number, unprovenAt?: Upstream): Promise<void> {
    try {
      if (closed) return;
      const found = await provisioner.describe(id);
      const record = await store.getWorkspace(id);
      if (!record || record.state !== 'running') return;
      if (!found || found.generation !== record.generation) {
        await markGone(id, record.generation, 'gone', 'the workspace stopped unexpectedly');
        return;
      }
      if (unprovenAt !== undefined && isRecordedStart(record, found, unprovenAt)) {
        await stopUnproven(id, record.generation, unprovenAt);
        return;
      }
      applyEvent(record);
      if (attempt < RECHECK_FOLLOW_UPS) setTimeout(() => void checkGone(id, attempt + 1), RECHECK_EVERY_MS).unref();
    } catch {
      metrics.storeError();
    }
  }

  /** Every waiting nextChange resolves now, with undefined (a draining replica lets its long-polls go). */
  function wakeAll() {
    for (const set of waiters.values()) for (const w of set) w(undefined as unknown as WorkspaceRecord);
    waiters.clear();
  }

  /** Resolves on the next change to this workspace, or undefined after timeoutMs. */
  function nextChange(id: string, timeoutMs: number, departure?: Departure): Promise<WorkspaceRecord | undefined> {
    return new Promise((resolve) => {
      let set = waiters.get(id);
      if (!set) waiters.set(id, (set = new Set()));
      const done = (r: WorkspaceRecord | undefined) => {
        clearTimeout(timer);
        set!.delete(done);
        departure?.offLeave();
        resolve(r);
      };
      const timer = setTimeout(() => done(undefined), timeoutMs);
      timer.unref();
      set.add(done);
      departure?.onLeave(() => done(undefined));
    });
  }

  return {
    resolve,
    resolveCached,
    upstream,
    read,
    requestStart,
    stop,
    recheck,
    markGone,
    adoptUnknown,
    nextChange,
    /** Drops a cached route (tests, admin). */
    forget: (id: string) => cache.delete(id),
    startsInFlight: () => inFlight.size,
    cachedRoutes: () => cache.size,
    isStarting: (id: string) => inFlight.has(id),
    wakeAll,
    async close() {
      closed = true;
      unsubscribe();
      for (const { controller } of inFlight.values()) controller.abort(new StartFailure('ABORTED', 'the gateway is shutting down'));
      await Promise.allSettled([...inFlight.values()].map((f) => f.done));
      wakeAll();
    },
  };
}

export type Workspaces = ReturnType<typeof createWorkspaces>;
