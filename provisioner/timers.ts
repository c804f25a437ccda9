// Timers in the same units as the injected Clock, so a test or benchmark can run the provisioner
// (and the fake AWS endpoint) on a sped-up clock: waits, deadlines and rate windows all scale
// together and the behaviour is the same, only faster.
import type { Clock } from '../gateway/clock.js';

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const realTimers: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
};

/** Resolves after `ms` clock milliseconds; rejects with the signal's reason if it aborts first. */
export function sleep(timers: Timers, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      timers.clearTimeout(h);
      reject(signal!.reason);
    };
    const h = timers.setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, Math.max(0, ms));
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** An AbortSignal that aborts after `ms` clock milliseconds with `reason`; dispose() cancels it. */
export function timeoutSignal(timers: Timers, ms: number, reason: unknown): { signal: AbortSignal; dispose(): void } {
  const ac = new AbortController();
  const h = timers.setTimeout(() => ac.abort(reason), Math.max(0, ms));
  return { signal: ac.signal, dispose: () => timers.clearTimeout(h) };
}

/**
 * A clock and timers running `speed` times faster than real time (speed 10: one clock second
 * passes in 100 real ms). For tests and benchmarks of behaviour that is defined per second.
 */
export function createScaledTime(speed: number, start = Date.now()): { clock: Clock; timers: Timers } {
  const realStart = Date.now();
  return {
    clock: { now: () => start + (Date.now() - realStart) * speed },
    timers: {
      setTimeout: (fn, ms) => setTimeout(fn, Math.max(0, ms) / speed),
      clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
    },
  };
}

/**
 * A signal that aborts when any of `signals` does; dispose() detaches it. Used instead of
 * AbortSignal.any, which on Node 20 keeps every combined signal that has listeners alive as long
 * as its sources live: combined with the provisioner's lifetime signal, that leaks per call.
 */
export function anySignal(signals: (AbortSignal | undefined)[]): { signal: AbortSignal; dispose(): void } {
  const ac = new AbortController();
  const detach: (() => void)[] = [];
  for (const s of signals) {
    if (!s) continue;
    if (s.aborted) {
      ac.abort(s.reason);
      break;
    }
    const onAbort = () => ac.abort(s.reason);
    s.addEventListener('abort', onAbort, { once: true });
    detach.push(() => s.removeEventListener('abort', onAbort));
  }
  return {
    signal: ac.signal,
    dispose() {
      for (const d of detach.splice(0)) d();
    },
  };
}

/** Waits for a shared promise, giving up (with the signal's reason) if this caller's signal aborts. */
export function untilAborted<T>(shared: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    shared.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}
