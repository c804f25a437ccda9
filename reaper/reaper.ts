// The reaper: stops workspaces nobody is using. Runs inside each gateway behind a leader lease (one
// replica reaps at a time; the lease moves when the leader dies), or alone from reaper/main.ts.
import type { Clock } from '../gateway/clock.js';
import type { Logger } from '../gateway/log.js';
import type { Metrics } from '../gateway/metrics.js';
import type { StateStore } from '../gateway/store/contract.js';
import type { Workspaces } from '../gateway/workspaces.js';
import { leaseRenewalDue, reapVerdict, storeSettled } from './verdict.js';

export interface ReaperOptions {
  store: StateStore;
  workspaces: Workspaces;
  clock: Clock;
  metrics: Metrics;
  log: Logger;
  instanceId: string;
  idleTimeoutMs: number;
  maxSessionMs: number;
  intervalMs: number;
  /** Most candidates handled per pass (the rest wait for the next). */
  batch?: number;
  /** Set false to drive passes by hand (tests, the standalone entry point's --once). */
  autoStart?: boolean;
  /** Candidates handled at once (default 16). */
  concurrency?: number;
  /** Leader lease; default three intervals (at least 3 s), so a dead leader is replaced after it. */
  leaderLeaseTtlMs?: number;
  /** The gateways' ACTIVITY_FLUSH_INTERVAL (default 5 s): after an outage, reaping waits for their buffered activity. */
  activityFlushIntervalMs?: number;
}

export const LEADER_KEY = 'reaper-leader';

/** `finished`: stops a dead replica began and this pass carried through (they keep the reason it recorded). */
/** `settling`: the store has just come back from an outage; the gateways' buffered activity is awaited (storeSettled). */
/** `leaseLost`: the leader lease could not be renewed during the pass; the candidates left were not handled. */
export interface PassSummary {
  leader: boolean; candidates: number; stopped: Array<{ id: string; reason: string }>; finished: string[]; skipped: number; settling: boolean;
  leaseLost: boolean;
}

export function createReaper(opts: ReaperOptions) {
  const { store, workspaces, clock, metrics, log } = opts;
  const leaseTtl = opts.leaderLeaseTtlMs ?? Math.max(opts.intervalMs * 3, 3000);
  const batch = opts.batch ?? 1000;
  // Three flush intervals: the next flush of every gateway, and one more after a first attempt that
  // met the connection still coming back (the same margin as the open-connection counts' TTL).
  const settleMs = 3 * (opts.activityFlushIntervalMs ?? 5000);
  let leader = false;
  let outage = false;
  let backSince: number | undefined;
  let running: Promise<PassSummary> | undefined;
  let timer: NodeJS.Timeout | undefined;
  /** When the lease was last taken or renewed (the time the call was sent: the lease runs from later). */
  let renewedAt = 0;
  let renewing: Promise<boolean> | undefined;

  async function holdLeadership(): Promise<boolean> {
    const sent = clock.now();
    // Not leader: take the lease, or find it ours already. An acquire that failed for this reaper (a
    // timeout while Redis reconnected) can still land once the connection is back; without taking it
    // up, this reaper waited out its own lease, reaping nothing for a whole TTL (CI saw it in reaper.test).
    leader = leader
      ? await store.renewLease(LEADER_KEY, opts.instanceId, leaseTtl)
      : (await store.acquireLease(LEADER_KEY, opts.instanceId, leaseTtl)) || (await store.renewLease(LEADER_KEY, opts.instanceId, leaseTtl));
    if (leader) renewedAt = sent;
    return leader;
  }

  /**
   * During a pass, before each candidate and on a timer (a single stop can outlast the lease): renews
   * the lease when due, one renewal at a time. False once it is lost, or unknown (the store failed):
   * then no further candidate is handed out, so two reapers never work through the list at once.
   */
  function keepLease(): Promise<boolean> {
    if (!leader) return Promise.resolve(false);
    if (renewing) return renewing;
    const sent = clock.now();
    if (!leaseRenewalDue({ now: sent, renewedAt, ttlMs: leaseTtl })) return Promise.resolve(true);
    renewing = store.renewLease(LEADER_KEY, opts.instanceId, leaseTtl)
      .catch(() => { outage = true; return false; })
      .then((held) => {
        if (held) renewedAt = sent;
        else if (leader) { leader = false; log.warn({ event: 'reaper.lease_lost', instanceId: opts.instanceId }, 'reaper lost its leader lease during a pass'); }
        return held;
      })
      .finally(() => { renewing = undefined; });
    return renewing;
  }

  async function passOnce(): Promise<PassSummary> {
    const summary: PassSummary = { leader: false, candidates: 0, stopped: [], finished: [], skipped: 0, settling: false, leaseLost: false };
    try {
      if (!(await holdLeadership())) return summary;
    } catch {
      leader = false;
      outage = true;
      return summary; // the store is unreachable: reap nothing (never blind)
    }
    summary.leader = true;
    const now = clock.now();
    let idle: Array<[string, number]>;
    let capped: string[];
    try {
      idle = await store.activityBefore(now - opts.idleTimeoutMs, batch);
      capped = await store.runningStartedBefore(now - opts.maxSessionMs, batch);
    } catch {
      outage = true;
      return summary;
    }
    if (outage) { outage = false; backSince = now; }
    if (!storeSettled({ now, backSince, settleMs })) { summary.settling = true; return summary; }
    const ids = new Set([...idle.map(([id]) => id), ...capped]);
    summary.candidates = ids.size;
    // Candidates are handled a few at a time: each stop is several store round trips and a provider
    // call, so one by one a pass over a large class would take longer than REAP_INTERVAL.
    const queue = [...ids];
    const handle = async (id: string) => {
      try {
        let reason = '';
        // Re-read under the workspace lock: activity that arrived meanwhile keeps it running.
        const result = await workspaces.stop(id, async (record) => {
          const verdict = reapVerdict({
            now: clock.now(), state: record.state, lastActivity: await store.getActivity(id), startedAt: record.startedAt,
            idleTimeoutMs: opts.idleTimeoutMs, maxSessionMs: opts.maxSessionMs,
          });
          if (!verdict.stop) {
            // Not running (a start that failed): nothing to reap. Left in the activity set it came back
            // first on every pass (oldest first), and enough of them filled the batch: no idle
            // workspace was reached. A new start sets its activity afresh.
            if (verdict.why === 'not_running') await store.clearActivity(id).catch(() => metrics.storeError());
            return null;
          }
          reason = verdict.reason;
          return { reasonCode: verdict.reason, reason: verdict.reason === 'idle' ? 'stopped after being idle' : 'stopped after its maximum session length' };
        });
        if (result === 'stopped') {
          metrics.reaperStop(reason);
          summary.stopped.push({ id, reason });
        } else if (result === 'finished') {
          summary.finished.push(id);
        } else {
          summary.skipped++;
          if (result === 'not-running') await store.clearActivity(id);
        }
      } catch (err) {
        summary.skipped++;
        log.warn({ event: 'reaper.error', workspaceId: id, err: (err as Error).message }, 'reaper could not handle a candidate');
      }
    };
    const renewal = setInterval(() => { void keepLease(); }, Math.max(1, Math.floor(leaseTtl / 3)));
    renewal.unref();
    try {
      await Promise.all(Array.from({ length: Math.min(opts.concurrency ?? 16, queue.length) }, async () => {
        while (queue.length > 0) {
          if (!(await keepLease())) { summary.leaseLost = true; return; }
          const id = queue.shift();
          if (id !== undefined) await handle(id);
        }
      }));
    } finally {
      clearInterval(renewal);
    }
    return summary;
  }

  const pass = () => (running ??= passOnce().finally(() => { running = undefined; }));

  if (opts.autoStart !== false) {
    // A pass catches what the store and the provisioner throw; anything else is a fault in the code,
    // logged as --once logs it (reaper/main.ts), and the next interval tries again.
    timer = setInterval(() => {
      pass().catch((err: unknown) => log.error({ event: 'reaper.pass_failed', err: err instanceof Error ? err : new Error(String(err)) }, 'reaper pass failed'));
    }, opts.intervalMs);
    timer.unref();
  }

  return {
    pass,
    isLeader: () => leader,
    async close() {
      if (timer) clearInterval(timer);
      // A pass that throws was reported by whoever started it (reaper.pass_failed): the close goes on,
      // and gives the lease back, rather than fail with it.
      await running?.catch(() => undefined);
      if (leader) await store.releaseLease(LEADER_KEY, opts.instanceId).catch(() => undefined);
      leader = false;
    },
  };
}

export type Reaper = ReturnType<typeof createReaper>;
