// Revoked sessions (admin API `POST /api/workspaces/<id>/revoke-sessions`). A session cookie is a
// signed, stateless claim that holds until it expires (SESSION_TTL, 12 h by default), so a
// workspace handed to another student, or a cookie left on a shared machine, needs a cutoff:
// sessions and sign-in links of that workspace issued before it are refused on every replica.
// The cutoff lives in the store, kept as long as anything it voids could last. Each replica keeps
// the cutoffs it has learnt: told at once by the store's events, and read again in the background
// once older than the route cache's TTL, so a missed event (Redis reconnecting) costs at most that
// long, as a stale route does. The warm lane only reads what is kept here; a workspace this replica
// has not learnt yet takes node:http's path, which asks the store.
import type { Clock } from './clock.js';
import type { Metrics } from './metrics.js';
import type { StateStore, WorkspaceEvent } from './store/contract.js';

/** Whether a session or sign-in link issued at `issuedAtMs` is void under `cutoffMs`. */
export function revokedBy(issuedAtMs: number, cutoffMs: number | undefined): boolean {
  return cutoffMs !== undefined && issuedAtMs < cutoffMs;
}

export interface RevocationsOptions {
  store: StateStore;
  clock: Clock;
  metrics: Metrics;
  /** A cutoff learnt longer ago than this is read again (ROUTE_CACHE_TTL). */
  refreshMs: number;
  /** How long the store keeps a cutoff: no session or sign-in link it voids outlives it. */
  keepMs: number;
  /**
   * Every cutoff learnt, and how: the WebSockets opened under voided sessions are closed. A read
   * finds cutoffs made earlier (a replica started later, a refresh), not a revocation made now.
   */
  onRevoked?(workspaceId: string, cutoffMs: number, source: RevocationSource): void;
}

/** `made`: by revoke() on this replica; `announced`: another replica's event; `read`: found in the store. */
export type RevocationSource = 'made' | 'announced' | 'read';

interface Known { cutoffMs: number | undefined; checkedAt: number }

/** Workspaces whose cutoff a replica keeps; past this the oldest learnt is read again when next needed. */
const MAX_KNOWN = 100_000;

export function createRevocations(opts: RevocationsOptions) {
  const { store, clock, metrics } = opts;
  const known = new Map<string, Known>();
  const reading = new Map<string, Promise<void>>();

  function learn(id: string, cutoffMs: number | undefined, source: RevocationSource) {
    const before = known.get(id)?.cutoffMs;
    const cutoff = before === undefined ? cutoffMs : cutoffMs === undefined ? before : Math.max(before, cutoffMs);
    if (known.size >= MAX_KNOWN && !known.has(id)) known.delete(known.keys().next().value!);
    known.set(id, { cutoffMs: cutoff, checkedAt: clock.now() });
    // A revocation made here is reported even when the store kept an equal or later cutoff.
    if (cutoff !== undefined && (cutoff !== before || source === 'made')) opts.onRevoked?.(id, cutoff, source);
  }

  /**
   * One store read per workspace at a time, however many requests wait on it. A store that cannot
   * answer lets the workspace's sessions in on what this replica knows, as cached routes are still
   * served while Redis is down (README, "What happens when…"), and is asked again after refreshMs.
   */
  function read(id: string): Promise<void> {
    let p = reading.get(id);
    if (!p) {
      p = store.sessionsRevokedBefore(id).then(
        (cutoff) => learn(id, cutoff, 'read'),
        () => { metrics.storeError(); learn(id, undefined, 'read'); },
      ).finally(() => reading.delete(id));
      reading.set(id, p);
    }
    return p;
  }

  const unsubscribe = store.subscribe((e: WorkspaceEvent) => {
    if ('sessionsRevoked' in e) learn(e.sessionsRevoked.id, e.sessionsRevoked.beforeMs, 'announced');
  });

  /**
   * Without waiting (the warm lane): whether this session is void, or undefined when this replica has
   * not learnt the workspace's cutoff yet. A cutoff past its refresh is still used while it is read again.
   */
  function voidsNow(workspaceId: string, issuedAt: number): boolean | undefined {
    const k = known.get(workspaceId);
    if (!k) return undefined;
    if (clock.now() - k.checkedAt > opts.refreshMs) void read(workspaceId);
    return revokedBy(issuedAt, k.cutoffMs);
  }

  return {
    voidsNow,

    /** Whether this session (or sign-in link) is void; asks the store when this replica has not learnt the workspace yet. */
    async voids(workspaceId: string, issuedAt: number): Promise<boolean> {
      const now = voidsNow(workspaceId, issuedAt);
      if (now !== undefined) return now;
      await read(workspaceId);
      return revokedBy(issuedAt, known.get(workspaceId)?.cutoffMs);
    },

    /** Voids every session and sign-in link of the workspace issued before now, on every replica. */
    async revoke(workspaceId: string): Promise<number> {
      const cutoff = await store.revokeSessions(workspaceId, clock.now(), opts.keepMs);
      learn(workspaceId, cutoff, 'made');
      await store.publish({ sessionsRevoked: { id: workspaceId, beforeMs: cutoff } }).catch(() => metrics.storeError());
      return cutoff;
    },

    close() {
      unsubscribe();
    },
  };
}

export type Revocations = ReturnType<typeof createRevocations>;
