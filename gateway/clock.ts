// An injected clock, so decisions (idle verdicts, leases, rate windows) are testable without sleeps.
export interface Clock {
  /** Epoch milliseconds. */
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };

/** A clock that only moves when told to (tests and benchmarks). */
export function createManualClock(start = Date.UTC(2026, 0, 1)): Clock & { advance(ms: number): void; set(ms: number): void } {
  let t = start;
  return {
    now: () => t,
    advance(ms: number) { t += ms; },
    set(ms: number) { t = ms; },
  };
}
