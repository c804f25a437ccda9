// Prometheus metrics (issue 6): one registry per gateway instance, made by a factory. Every label
// set is bounded (no workspace id, path or address ever becomes a label: values outside a known set
// collapse into "other"), and recording never throws and never does I/O. The only I/O is at scrape
// time (store ping + running count), with its own deadline, never on a proxied request.
// Naming follows https://prometheus.io/docs/practices/naming/ (one prefix, base units, _total).
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { START_STAGES, type StartFailureCode } from '../provisioner/contract.js';
import { ERROR_CATALOGUE } from './errors.js';
import { WORKSPACE_STATES, type StateStore } from './store/contract.js';
import type { IdentityReason } from './workspace-proof.js';

export const METRIC_PREFIX = 'wsgw_';
/** Warm proxy latency: from 100 µs (loopback) to seconds (a slow upstream). */
const LATENCY_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** Cold starts: a local demo workspace is ready in well under a second, a Fargate task in 30-120 s. */
const START_BUCKETS = [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300];

const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx'] as const;
export type StatusClass = (typeof STATUS_CLASSES)[number];
/** 0 for 1xx … 4 for 5xx; anything outside 100-599 counts with the nearest class. */
const statusClassIndex = (status: number) => Math.min(4, Math.max(0, Math.floor(status / 100) - 1));
export const statusClass = (status: number): StatusClass => STATUS_CLASSES[statusClassIndex(status)];

/** wsgw_proxy_requests_total's series, in the order proxiedIndex numbers them. */
const PROXIED_SERIES = (['web', 'ws'] as const).flatMap((kind) => STATUS_CLASSES.map((status_class) => ({ kind, status_class })));
const proxiedIndex = (kind: 'web' | 'ws', status: number) => (kind === 'ws' ? STATUS_CLASSES.length : 0) + statusClassIndex(status);
type RouteResult = 'hit' | 'miss' | 'stale';
const ROUTE_RESULTS: readonly RouteResult[] = ['hit', 'miss', 'stale'];

/**
 * A histogram without labels, observed on every warm request: prom-client's observe() validated and
 * hashed labels on each call (3.5 k of a warm request's 83 k instructions, bench/instructions.ts).
 * Counts go to a typed array; the registry exposes them as it does its own histograms (cumulative
 * `_bucket` series by `le`, then `_sum` and `_count`).
 */
function createRequestHistogram(name: string, help: string, buckets: readonly number[], registry: Registry) {
  const counts = new Float64Array(buckets.length + 1);
  let sum = 0;
  const exposition = () => {
    let cumulative = 0;
    const values: Array<{ labels: Record<string, string | number>; value: number; metricName: string }> = buckets.map((le, i) => ({ labels: { le }, value: (cumulative += counts[i]), metricName: `${name}_bucket` }));
    const count = cumulative + counts[buckets.length];
    values.push({ labels: { le: '+Inf' }, value: count, metricName: `${name}_bucket` }, { labels: {}, value: sum, metricName: `${name}_sum` }, { labels: {}, value: count, metricName: `${name}_count` });
    return { name, help, type: 'histogram', aggregator: 'sum', values };
  };
  // The registry reads a metric through get() (and reset() on registry.resetMetrics()); nothing else.
  const metric = { name, help, type: 'histogram', aggregator: 'sum', get: async () => exposition(), reset: () => { counts.fill(0); sum = 0; } };
  registry.registerMetric(metric as unknown as Histogram);
  return {
    observe(value: number): void {
      if (!Number.isFinite(value)) return;
      let i = 0;
      while (i < buckets.length && value > buckets[i]) i++;
      counts[i]++;
      sum += value;
    },
  };
}

/** Counts kept since the last scrape, handed to `add` (series index, count) and zeroed. */
function foldCounts(counts: Float64Array, add: (i: number, n: number) => void): void {
  for (let i = 0; i < counts.length; i++) {
    const n = counts[i];
    if (n === 0) continue;
    counts[i] = 0;
    add(i, n);
  }
}

/** The AWS operations the ECS provisioner calls (provisioner/ecs*.ts); anything else is "other". */
export const AWS_OPERATIONS: ReadonlySet<string> = new Set([
  'RunTask', 'StopTask', 'DescribeTasks', 'ListTasks', 'DescribeTaskDefinition', 'RegisterTaskDefinition',
  'CreateAccessPoint', 'DescribeAccessPoints', 'RegisterInstance', 'DeregisterInstance', 'GetInstance', 'ListInstances',
]);
const AWS_OUTCOMES: ReadonlySet<string> = new Set(['ok', 'throttled', 'error', 'timeout']);
const START_FAILURE_CODES: ReadonlySet<StartFailureCode | string> = new Set<StartFailureCode>(['START_DEADLINE', 'TASK_STOPPED', 'NO_CAPACITY', 'BACKEND_UNAVAILABLE', 'BAD_CONFIG', 'ABORTED']);
const STAGES: ReadonlySet<string> = new Set(START_STAGES);
const ERROR_CODES: ReadonlySet<string> = new Set(Object.keys(ERROR_CATALOGUE));
const WORKSPACE_STATE_SET: ReadonlySet<string> = new Set(WORKSPACE_STATES);
const REAPER_REASONS: ReadonlySet<string> = new Set(['idle', 'max_session', 'orphan']);
const SIGNIN_REASONS: ReadonlySet<string> = new Set(['no_session', 'expired', 'signature', 'algorithm', 'malformed', 'wrong_workspace', 'lifetime', 'replayed', 'rate_limited', 'origin', 'revoked', 'store_reset']);
const UPSTREAM_CODES: ReadonlySet<string> = new Set(['UPSTREAM_UNREACHABLE', 'UPSTREAM_TIMEOUT', 'UPSTREAM_BAD_RESPONSE']);
const IDENTITY_REASONS: ReadonlySet<string> = new Set<IdentityReason>(['misdirected', 'unproven']);
const bounded = (v: string | undefined, allowed: ReadonlySet<string>) => (v !== undefined && allowed.has(v) ? v : 'other');

/**
 * prom-client names these gauges `*_total`, which promtool (and the naming guide) reserve for
 * counters; the same numbers are exported per type as nodejs_active_handles etc., so drop them.
 */
const NON_CONFORMING_DEFAULTS = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

export interface MetricsOptions {
  /** Off for the overhead benchmark (issue 6: with and without metrics in the same run). */
  enabled: boolean;
  /** Node's default process metrics (process_*, nodejs_*). */
  defaultMetrics: boolean;
}

/** What a scrape reads from the store: one ping and the per-state counts, each with a deadline. */
export type StoreProbe = Pick<StateStore, 'ping' | 'countByState'>;

function withDeadline<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms); });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

export function createMetrics(opts: MetricsOptions = { enabled: true, defaultMetrics: true }) {
  const registry = new Registry();
  if (opts.enabled && opts.defaultMetrics) {
    collectDefaultMetrics({ register: registry });
    for (const name of NON_CONFORMING_DEFAULTS) registry.removeSingleMetric(name);
  }
  const p = METRIC_PREFIX;
  const r = [registry];
  let storeProbe: { store: StoreProbe; timeoutMs: number } | undefined;
  const extraCollectors: Array<() => Promise<void>> = [];

  // Per-request counts are kept as plain numbers and added to their series when a scrape reads them
  // (collect): an inc() per request cost about 1 µs each in the gateway's own profile, where the
  // same inc() alone in a loop costs a tenth of that (bench/, scenario 6).
  const proxiedCounts = new Float64Array(PROXIED_SERIES.length);
  const proxied = new Counter({
    name: `${p}proxy_requests_total`, help: 'Requests forwarded to a workspace, by kind (web, ws) and status class of the answer (502/504 when the workspace failed).', labelNames: ['kind', 'status_class'] as const, registers: r,
    collect() { foldCounts(proxiedCounts, (i, n) => this.inc(PROXIED_SERIES[i], n)); },
  });
  const latency = createRequestHistogram(`${p}proxy_request_duration_seconds`, 'Warm proxied HTTP requests: time from request to response headers, gateway and workspace together.', LATENCY_BUCKETS, registry);
  const wsOpen = new Gauge({ name: `${p}websockets_open`, help: 'WebSockets this instance is proxying now.', registers: r });
  const coldStarts = new Counter({ name: `${p}cold_starts_total`, help: 'Workspace starts driven by this instance, by outcome (ready, failed, aborted: shutdown or a lost lock, left to another replica).', labelNames: ['outcome'] as const, registers: r });
  const startFailures = new Counter({ name: `${p}start_failures_total`, help: 'Failed workspace starts, by failure code and the stage the start had reached.', labelNames: ['code', 'stage'] as const, registers: r });
  const coldStartDuration = new Histogram({ name: `${p}cold_start_duration_seconds`, help: 'Successful cold starts: from the first page load (start requested) to ready.', buckets: START_BUCKETS, registers: r });
  const stageDuration = new Histogram({ name: `${p}start_stage_duration_seconds`, help: 'Time a start spent in each stage (queued, provisioning, pending, running, probing).', labelNames: ['stage'] as const, buckets: START_BUCKETS, registers: r });
  const queueDepth = new Gauge({ name: `${p}start_queue_depth`, help: 'Starts waiting for admission (AWS rate limits) on this instance.', registers: r });
  const startsInFlight = new Gauge({ name: `${p}starts_in_flight`, help: 'Starts this instance is driving now.', registers: r });
  // Scrape-time reads (store ping, running count, onCollect callbacks) run once per scrape, shared
  // by the collectors below, so every value in one exposition comes from the same round.
  let scrapeRound: Promise<{ up?: boolean; states?: Record<string, number>; errors: number }> | undefined;
  const readOnScrape = () => (scrapeRound ??= (async () => {
    const probe = storeProbe;
    let errors = 0;
    const attempt = async <T>(fn: () => Promise<T>): Promise<T | undefined> => { try { return await fn(); } catch { errors++; return undefined; } };
    const [up, states] = await Promise.all([
      probe ? withDeadline(probe.store.ping(), probe.timeoutMs).catch(() => false) : undefined,
      probe ? attempt(() => withDeadline(probe.store.countByState(), probe.timeoutMs)) : undefined,
      ...extraCollectors.map((fn) => attempt(fn)),
    ]);
    return { up: up as boolean | undefined, states: states as Record<string, number> | undefined, errors };
  })().finally(() => { scrapeRound = undefined; }));
  const collectErrors = new Counter({
    name: `${p}scrape_collect_errors_total`, help: 'Values that could not be read from the store at scrape time (the last value is kept).', registers: r,
    async collect() { const { errors } = await readOnScrape(); if (errors) this.inc(errors); },
  });
  // Read at scrape time: the count lives in the store (all replicas), so aggregate with max(), not sum().
  const workspaces = new Gauge({
    name: `${p}workspaces`, help: 'Workspaces by state, as the shared store counts them (the same on every replica: aggregate with max).', labelNames: ['state'] as const, registers: r,
    async collect() {
      const { states } = await readOnScrape();
      if (states) for (const [state, n] of Object.entries(states)) if (WORKSPACE_STATE_SET.has(state)) this.set({ state }, n);
    },
  });
  const routeCacheCounts = new Float64Array(ROUTE_RESULTS.length);
  const routeCache = new Counter({
    name: `${p}route_cache_lookups_total`, help: 'Route cache lookups by result (hit, miss, stale: served and refreshed in the background).', labelNames: ['result'] as const, registers: r,
    collect() { foldCounts(routeCacheCounts, (i, n) => this.inc({ result: ROUTE_RESULTS[i] }, n)); },
  });
  const awsCalls = new Counter({ name: `${p}aws_calls_total`, help: 'AWS API call attempts by operation and outcome (ok, throttled, error, timeout).', labelNames: ['operation', 'outcome'] as const, registers: r });
  const storeErrors = new Counter({ name: `${p}store_errors_total`, help: 'State store (Redis) operations that failed.', registers: r });
  const storeUp = new Gauge({
    name: `${p}store_up`, help: '1 when the state store answered its last check (a ping at scrape time, or the last activity flush), else 0.', registers: r,
    async collect() { const { up } = await readOnScrape(); if (up !== undefined) this.set(up ? 1 : 0); },
  });
  const reaperStops = new Counter({ name: `${p}reaper_stops_total`, help: 'Workspaces stopped by the reaper, by reason (idle, max_session).', labelNames: ['reason'] as const, registers: r });
  const signInFailures = new Counter({ name: `${p}signin_failures_total`, help: 'Rejected sign-ins and requests without a valid session, by reason.', labelNames: ['reason'] as const, registers: r });
  const upstreamErrors = new Counter({ name: `${p}upstream_errors_total`, help: 'Workspaces that did not answer a proxied request, by error code.', labelNames: ['code'] as const, registers: r });
  const identityFailures = new Counter({
    name: `${p}workspace_identity_failures_total`,
    help: 'Requests not sent to a route\'s address because the server there is not the workspace: misdirected (it refused the request as meant for another workspace), unproven (no valid proof on a new connection). A stale route to a reused address.',
    labelNames: ['reason'] as const, registers: r,
  });
  const rejected = new Counter({ name: `${p}rejected_requests_total`, help: 'Requests the gateway answered itself with an error, by error code (see gateway/errors.ts).', labelNames: ['code'] as const, registers: r });
  const activityBuffered = new Gauge({ name: `${p}activity_buffered`, help: 'Workspaces with activity not yet written to the store.', registers: r });

  // Every known series of each counter exists at 0 from the start: increase() and rate() take a
  // series' first sample as its start, so a series born at 1 hid the first BAD_CONFIG, NO_CAPACITY or
  // INTERNAL of a replica from the alert rules (deploy/prometheus/, whose tests start at 0 too).
  if (opts.enabled) {
    const product = <A extends string, B extends string>(a: A, as: Iterable<string>, b: B, bs: Iterable<string>) =>
      [...as].flatMap((x) => [...bs].map((y) => ({ [a]: x, [b]: y }) as Record<A | B, string>));
    for (const labels of PROXIED_SERIES) proxied.inc(labels, 0);
    for (const outcome of ['ready', 'failed', 'aborted']) coldStarts.inc({ outcome }, 0);
    for (const labels of product('code', START_FAILURE_CODES, 'stage', STAGES)) startFailures.inc(labels, 0);
    for (const result of ROUTE_RESULTS) routeCache.inc({ result }, 0);
    for (const labels of product('operation', AWS_OPERATIONS, 'outcome', AWS_OUTCOMES)) awsCalls.inc(labels, 0);
    for (const reason of REAPER_REASONS) reaperStops.inc({ reason }, 0);
    for (const reason of SIGNIN_REASONS) signInFailures.inc({ reason }, 0);
    for (const code of UPSTREAM_CODES) upstreamErrors.inc({ code }, 0);
    for (const reason of IDENTITY_REASONS) identityFailures.inc({ reason }, 0);
    for (const code of ERROR_CODES) rejected.inc({ code }, 0);
  }

  const safe = (fn: () => void) => { if (!opts.enabled) return; try { fn(); } catch { /* a metric never breaks a request */ } };

  return {
    registry,
    enabled: opts.enabled,
    proxied: (kind: 'web' | 'ws', status: number) => { if (opts.enabled) proxiedCounts[proxiedIndex(kind, status)]++; },
    warmLatency: (seconds: number) => { if (opts.enabled) latency.observe(seconds); },
    wsOpened: () => safe(() => wsOpen.inc()),
    wsClosed: () => safe(() => wsOpen.dec()),
    /** `failure` (failed starts only): the StartFailure code and the stage reached, for "where do starts fail". */
    coldStart: (outcome: 'ready' | 'failed' | 'aborted', seconds?: number, failure?: { code: string; stage?: string }) => safe(() => {
      coldStarts.inc({ outcome });
      if (outcome === 'ready' && seconds !== undefined) coldStartDuration.observe(seconds);
      if (outcome === 'failed') startFailures.inc({ code: bounded(failure?.code, START_FAILURE_CODES), stage: bounded(failure?.stage ?? 'queued', STAGES) });
    }),
    // "ready" ends a start; the instant between the provisioner saying so and the gateway recording it is not a stage.
    stage: (stage: string, seconds: number) => safe(() => { if (stage !== 'ready') stageDuration.observe({ stage: bounded(stage, STAGES) }, seconds); }),
    queueDepth: (n: number) => safe(() => queueDepth.set(n)),
    startsInFlight: (n: number) => safe(() => startsInFlight.set(n)),
    routeCache: (result: RouteResult) => { if (opts.enabled) routeCacheCounts[ROUTE_RESULTS.indexOf(result)]++; },
    awsCall: (operation: string, outcome: string) => safe(() => awsCalls.inc({ operation: bounded(operation, AWS_OPERATIONS), outcome: bounded(outcome, AWS_OUTCOMES) })),
    storeError: () => safe(() => storeErrors.inc()),
    storeUp: (up: boolean) => safe(() => storeUp.set(up ? 1 : 0)),
    reaperStop: (reason: string) => safe(() => reaperStops.inc({ reason: bounded(reason, REAPER_REASONS) })),
    signInFailure: (reason: string) => safe(() => signInFailures.inc({ reason: bounded(reason, SIGNIN_REASONS) })),
    upstreamError: (code: string) => safe(() => upstreamErrors.inc({ code: bounded(code, UPSTREAM_CODES) })),
    identityFailure: (reason: IdentityReason) => safe(() => identityFailures.inc({ reason: bounded(reason, IDENTITY_REASONS) })),
    rejectedRequest: (code: string) => safe(() => rejected.inc({ code: bounded(code, ERROR_CODES) })),
    activityBuffered: (n: number) => safe(() => activityBuffered.set(n)),
    /**
     * Keeps wsgw_store_up and wsgw_workspaces{state="running"} current: each scrape pings the store
     * and counts running workspaces, each bounded by `timeoutMs` so a hung Redis cannot hang the
     * scrape. Nothing is added to the request path.
     */
    watchStore(store: StoreProbe, timeoutMs = 2000) {
      if (opts.enabled) storeProbe = { store, timeoutMs };
    },
    /** Runs before each scrape: values that are cheaper to read on demand than to maintain. */
    onCollect(fn: () => Promise<void>) {
      if (opts.enabled) extraCollectors.push(fn);
    },
    close: () => { storeProbe = undefined; registry.clear(); },
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
