// The shape every benchmark scenario returns to bench/run.ts (issue 7). Part B's scenarios
// (cold-herd, class-start surge, state scale) and part A's (HTTP, WebSocket, bookkeeping) use it alike,
// so the runner can print one table and write one JSON file without knowing any scenario's internals.
/** `rounds`: the figure of each round, in the order run, where `value` is their median. */
export interface Figure { name: string; value: number; unit: string; rounds?: number[] }
export interface Target { name: string; value: number; limit: number; unit: string; op: '<=' | '>='; met: boolean }
export interface ScenarioResult { scenario: string; systems: Array<{ system: string; figures: Figure[] }>; targets: Target[]; notes: string[] }

/**
 * Adds a target, met or missed by its raw figures and shown through `shown` (rounding); one that cannot be
 * evaluated because a system did not run becomes a note instead of a false verdict.
 */
export function addTarget(
  into: { targets: Target[]; notes: string[] }, name: string, value: number, limit: number, unit: string, op: '<=' | '>=',
  shown: (x: number) => number = (x) => x,
): void {
  if (!Number.isFinite(value) || !Number.isFinite(limit)) { into.notes.push(`target "${name}" not evaluated (a system did not run)`); return; }
  into.targets.push({ name, value: shown(value), limit: shown(limit), unit, op, met: op === '<=' ? value <= limit : value >= limit });
}

/** A scenario's progress line for one target, printed as it finishes. */
export function targetLine(t: Target): string {
  return `  ${t.met ? 'met   ' : 'MISSED'} ${t.name}: ${t.value} ${t.unit} (${t.op} ${t.limit})`;
}
