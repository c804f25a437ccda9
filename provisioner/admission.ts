// Admission control for starts (issue 4, "At AWS's pace"): a FIFO cap on starts in flight and a
// FIFO token bucket in front of every RunTask call, so a class of 500 students opening their
// workspaces at once is started first-come-first-served at a rate AWS accepts (RunTask: 20 calls/s;
// Fargate launches: burst 100, refill 20/s) instead of in a storm of ThrottlingExceptions.
import type { Clock } from '../gateway/clock.js';
import type { Timers } from './timers.js';

export interface BucketState {
  tokens: number;
  /** Clock time of the last refill. */
  at: number;
}

/** Pure token bucket step: refills for the time passed, then takes one token if there is one. */
export function takeToken(
  state: BucketState,
  now: number,
  ratePerSec: number,
  burst: number,
): { state: BucketState; granted: boolean; waitMs: number } {
  const elapsed = Math.max(0, now - state.at);
  const tokens = Math.min(burst, state.tokens + (elapsed * ratePerSec) / 1000);
  if (tokens >= 1) return { state: { tokens: tokens - 1, at: now }, granted: true, waitMs: 0 };
  return { state: { tokens, at: now }, granted: false, waitMs: Math.ceil(((1 - tokens) * 1000) / ratePerSec) };
}

interface Waiter {
  grant(): void;
  onPosition(pos: number): void;
}

function abortError(signal: AbortSignal): unknown {
  return signal.reason ?? new Error('aborted');
}

/** Common FIFO bookkeeping: positions are 1-based and re-announced whenever they change. */
class FifoQueue {
  readonly waiters: Waiter[] = [];
  constructor(private readonly onChange: () => void) {}

  enqueue(signal: AbortSignal, onPosition: (pos: number) => void, grant: () => void, reject: (e: unknown) => void): void {
    const w: Waiter = {
      grant: () => {
        signal.removeEventListener('abort', onAbort);
        grant();
      },
      onPosition,
    };
    const onAbort = () => {
      const i = this.waiters.indexOf(w);
      if (i >= 0) {
        this.waiters.splice(i, 1);
        this.announce(i);
        this.onChange();
      }
      reject(abortError(signal));
    };
    signal.addEventListener('abort', onAbort, { once: true });
    this.waiters.push(w);
    onPosition(this.waiters.length);
    this.onChange();
  }

  shift(): Waiter | undefined {
    const w = this.waiters.shift();
    if (w) {
      this.announce(0);
      this.onChange();
    }
    return w;
  }

  private announce(from: number): void {
    for (let i = from; i < this.waiters.length; i++) this.waiters[i].onPosition(i + 1);
  }
}

export interface AdmissionOptions {
  maxInFlight: number;
  /** RunTask calls per second (sustained). */
  ratePerSec: number;
  /** Tokens the RunTask bucket can hold (1 = evenly spaced calls). */
  burst: number;
}

export class Admission {
  private inFlight = 0;
  private readonly slots: FifoQueue;
  private readonly tokens: FifoQueue;
  private bucket: BucketState;
  private timer: unknown = undefined;

  constructor(
    private readonly opts: AdmissionOptions,
    private readonly clock: Clock,
    private readonly timers: Timers,
    private readonly onDepth: (waiting: number) => void = () => {},
  ) {
    const changed = () => this.onDepth(this.waiting());
    this.slots = new FifoQueue(changed);
    this.tokens = new FifoQueue(changed);
    this.bucket = { tokens: Math.max(1, opts.burst), at: clock.now() };
  }

  /** Starts waiting for a slot or a RunTask token. */
  waiting(): number {
    return this.slots.waiters.length + this.tokens.waiters.length;
  }

  /** Waits (FIFO) for a start slot; resolves with its release function. */
  acquireSlot(signal: AbortSignal, onPosition: (pos: number) => void): Promise<() => void> {
    return new Promise((resolve, reject) => {
      if (signal.aborted) return reject(abortError(signal));
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        this.inFlight--;
        this.pumpSlots();
      };
      if (this.inFlight < this.opts.maxInFlight && this.slots.waiters.length === 0) {
        this.inFlight++;
        return resolve(release);
      }
      this.slots.enqueue(signal, onPosition, () => resolve(release), reject);
      this.pumpSlots();
    });
  }

  /** Waits (FIFO) for the right to make one RunTask call. */
  takeRunTaskToken(signal: AbortSignal, onPosition: (pos: number) => void): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal.aborted) return reject(abortError(signal));
      if (this.tokens.waiters.length === 0) {
        const r = takeToken(this.bucket, this.clock.now(), this.opts.ratePerSec, this.opts.burst);
        this.bucket = r.state;
        if (r.granted) return resolve();
      }
      this.tokens.enqueue(signal, onPosition, resolve, reject);
      this.pumpTokens();
    });
  }

  close(): void {
    if (this.timer !== undefined) this.timers.clearTimeout(this.timer);
    this.timer = undefined;
  }

  private pumpSlots(): void {
    while (this.inFlight < this.opts.maxInFlight) {
      const w = this.slots.shift();
      if (!w) return;
      this.inFlight++;
      w.grant();
    }
  }

  private pumpTokens(): void {
    if (this.timer !== undefined) return;
    while (this.tokens.waiters.length > 0) {
      const r = takeToken(this.bucket, this.clock.now(), this.opts.ratePerSec, this.opts.burst);
      this.bucket = r.state;
      if (!r.granted) {
        this.timer = this.timers.setTimeout(() => {
          this.timer = undefined;
          this.pumpTokens();
        }, r.waitMs);
        return;
      }
      this.tokens.shift()!.grant();
    }
  }
}
