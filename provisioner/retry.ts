// Retry policy for AWS calls, kept pure (error class + attempt + injected random -> decision) so
// it is table-tested. Throttling and transient failures are retried with "full jitter"
// exponential backoff (AWS Architecture Blog, "Exponential Backoff And Jitter"); the per-call
// deadline is separate (see aws-call.ts): a timeout is one failed attempt, not the backoff.

/** What went wrong with one attempt, as far as retrying is concerned. */
export type ErrorClass = 'throttled' | 'transient' | 'timeout' | 'fatal';

export interface RetryPolicy {
  /** Attempts in total (first call included) for throttling errors. */
  throttledAttempts: number;
  /** Attempts in total for 5xx, dropped connections and per-call timeouts. */
  transientAttempts: number;
  /** Backoff base and cap, in clock milliseconds. */
  baseMs: number;
  capMs: number;
  /** Throttling backs off from a larger base: the service asked us to slow down. */
  throttledBaseMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  throttledAttempts: 8,
  transientAttempts: 3,
  baseMs: 100,
  capMs: 5_000,
  throttledBaseMs: 250,
};

export type RetryDecision = { retry: false } | { retry: true; delayMs: number };

/**
 * Whether to try again after attempt number `attempt` (1-based) failed with `cls`, and after how
 * long. `random` returns [0, 1) and is injected so the jitter is testable.
 */
export function retryDecision(cls: ErrorClass, attempt: number, policy: RetryPolicy, random: () => number): RetryDecision {
  if (cls === 'fatal') return { retry: false };
  const max = cls === 'throttled' ? policy.throttledAttempts : policy.transientAttempts;
  if (attempt >= max) return { retry: false };
  const base = cls === 'throttled' ? policy.throttledBaseMs : policy.baseMs;
  const ceiling = Math.min(policy.capMs, base * 2 ** (attempt - 1));
  return { retry: true, delayMs: Math.floor(random() * ceiling) };
}

const THROTTLING_NAMES = new Set([
  'ThrottlingException', 'Throttling', 'ThrottledException', 'RequestLimitExceeded',
  'TooManyRequestsException', 'RequestThrottled', 'RequestThrottledException', 'SlowDown',
]);
const NETWORK_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'ECONNABORTED', 'EHOSTUNREACH', 'ENETUNREACH']);

/** Classifies an error thrown by an AWS SDK v3 client call (duck-typed: no SDK types here). */
export function classifyAwsError(err: unknown): ErrorClass {
  const e = err as { name?: string; code?: string; $metadata?: { httpStatusCode?: number }; $retryable?: { throttling?: boolean } } | null;
  if (!e || typeof e !== 'object') return 'fatal';
  if (e.name && THROTTLING_NAMES.has(e.name)) return 'throttled';
  if (e.$retryable?.throttling) return 'throttled';
  // Cloud Map: another operation on the instance is still in progress (a retried registration AWS
  // still runs, a deregistration of the previous generation). It ends by itself: back off as if
  // throttled, not fail the start (issue 4, "Register").
  if (e.name === 'DuplicateRequest') return 'throttled';
  const status = e.$metadata?.httpStatusCode;
  if (status === 429) return 'throttled';
  if (status !== undefined && status >= 500) return 'transient';
  if (e.name === 'ServerException' || e.name === 'InternalServerError' || e.name === 'ServiceUnavailable') return 'transient';
  if (e.code && NETWORK_CODES.has(e.code)) return 'transient';
  // The task role's credentials could not be fetched (the container credentials endpoint did not
  // answer): in a task that has a role this passes, and failing it at once failed every start of a
  // class start that met the hiccup. Unretried it was 'fatal'; retried, it still ends BACKEND_UNAVAILABLE.
  if (e.name === 'CredentialsProviderError') return 'transient';
  if (e.name === 'TimeoutError' || e.name === 'RequestTimeout') return 'timeout';
  // The SDK rejects a response it cannot parse (a proxy's HTML error page, a cut body) with a
  // deserialization error carrying no status; treat it as transient.
  if (status === undefined && /socket hang up|ECONNRESET|deserializ|Unexpected end/i.test(String((err as Error).message))) return 'transient';
  return 'fatal';
}
