// Admission control for starts (issue 4, "At AWS's pace"): a FIFO cap on starts in flight and a
// FIFO token bucket in front of every RunTask and RegisterTaskDefinition call, so a class of 500
// students opening their workspaces at once is started first-come-first-served at a rate AWS accepts
// (RunTask: 20 calls/s; Fargate launches: burst 100, refill 20/s; RegisterTaskDefinition: 1 call/s,
// burst 20) instead of in a storm of ThrottlingExceptions.
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

/**
 * Where RunTask tokens come from: this process's own bucket, or one every replica shares through
 * the state store, so a fleet of gateways together stays at AWS's rate (issue 7, class surge).
 */
export interface TokenSource {
  /** Takes one token if there is one; otherwise says how long until the next. May reject. */
  take(): Promise<{ granted: boolean; waitMs: number }>;
}

/** A bucket held in this process. */
export function localTokens(clock: Clock, ratePerSec: number, burst: number): TokenSource {
  let state: BucketState = { tokens: Math.max(1, burst), at: clock.now() };
  return {
    take: async () => {
      const r = takeToken(state, clock.now(), ratePerSec, burst);
      state = r.state;
      return { granted: r.granted, waitMs: r.waitMs };
    },
  };
}

/**
 * The shared bucket while it answers; this process's own bucket while it does not (Redis away):
 * starts go on at no more than the configured rate per replica, and AWS's throttling, retried
 * with backoff, covers the rest.
 */
export function sharedTokens(shared: TokenSource, fallback: TokenSource, onFallback: (err: unknown) => void): TokenSource {
  return {
    take: () => shared.take().catch((err) => {
      onFallback(err);
      return fallback.take();
    }),
  };
}

interface Waiter {
  grant(): void;
  onPosition(pos: number): void;
  reject(err: unknown): void;
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
      reject: (err) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
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

  /** Everyone still waiting is told no (the line closed). */
  rejectAll(err: unknown): void {
    const all = this.waiters.splice(0);
    if (all.length) this.onChange();
    for (const w of all) w.reject(err);
  }

  private announce(from: number): void {
    for (let i = from; i < this.waiters.length; i++) this.waiters[i].onPosition(i + 1);
  }
}

export interface AdmissionOptions {
  maxInFlight: number;
  /** RunTask tokens, in the order the waiters asked. */
  tokens: TokenSource;
  /**
   * RegisterTaskDefinition tokens (AWS: 1 call a second, burst 20). A student's first start
   * registers their task definition family; without a line in front of it a class of new students
   * meets a wall of ThrottlingExceptions, and the SDK's retries give up on most of them.
   */
  registerTokens?: TokenSource;
}

/**
 * A FIFO line in front of a token source: tokens are taken one by one, in the order the waiters
 * asked, and a waiter that gives up leaves its place to the next.
 */
export class TokenLine {
  private readonly queue: FifoQueue;
  private timer: unknown = undefined;
  private pumping = false;
  private closed = false;

  constructor(private readonly source: TokenSource, private readonly timers: Timers, onChange: () => void = () => {}) {
    this.queue = new FifoQueue(onChange);
  }

  get waiting(): number {
    return this.queue.waiters.length;
  }

  /** Waits for one token; positions from 2 on are reported (the head is only waiting for its token). */
  take(signal: AbortSignal, onPosition: (pos: number) => void): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal.aborted) return reject(abortError(signal));
      // Closed: no pump will ever serve this waiter.
      if (this.closed) return reject(new Error('token line closed'));
      const report = (pos: number) => { if (pos > 1) onPosition(pos); };
      this.queue.enqueue(signal, report, resolve, reject);
      void this.pump();
    });
  }

  /**
   * A token now, or false: for work that may be put off (a stale task definition re-registered
   * later) and must not wait in line. Never jumps the line: false while anyone waits.
   */
  async tryTake(): Promise<boolean> {
    if (this.closed || this.queue.waiters.length > 0 || this.timer !== undefined) return false;
    try {
      return (await this.source.take()).granted;
    } catch {
      return false;
    }
  }

  /** Stops handing out tokens; whoever still waits is rejected (a call with no signal of its own would wait forever). */
  close(): void {
    this.closed = true;
    if (this.timer !== undefined) this.timers.clearTimeout(this.timer);
    this.timer = undefined;
    this.queue.rejectAll(new Error('token line closed'));
  }

  /** One pump at a time: tokens are taken one by one and handed to the head of the queue. */
  private async pump(): Promise<void> {
    if (this.pumping || this.timer !== undefined) return;
    this.pumping = true;
    try {
      while (this.queue.waiters.length > 0 && !this.closed) {
        let r: { granted: boolean; waitMs: number };
        try {
          r = await this.source.take();
        } catch {
          r = { granted: false, waitMs: 1000 };
        }
        if (!r.granted) {
          if (this.closed) return;
          this.timer = this.timers.setTimeout(() => {
            this.timer = undefined;
            void this.pump();
          }, Math.max(1, r.waitMs));
          return;
        }
        // A waiter that gave up while the token was being taken leaves it to the next one.
        this.queue.shift()?.grant();
      }
    } finally {
      this.pumping = false;
    }
  }
}

export class Admission {
  private inFlight = 0;
  private readonly slots: FifoQueue;
  private readonly runTask: TokenLine;
  readonly register: TokenLine;

  constructor(
    private readonly opts: AdmissionOptions,
    timers: Timers,
    private readonly onDepth: (waiting: number) => void = () => {},
  ) {
    const changed = () => this.onDepth(this.waiting());
    this.slots = new FifoQueue(changed);
    this.runTask = new TokenLine(opts.tokens, timers, changed);
    // Without a source of its own, registrations are not paced here (AWS's throttling, retried, paces them).
    this.register = new TokenLine(opts.registerTokens ?? { take: async () => ({ granted: true, waitMs: 0 }) }, timers, changed);
  }

  /** Starts waiting for a slot or a token. */
  waiting(): number {
    return this.slots.waiters.length + this.runTask.waiting + this.register.waiting;
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
    return this.runTask.take(signal, onPosition);
  }

  close(): void {
    this.runTask.close();
    this.register.close();
  }

  private pumpSlots(): void {
    while (this.inFlight < this.opts.maxInFlight) {
      const w = this.slots.shift();
      if (!w) return;
      this.inFlight++;
      w.grant();
    }
  }
}
