// Activity bookkeeping on the request path (issue 5): counted in memory per workspace and flushed
// to the store in one pipelined write per interval, never a store write per request or per frame.
// While the store is unreachable the buffer keeps the newest time per workspace (bounded) and is
// written when it returns (issue 8).
import type { Clock } from './clock.js';
import type { Metrics } from './metrics.js';
import type { StateStore } from './store/contract.js';

export interface ActivityRecorderOptions {
  store: StateStore;
  clock: Clock;
  metrics: Metrics;
  instanceId: string;
  flushIntervalMs: number;
  /** Most workspaces held while the store is away; beyond it the oldest times are dropped. */
  maxBuffered?: number;
  /** False only in the bookkeeping-overhead benchmark. */
  enabled?: boolean;
}

export function createActivityRecorder(opts: ActivityRecorderOptions) {
  const pending = new Map<string, number>();
  const connections = new Map<string, number>();
  const max = opts.maxBuffered ?? 100_000;
  let flushing: Promise<void> | undefined;

  const enabled = opts.enabled !== false;
  function touch(id: string, at = opts.clock.now()) {
    if (!enabled) return;
    const prev = pending.get(id);
    if (prev !== undefined && prev >= at) return;
    if (prev === undefined && pending.size >= max && !dropOldest(at)) return;
    pending.set(id, at);
  }

  /**
   * The buffer is full (the store away for long): the oldest time goes, or the new one if it is older
   * still. By time, not insertion order: a busy workspace's entry is updated in place and stays first
   * in the Map, so dropping the first entry dropped the student typing all along. A scan only when
   * full, so the warm path's touch stays one lookup and one set.
   */
  function dropOldest(at: number): boolean {
    let oldestId: string | undefined;
    let oldest = at;
    for (const [id, t] of pending) if (t < oldest) { oldest = t; oldestId = id; }
    if (oldestId === undefined) return false;
    pending.delete(oldestId);
    return true;
  }

  async function flushOnce(): Promise<void> {
    // Connection counts carry a TTL of three intervals, so a crashed instance's counts expire.
    const ttl = opts.flushIntervalMs * 3;
    const batch = [...pending.entries()];
    pending.clear();
    try {
      if (batch.length) await opts.store.recordActivity(batch);
      await opts.store.reportConnections(opts.instanceId, connections, ttl);
      opts.metrics.storeUp(true);
    } catch {
      opts.metrics.storeError();
      opts.metrics.storeUp(false);
      // Put them back unless newer activity arrived meanwhile; only ever forward.
      for (const [id, at] of batch) touch(id, at);
    }
    opts.metrics.activityBuffered(pending.size);
  }

  const flush = () => (flushing ??= flushOnce().finally(() => { flushing = undefined; }));
  const timer = setInterval(() => { void flush(); }, opts.flushIntervalMs);
  timer.unref();

  return {
    /** Evidence of a person for this workspace now. O(1), no I/O. */
    touch,
    connectionOpened(id: string) { connections.set(id, (connections.get(id) ?? 0) + 1); },
    connectionClosed(id: string) {
      const n = (connections.get(id) ?? 1) - 1;
      if (n <= 0) connections.delete(id); else connections.set(id, n);
    },
    openConnections: (id: string) => connections.get(id) ?? 0,
    buffered: () => pending.size,
    flush,
    async close() {
      clearInterval(timer);
      // A flush in flight took its batch before the latest touches: wait for it, then write those
      // too, else the last seconds of the drain never reach the store (issue 8).
      await flushing;
      await flush();
    },
  };
}

export type ActivityRecorder = ReturnType<typeof createActivityRecorder>;
