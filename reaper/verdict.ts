// The idle verdict: pure, with the clock passed in, table-tested (test/reaper-verdict.test.ts).
import type { WorkspaceState } from '../gateway/store/contract.js';

export interface VerdictInput {
  now: number;
  state: WorkspaceState | undefined;
  /** Last evidence of a person; undefined when unknown (the caller then grants a full window). */
  lastActivity: number | undefined;
  startedAt: number | undefined;
  idleTimeoutMs: number;
  maxSessionMs: number;
}

export type Verdict = { stop: false; why: 'not_running' | 'active' | 'unknown_activity' } | { stop: true; reason: 'idle' | 'max_session' };

export function reapVerdict(v: VerdictInput): Verdict {
  if (v.state !== 'running') return { stop: false, why: 'not_running' };
  // MAX_SESSION is a hard cap whatever the activity (issue 5).
  if (v.startedAt !== undefined && v.now - v.startedAt >= v.maxSessionMs) return { stop: true, reason: 'max_session' };
  // Never reap blind: unknown activity is never idleness.
  if (v.lastActivity === undefined) return { stop: false, why: 'unknown_activity' };
  if (v.now - v.lastActivity >= v.idleTimeoutMs) return { stop: true, reason: 'idle' };
  return { stop: false, why: 'active' };
}

/**
 * Whether a pass may reap, given when this reaper first found the store answering again after finding
 * it unreachable (`backSince`; undefined: no outage seen). During an outage every gateway holds its
 * activity in memory and writes it at its next flush once the store answers; until then the store
 * still holds the times from before the outage, and a student typing all through it looks idle.
 * So after an outage nothing is reaped until every gateway has had `settleMs` to flush.
 */
export function storeSettled(v: { now: number; backSince: number | undefined; settleMs: number }): boolean {
  return v.backSince === undefined || v.now - v.backSince >= v.settleMs;
}

/**
 * Whether a reaper renews its leader lease during a pass: a third of the TTL after the last renewal,
 * so a renewal that fails or is slow still leaves time for another before the lease lapses. A pass
 * over a large class (stops waiting on throttled StopTask calls) outlasts the lease; renewed only at
 * the start of each pass, the lease moved to another replica mid-pass and two reapers ran at once.
 */
export function leaseRenewalDue(v: { now: number; renewedAt: number; ttlMs: number }): boolean {
  return v.now - v.renewedAt >= v.ttlMs / 3;
}
