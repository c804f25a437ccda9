// Revoked sessions (admin API `POST /api/workspaces/<id>/revoke-sessions`). A session cookie is a
// signed, stateless claim that holds until it expires (SESSION_TTL, 12 h by default), so a
// workspace handed to another student, or a cookie left on a shared machine, needs a way to void it.
// Each workspace has a revocation epoch in the store: a session and a sign-in link carry a value read
// from the store when they were signed (the store's own time, or the epoch in force if that is
// later; never a replica's clock), and revoking moves the epoch past the store's time
// (store/contract.ts revokeSessions). One signed below the epoch in force is refused on every replica. Comparing issue times instead took the revoking
// replica's clock against the signing one's: a few seconds of skew voided the next owner's sign-in
// or kept the old one's session alive.
// The epoch lives in the store, kept as long as anything it voids could last. Each replica keeps
// the epochs it has learnt: told at once by the store's events, and read again in the background
// once older than the route cache's TTL, so a missed event (Redis reconnecting) costs at most that
// long, as a stale route does. The warm lane only reads what is kept here; a workspace this replica
// has not learnt yet takes node:http's path, which asks the store.
import type { Clock } from './clock.js';
import type { Metrics } from './metrics.js';
import type { StateStore, WorkspaceEvent } from './store/contract.js';

/** Whether a session or sign-in link signed under `signedEpoch` is void under the epoch in force. */
export function revokedBy(signedEpoch: number, epochInForce: number | undefined): boolean {
  return epochInForce !== undefined && signedEpoch < epochInForce;
}

/**
 * Whether a sign-in link signed under `signedEpoch` was signed before the store's data began
 * (store/contract.ts revocationEpoch's dataSince): the record of its one use, if it had one, went
 * with the rest. Both values are the store's clock (a link's `rev`), so no replica's skew takes
 * part; a link signed before `rev` existed brings its signer's issue time, as for revocations.
 */
export function predatesStore(signedEpoch: number, dataSince: number): boolean {
  return signedEpoch < dataSince;
}

export interface RevocationsOptions {
  store: StateStore;
  clock: Clock;
  metrics: Metrics;
  /** An epoch learnt longer ago than this is read again (ROUTE_CACHE_TTL). */
  refreshMs: number;
  /** How long the store keeps an epoch: no session or sign-in link it voids outlives it. */
  keepMs: number;
  /**
   * Every epoch learnt, and how: the WebSockets opened under voided sessions are closed. A read
   * finds epochs set earlier (a replica started later, a refresh), not a revocation made now.
   */
  onRevoked?(workspaceId: string, epoch: number, source: RevocationSource): void;
}

/** `made`: by revoke() on this replica; `announced`: another replica's event; `read`: found in the store. */
export type RevocationSource = 'made' | 'announced' | 'read';

interface Known { epoch: number | undefined; checkedAt: number }

/** Workspaces whose epoch a replica keeps; past this the oldest learnt is read again when next needed. */
const MAX_KNOWN = 100_000;

export function createRevocations(opts: RevocationsOptions) {
  const { store, clock, metrics } = opts;
  const known = new Map<string, Known>();
  const reading = new Map<string, Promise<void>>();

  function learn(id: string, epoch: number | undefined, source: RevocationSource) {
    const before = known.get(id)?.epoch;
    const inForce = before === undefined ? epoch : epoch === undefined ? before : Math.max(before, epoch);
    if (known.size >= MAX_KNOWN && !known.has(id)) known.delete(known.keys().next().value!);
    known.set(id, { epoch: inForce, checkedAt: clock.now() });
    // A revocation made here is reported even when the store kept an equal or later epoch.
    if (inForce !== undefined && (inForce !== before || source === 'made')) opts.onRevoked?.(id, inForce, source);
  }

  /**
   * One store read per workspace at a time, however many requests wait on it. A store that cannot
   * answer lets the workspace's sessions in on what this replica knows, as cached routes are still
   * served while Redis is down (README, "What happens when…"), and is asked again after refreshMs.
   */
  function read(id: string): Promise<void> {
    let p = reading.get(id);
    if (!p) {
      p = store.revocationEpoch(id).then(
        ({ epoch }) => learn(id, epoch, 'read'),
        () => { metrics.storeError(); learn(id, undefined, 'read'); },
      ).finally(() => reading.delete(id));
      reading.set(id, p);
    }
    return p;
  }

  const unsubscribe = store.subscribe((e: WorkspaceEvent) => {
    // A replica of the release before epochs announces `beforeMs`: a read within refreshMs finds it.
    if ('sessionsRevoked' in e && typeof e.sessionsRevoked.epoch === 'number') learn(e.sessionsRevoked.id, e.sessionsRevoked.epoch, 'announced');
  });

  /**
   * Without waiting (the warm lane): whether this session is void, or undefined when this replica has
   * not learnt the workspace's epoch yet. An epoch past its refresh is still used while it is read again.
   */
  function voidsNow(workspaceId: string, signedEpoch: number): boolean | undefined {
    const k = known.get(workspaceId);
    if (!k) return undefined;
    if (clock.now() - k.checkedAt > opts.refreshMs) void read(workspaceId);
    return revokedBy(signedEpoch, k.epoch);
  }

  return {
    voidsNow,

    /** Whether this session (or sign-in link) is void; asks the store when this replica has not learnt the workspace yet. */
    async voids(workspaceId: string, signedEpoch: number): Promise<boolean> {
      const now = voidsNow(workspaceId, signedEpoch);
      if (now !== undefined) return now;
      await read(workspaceId);
      return revokedBy(signedEpoch, known.get(workspaceId)?.epoch);
    },

    /**
     * For a session or sign-in link about to be signed, read from the store now, not only what this
     * replica knows (one that missed an event would let a voided link sign a session in): the epoch
     * in force, against which the link that brings it is checked, and the value to sign it under,
     * the store's time or that epoch if later; and when the store's data began, before which a
     * link that brings it may have been used already (predatesStore). Throws StoreUnavailable.
     */
    async forSigning(workspaceId: string): Promise<{ inForce: number | undefined; signAs: number; dataSince: number }> {
      const { epoch, storeNow, dataSince } = await store.revocationEpoch(workspaceId);
      learn(workspaceId, epoch, 'read');
      // The later of the store's and what this replica knows: a store restarted empty (no
      // persistence, a failover before replication) has lost an epoch this replica still refuses
      // sessions under, and a voided link must not sign a fresh session in past it.
      const inForce = known.get(workspaceId)?.epoch;
      return { inForce, signAs: Math.max(inForce ?? 0, storeNow), dataSince };
    },

    /** Voids every session and sign-in link of the workspace signed so far, on every replica. */
    async revoke(workspaceId: string): Promise<number> {
      const epoch = await store.revokeSessions(workspaceId, opts.keepMs);
      learn(workspaceId, epoch, 'made');
      await store.publish({ sessionsRevoked: { id: workspaceId, epoch } }).catch(() => metrics.storeError());
      return epoch;
    },

    close() {
      unsubscribe();
    },
  };
}

export type Revocations = ReturnType<typeof createRevocations>;
