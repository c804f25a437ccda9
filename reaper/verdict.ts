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
