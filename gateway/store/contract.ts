// The state store contract, owned by the gateway (its only user). Two implementations: in-memory
// for one replica (embedded default) and Redis for many. Both are held to one contract test suite
// (test/store-contract.test.ts). Nothing here names an SDK or Redis type.
import type { Endpoint, StartStage } from '../../provisioner/contract.js';

export const WORKSPACE_STATES = ['stopped', 'starting', 'running', 'stopping', 'failed'] as const;
export type WorkspaceState = (typeof WORKSPACE_STATES)[number];

export interface WorkspaceRecord {
  id: string;
  state: WorkspaceState;
  /** Increases by one on every start; a start is named by (id, generation). */
  generation: number;
  /** Epoch ms of the last state change. */
  since: number;
  stage?: StartStage;
  queuePosition?: number;
  endpoint?: Endpoint;
  /** The provisioner's opaque handle (pid, task ARN). */
  handle?: string;
  /** Epoch ms when the current generation was requested to start. */
  requestedAt?: number;
  /** Epoch ms when it became ready. */
  startedAt?: number;
  /** Why it last stopped or failed (a stable code, e.g. idle, max_session, unproven, TASK_STOPPED). */
  reasonCode?: string;
  /** Human-readable detail for the starting page and the admin API. */
  reason?: string;
}

/**
 * Published so other replicas learn of it at once: every record change, and every revocation of a
 * workspace's sessions (the revocation epoch now in force, gateway/revocations.ts).
 */
export type WorkspaceEvent = { record: WorkspaceRecord } | { sessionsRevoked: { id: string; epoch: number } };

/** A lease that a write must still hold to be applied (fencing against a paused holder). */
export interface Fence {
  key: string;
  owner: string;
}

export interface ListQuery {
  state?: WorkspaceState;
  cursor?: string;
  limit: number;
}

export interface ListPage {
  items: WorkspaceRecord[];
  /** Absent on the last page. */
  cursor?: string;
}

export interface StateStore {
  readonly kind: 'memory' | 'redis';

  getWorkspace(id: string): Promise<WorkspaceRecord | undefined>;
  /** Writes the record; with a fence, only while that lease is held. Returns whether it was written. */
  putWorkspace(record: WorkspaceRecord, fence?: Fence): Promise<boolean>;
  listWorkspaces(query: ListQuery): Promise<ListPage>;
  /** Ids of running workspaces whose session started before `beforeMs` (MAX_SESSION). */
  runningStartedBefore(beforeMs: number, limit: number): Promise<string[]>;
  countRunning(): Promise<number>;
  /** Workspaces per state, kept current by every write (no scan): for metrics. */
  countByState(): Promise<Record<WorkspaceState, number>>;

  /** SET NX PX: true when this owner now holds the lease. */
  acquireLease(key: string, owner: string, ttlMs: number): Promise<boolean>;
  /** Extends a lease this owner holds; false when it was lost. */
  renewLease(key: string, owner: string, ttlMs: number): Promise<boolean>;
  /** Deletes the lease only if this owner still holds it. */
  releaseLease(key: string, owner: string): Promise<void>;
  leaseOwner(key: string): Promise<string | undefined>;

  publish(event: WorkspaceEvent): Promise<void>;
  /** Handler is called for events from every replica, this one included. Returns unsubscribe. */
  subscribe(handler: (event: WorkspaceEvent) => void): () => void;

  /** Moves last-activity times forward only (max of stored and given), in one round trip. */
  recordActivity(entries: ReadonlyArray<readonly [id: string, atMs: number]>): Promise<void>;
  getActivity(id: string): Promise<number | undefined>;
  /** Workspaces whose last activity is at or before `beforeMs`, oldest first. */
  activityBefore(beforeMs: number, limit: number): Promise<Array<[id: string, atMs: number]>>;
  /** Sets the activity time (not only forward): used when a workspace (re)appears. */
  resetActivity(id: string, atMs: number): Promise<void>;
  clearActivity(id: string): Promise<void>;

  /** This instance's open-connection counts; expire after ttl unless reported again. */
  reportConnections(instanceId: string, counts: ReadonlyMap<string, number>, ttlMs: number): Promise<void>;
  /** Sum over live instances. */
  getConnections(id: string): Promise<number>;

  /**
   * Voids every session and sign-in link of this workspace signed so far (the admin API's
   * revoke-sessions). Each carries a value read from the store when it was signed (revocationEpoch:
   * the store's time, or the epoch in force if that is later); one below the epoch in force is void.
   * The new epoch is one past the store's own time (epoch ms), or one past the epoch in force if that
   * is later, so everything signed so far is below it, whatever the replicas' clocks say. Kept
   * `ttlMs`, past which nothing it voids could still be current. Returns it.
   */
  revokeSessions(id: string, ttlMs: number): Promise<number>;
  /**
   * The workspace's revocation epoch while it is kept (undefined: none in force), the store's own
   * time (epoch ms) and `dataSince`, read together. `dataSince` is when the data the store holds
   * began, on its own clock, never after `storeNow`: a store that lost its data (Redis restarted
   * empty, flushed; the memory store of a restarted process) no longer knows which one-time links
   * were used before (consumeOnce), so a link signed before it cannot be taken as unused. Redis
   * keeps it as a key without expiry set from TIME by whichever read first finds it missing; the
   * memory store's is its creation.
   */
  revocationEpoch(id: string): Promise<{ epoch: number | undefined; storeNow: number; dataSince: number }>;

  /** True the first time a key is seen within ttl (one-time token ids). */
  consumeOnce(key: string, ttlMs: number): Promise<boolean>;
  /** Counts a hit in a fixed window and returns the count so far (rate limits). */
  countHit(key: string, windowMs: number): Promise<number>;
  /**
   * Takes one token from a bucket every replica shares (RunTask's rate is per AWS account, not per
   * gateway); otherwise says how long until the next token.
   */
  takeToken(key: string, ratePerSec: number, burst: number): Promise<{ granted: boolean; waitMs: number }>;

  /** Whether the store answered a ping just now. */
  ping(): Promise<boolean>;
  close(): Promise<void>;
}

export class StoreUnavailable extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreUnavailable';
  }
}
