// One AWS call with a deadline that really aborts it, and retries by the pure policy in retry.ts.
// The SDK's own requestTimeout only logs a warning and lets the call hang (issue 4), so each
// attempt gets an AbortSignal that fires after the per-call timeout; the SDK's retries are off
// (maxAttempts: 1 on the clients) so this is the only retry loop and every attempt is observed.
import type { ErrorClass, RetryPolicy } from './retry.js';
import { classifyAwsError, retryDecision } from './retry.js';
import type { AwsCallOutcome } from './ecs-types.js';
import { anySignal, sleep, timeoutSignal, type Timers } from './timers.js';

/** The last failure of a call after its retries were used up (or a non-retryable error). */
export class AwsCallError extends Error {
  constructor(
    readonly operation: string,
    readonly errorClass: ErrorClass,
    readonly attempts: number,
    readonly awsName: string | undefined,
    cause: unknown,
  ) {
    const what = errorClass === 'timeout' ? 'did not answer in time' : errorClass === 'throttled' ? 'kept throttling' : 'failed';
    super(`AWS ${operation} ${what} after ${attempts} attempt${attempts === 1 ? '' : 's'}: ${awsName ? `${awsName}: ` : ''}${(cause as Error)?.message ?? String(cause)}`, { cause });
    this.name = 'AwsCallError';
  }
}

class CallTimeout extends Error {
  constructor(op: string, ms: number) {
    super(`${op} exceeded its ${ms} ms call deadline`);
    this.name = 'TimeoutError';
  }
}

export interface CallerDeps {
  timers: Timers;
  timeoutMs: number;
  policy: RetryPolicy;
  random: () => number;
  observe(operation: string, outcome: AwsCallOutcome): void;
  /** Awaited before every attempt of every call, after the call's own `beforeAttempt`: AWS's bucket for the operation. */
  pace?: (operation: string, signal: AbortSignal) => Promise<void>;
  /** The owner's lifetime: when it aborts, every call ends, its backoff timer with it. */
  lifetime?: AbortSignal;
}

export interface CallOptions {
  /** The caller's signal (a start's deadline or cancellation): aborts the attempt and the backoff. */
  signal?: AbortSignal;
  /** Awaited before every attempt (RunTask: a token from the admission rate limiter). */
  beforeAttempt?: (signal: AbortSignal) => Promise<void>;
}

export type AwsCaller = <T>(operation: string, send: (abortSignal: AbortSignal) => Promise<T>, opts?: CallOptions) => Promise<T>;

export function createAwsCaller(deps: CallerDeps): AwsCaller {
  return async function call<T>(operation: string, send: (abortSignal: AbortSignal) => Promise<T>, opts: CallOptions = {}): Promise<T> {
    // Calls with no signal of their own (stop, describe, reconcile) end with the owner too: after
    // close() one asleep in its backoff kept its timer, then waited for a token forever.
    const bound = deps.lifetime ? anySignal([opts.signal, deps.lifetime]) : undefined;
    try {
      return await attempts(operation, send, opts, bound?.signal ?? opts.signal);
    } finally {
      bound?.dispose();
    }
  };

  async function attempts<T>(operation: string, send: (abortSignal: AbortSignal) => Promise<T>, opts: CallOptions, outer: AbortSignal | undefined): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      if (outer?.aborted) throw outer.reason;
      if (opts.beforeAttempt || deps.pace) {
        const s = outer ?? new AbortController().signal;
        if (opts.beforeAttempt) await opts.beforeAttempt(s);
        if (deps.pace) await deps.pace(operation, s);
      }
      const deadline = timeoutSignal(deps.timers, deps.timeoutMs, new CallTimeout(operation, deps.timeoutMs));
      const linked = anySignal([outer, deadline.signal]);
      let cls: ErrorClass;
      let error: unknown;
      try {
        const out = await send(linked.signal);
        deps.observe(operation, 'ok');
        return out;
      } catch (err) {
        if (outer?.aborted) throw outer.reason;
        error = err;
        cls = deadline.signal.aborted ? 'timeout' : classifyAwsError(err);
      } finally {
        deadline.dispose();
        linked.dispose();
      }
      deps.observe(operation, cls === 'throttled' ? 'throttled' : cls === 'timeout' ? 'timeout' : 'error');
      const d = retryDecision(cls, attempt, deps.policy, deps.random);
      const name = cls === 'timeout' ? 'TimeoutError' : (error as { name?: string })?.name;
      if (!d.retry) throw new AwsCallError(operation, cls, attempt, name, cls === 'timeout' ? deadline.signal.reason : error);
      await sleep(deps.timers, d.delayMs, outer);
    }
  }
}
