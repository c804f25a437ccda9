// What both provisioners conclude from their readiness probes (issue 4: a workspace proves who it is).
import type { Socket } from 'node:net';
import { answeredUnproven, provenConnection, type Claim } from '../gateway/workspace-proof.js';

/**
 * A readiness probe's outcome: `unproven` when the workspace answered the challenge in full without a
 * proof (gateway/workspace-proof.ts answeredUnproven), apart from one that did not answer yet (`down`).
 */
export type ProbeVerdict = 'healthy' | 'down' | 'unproven';

/** Definitive non-proofs in a row that fail a start: more than one, so a single odd answer is not enough. */
export const UNPROVEN_PROBES_TO_FAIL = 3;

/** Non-proofs in a row after `verdict`, counting on from `before`: any other answer starts the count over. */
export const unprovenInARow = (before: number, verdict: ProbeVerdict): number => (verdict === 'unproven' ? before + 1 : 0);

/**
 * A probe's first step (both provisioners): a connection that has proven it reaches the start `claim`
 * names, or the verdict without one: `unproven` only for a complete answer that is not a proof
 * (answeredUnproven), `down` for a close, reset or timeout before one.
 */
export async function provenForProbe(host: string, port: number, claim: Claim, timeoutMs: number): Promise<Socket | 'down' | 'unproven'> {
  try {
    return await provenConnection(host, port, claim, timeoutMs);
  } catch (err) {
    return answeredUnproven(err) ? 'unproven' : 'down';
  }
}
