// In-memory state store: the embedded default for a single replica. Same contract and semantics
// as the Redis store (the shared contract suite runs against both), with an injected clock.
import type { Clock } from '../clock.js';
import { takeToken, type BucketState } from '../../provisioner/admission.js';
import {
  WORKSPACE_STATES, type Fence, type ListPage, type ListQuery, type StateStore, type WorkspaceEvent, type WorkspaceRecord,
  type WorkspaceState,
} from './contract.js';

interface Expiring<T> { value: T; expiresAt: number }

export function createMemoryStore(clock: Clock): StateStore {
  const records = new Map<string, WorkspaceRecord>();
  const leases = new Map<string, Expiring<string>>();
  const activity = new Map<string, number>();
  const connections = new Map<string, Expiring<Map<string, number>>>();
  const once = new Map<string, number>();
  const hits = new Map<string, Expiring<number>>();
  const buckets = new Map<string, BucketState>();
  const revoked = new Map<string, Expiring<number>>();
  const handlers = new Set<(e: WorkspaceEvent) => void>();
  // One replica: its data, the one-time links it has seen among them, begins with the process.
  const dataSince = clock.now();

  const live = <T>(m: Map<string, Expiring<T>>, key: string): T | undefined => {
    const e = m.get(key);
    if (!e) return undefined;
    if (e.expiresAt <= clock.now()) { m.delete(key); return undefined; }
    return e.value;
  };
  const holds = (f: Fence) => live(leases, f.key) === f.owner;
  const copy = (r: WorkspaceRecord): WorkspaceRecord => structuredClone(r);

  return {
    kind: 'memory',
    async getWorkspace(id) {
      const r = records.get(id);
      return r && copy(r);
    },
    async putWorkspace(record, fence) {
      if (fence && !holds(fence)) return false;
      records.set(record.id, copy(record));
      return true;
    },
    async listWorkspaces(q: ListQuery): Promise<ListPage> {
      const ids = [...records.keys()].sort();
      const start = q.cursor ? ids.findIndex((id) => id > q.cursor!) : 0;
      const items: WorkspaceRecord[] = [];
      let i = start < 0 ? ids.length : start;
      for (; i < ids.length && items.length < q.limit; i++) {
        const r = records.get(ids[i])!;
        if (!q.state || r.state === q.state) items.push(copy(r));
      }
      return { items, cursor: i < ids.length ? ids[i - 1] : undefined };
    },
    async runningStartedBefore(beforeMs, limit) {
      return [...records.values()]
        .filter((r) => r.state === 'running' && (r.startedAt ?? 0) <= beforeMs)
        .sort((a, b) => (a.startedAt ?? 0) - (b.startedAt ?? 0))
        .slice(0, limit)
        .map((r) => r.id);
    },
    async countRunning() {
      let n = 0;
      for (const r of records.values()) if (r.state === 'running') n++;
      return n;
    },
    async countByState() {
      const counts = Object.fromEntries(WORKSPACE_STATES.map((st) => [st, 0])) as Record<WorkspaceState, number>;
      for (const r of records.values()) counts[r.state]++;
      return counts;
    },
    async acquireLease(key, owner, ttlMs) {
      if (live(leases, key) !== undefined) return false;
      leases.set(key, { value: owner, expiresAt: clock.now() + ttlMs });
      return true;
    },
    async renewLease(key, owner, ttlMs) {
      if (live(leases, key) !== owner) return false;
      leases.set(key, { value: owner, expiresAt: clock.now() + ttlMs });
      return true;
    },
    async releaseLease(key, owner) {
      if (live(leases, key) === owner) leases.delete(key);
    },
    async leaseOwner(key) {
      return live(leases, key);
    },
    async publish(event) {
      const e = structuredClone(event);
      // Asynchronous like Redis pub/sub, so publishers never re-enter their own handlers.
      queueMicrotask(() => { for (const h of handlers) h(e); });
    },
    subscribe(handler) {
      handlers.add(handler);
      return () => handlers.delete(handler);
    },
    async recordActivity(entries) {
      for (const [id, at] of entries) {
        const prev = activity.get(id);
        if (prev === undefined || at > prev) activity.set(id, at);
      }
    },
    async getActivity(id) {
      return activity.get(id);
    },
    async activityBefore(beforeMs, limit) {
      return [...activity.entries()]
        .filter(([, at]) => at <= beforeMs)
        .sort((a, b) => a[1] - b[1] || (a[0] < b[0] ? -1 : 1))
        .slice(0, limit);
    },
    async resetActivity(id, atMs) {
      activity.set(id, atMs);
    },
    async clearActivity(id) {
      activity.delete(id);
    },
    async reportConnections(instanceId, counts, ttlMs) {
      connections.set(instanceId, { value: new Map(counts), expiresAt: clock.now() + ttlMs });
    },
    async getConnections(id) {
      let total = 0;
      for (const instance of [...connections.keys()]) total += live(connections, instance)?.get(id) ?? 0;
      return total;
    },
    // One replica: this store's clock is the only one that signs sessions.
    async revokeSessions(id, ttlMs) {
      const epoch = Math.max(live(revoked, id) ?? 0, clock.now()) + 1;
      revoked.set(id, { value: epoch, expiresAt: clock.now() + ttlMs });
      return epoch;
    },
    async revocationEpoch(id) {
      return { epoch: live(revoked, id), storeNow: clock.now(), dataSince };
    },
    async consumeOnce(key, ttlMs) {
      const now = clock.now();
      const until = once.get(key);
      if (until !== undefined && until > now) return false;
      once.set(key, now + ttlMs);
      if (once.size > 10_000) for (const [k, t] of once) if (t <= now) once.delete(k);
      return true;
    },
    async countHit(key, windowMs) {
      const n = (live(hits, key) ?? 0) + 1;
      const prev = hits.get(key);
      hits.set(key, { value: n, expiresAt: n === 1 || !prev ? clock.now() + windowMs : prev.expiresAt });
      if (hits.size > 100_000) for (const k of hits.keys()) live(hits, k);
      return n;
    },
    async takeToken(key, ratePerSec, burst) {
      const r = takeToken(buckets.get(key) ?? { tokens: burst, at: clock.now() }, clock.now(), ratePerSec, burst);
      buckets.set(key, r.state);
      return { granted: r.granted, waitMs: r.waitMs };
    },
    async ping() {
      return true;
    },
    async close() {
      handlers.clear();
    },
  };
}
