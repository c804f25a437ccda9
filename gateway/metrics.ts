// Prometheus metrics (issue 6): one registry per gateway instance, made by a factory. Every label
// set is bounded (no workspace id, path or address ever becomes a label), and recording never throws
// and never does I/O: a scrape reads in-memory values only.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export const METRIC_PREFIX = 'wsgw_';
const LATENCY_BUCKETS = [0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const START_BUCKETS = [0.25, 0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300];

export type StatusClass = '1xx' | '2xx' | '3xx' | '4xx' | '5xx';
export const statusClass = (status: number): StatusClass => `${Math.min(5, Math.max(1, Math.floor(status / 100)))}xx` as StatusClass;

export interface MetricsOptions {
  /** Off for the overhead benchmark (issue 6: with and without metrics in the same run). */
  enabled: boolean;
  defaultMetrics: boolean;
}

export function createMetrics(opts: MetricsOptions = { enabled: true, defaultMetrics: true }) {
  const registry = new Registry();
  if (opts.enabled && opts.defaultMetrics) collectDefaultMetrics({ register: registry });
  const p = METRIC_PREFIX;
  const r = [registry];
  const proxied = new Counter({ name: `${p}proxy_requests_total`, help: 'Proxied requests by kind (web, ws) and status class.', labelNames: ['kind', 'status_class'] as const, registers: r });
  const latency = new Histogram({ name: `${p}proxy_request_duration_seconds`, help: 'Time from request to response headers for warm proxied HTTP requests.', buckets: LATENCY_BUCKETS, registers: r });
  const wsOpen = new Gauge({ name: `${p}websockets_open`, help: 'WebSockets currently proxied by this instance.', registers: r });
  const coldStarts = new Counter({ name: `${p}cold_starts_total`, help: 'Workspace starts by outcome.', labelNames: ['outcome'] as const, registers: r });
  const coldStartDuration = new Histogram({ name: `${p}cold_start_duration_seconds`, help: 'From the first page load (start requested) to ready.', buckets: START_BUCKETS, registers: r });
  const stageDuration = new Histogram({ name: `${p}start_stage_duration_seconds`, help: 'Time spent in each start stage.', labelNames: ['stage'] as const, buckets: START_BUCKETS, registers: r });
  const queueDepth = new Gauge({ name: `${p}start_queue_depth`, help: 'Starts waiting for admission on this instance.', registers: r });
  const startsInFlight = new Gauge({ name: `${p}starts_in_flight`, help: 'Starts this instance is driving now.', registers: r });
  const workspaces = new Gauge({ name: `${p}workspaces`, help: 'Workspaces by state (running: from the store at scrape time; starting: driven by this instance).', labelNames: ['state'] as const, registers: r });
  const routeCache = new Counter({ name: `${p}route_cache_lookups_total`, help: 'Route cache lookups by result.', labelNames: ['result'] as const, registers: r });
  const awsCalls = new Counter({ name: `${p}aws_calls_total`, help: 'AWS API calls by operation and outcome.', labelNames: ['operation', 'outcome'] as const, registers: r });
  const storeErrors = new Counter({ name: `${p}store_errors_total`, help: 'State store operations that failed.', registers: r });
  const storeUp = new Gauge({ name: `${p}store_up`, help: '1 when the state store answered its last health check.', registers: r });
  const reaperStops = new Counter({ name: `${p}reaper_stops_total`, help: 'Workspaces stopped by the reaper, by reason.', labelNames: ['reason'] as const, registers: r });
  const signInFailures = new Counter({ name: `${p}signin_failures_total`, help: 'Rejected sign-ins and requests without a valid session, by reason.', labelNames: ['reason'] as const, registers: r });
  const upstreamErrors = new Counter({ name: `${p}upstream_errors_total`, help: 'Upstream failures by error code.', labelNames: ['code'] as const, registers: r });
  const rejected = new Counter({ name: `${p}rejected_requests_total`, help: 'Requests refused at the edge, by error code.', labelNames: ['code'] as const, registers: r });
  const activityBuffered = new Gauge({ name: `${p}activity_buffered`, help: 'Workspaces with activity not yet written to the store.', registers: r });

  // Bounded label values: anything unexpected collapses into "other" instead of growing the series.
  const bounded = (v: string, allowed: ReadonlySet<string>) => (allowed.has(v) ? v : 'other');
  const STAGES = new Set(['queued', 'provisioning', 'pending', 'running', 'probing', 'ready']);
  const safe = (fn: () => void) => { if (!opts.enabled) return; try { fn(); } catch { /* a metric never breaks a request */ } };

  return {
    registry,
    enabled: opts.enabled,
    proxied: (kind: 'web' | 'ws', status: number) => safe(() => proxied.inc({ kind, status_class: statusClass(status) })),
    warmLatency: (seconds: number) => safe(() => latency.observe(seconds)),
    wsOpened: () => safe(() => wsOpen.inc()),
    wsClosed: () => safe(() => wsOpen.dec()),
    coldStart: (outcome: 'ready' | 'failed' | 'aborted', seconds?: number) => safe(() => {
      coldStarts.inc({ outcome });
      if (outcome === 'ready' && seconds !== undefined) coldStartDuration.observe(seconds);
    }),
    stage: (stage: string, seconds: number) => safe(() => stageDuration.observe({ stage: bounded(stage, STAGES) }, seconds)),
    queueDepth: (n: number) => safe(() => queueDepth.set(n)),
    startsInFlight: (n: number) => safe(() => { startsInFlight.set(n); workspaces.set({ state: 'starting' }, n); }),
    running: (n: number) => safe(() => workspaces.set({ state: 'running' }, n)),
    routeCache: (result: 'hit' | 'miss' | 'stale') => safe(() => routeCache.inc({ result })),
    awsCall: (operation: string, outcome: string) => safe(() => awsCalls.inc({ operation: operation.slice(0, 40), outcome: bounded(outcome, new Set(['ok', 'throttled', 'error', 'timeout'])) })),
    storeError: () => safe(() => storeErrors.inc()),
    storeUp: (up: boolean) => safe(() => storeUp.set(up ? 1 : 0)),
    reaperStop: (reason: string) => safe(() => reaperStops.inc({ reason: bounded(reason, new Set(['idle', 'max_session', 'orphan'])) })),
    signInFailure: (reason: string) => safe(() => signInFailures.inc({ reason: bounded(reason, new Set(['no_session', 'expired', 'signature', 'algorithm', 'malformed', 'wrong_workspace', 'lifetime', 'replayed', 'rate_limited', 'origin'])) })),
    upstreamError: (code: string) => safe(() => upstreamErrors.inc({ code: bounded(code, new Set(['UPSTREAM_UNREACHABLE', 'UPSTREAM_TIMEOUT'])) })),
    rejectedRequest: (code: string) => safe(() => rejected.inc({ code: code.slice(0, 40) })),
    activityBuffered: (n: number) => safe(() => activityBuffered.set(n)),
    /** Runs before each scrape: values that are cheaper to read on demand than to maintain. */
    onCollect(fn: () => Promise<void>) {
      const g = new Gauge({ name: `${p}scrape_collect_errors`, help: 'Errors while collecting on-demand values at the last scrape.', registers: r,
        async collect() { try { await fn(); this.set(0); } catch { this.set(1); } } });
      return g;
    },
    close: () => registry.clear(),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
