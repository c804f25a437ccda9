// Test harness: a real gateway (in-process, ports 0) with the real local provisioner and a real
// store, plus raw HTTP helpers that can set any Host header (fetch cannot).
import { mkdtempSync, rmSync } from 'node:fs';
import http, { type IncomingHttpHeaders } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createGateway, type Gateway } from '../../gateway/app.js';
import { createAuth, sessionCookieName } from '../../gateway/auth.js';
import type { Clock } from '../../gateway/clock.js';
import { systemClock } from '../../gateway/clock.js';
import { loadConfig, type Config, type Env } from '../../gateway/config.js';
import { createLogger } from '../../gateway/log.js';
import { createMetrics, type Metrics } from '../../gateway/metrics.js';
import type { StateStore } from '../../gateway/store/contract.js';
import { createMemoryStore } from '../../gateway/store/memory.js';
import { createRedisStore } from '../../gateway/store/redis.js';
import type { Provisioner, StartRequest } from '../../provisioner/contract.js';
import { createLocalProvisioner } from '../../provisioner/local.js';

export const TEST_SECRET = 'test-secret-0123456789-0123456789-abcdef';
export const TEST_ADMIN_TOKEN = 'test-admin-token-0123456789';

export interface CountingProvisioner extends Provisioner {
  starts: StartRequest[];
  stops: string[];
}

/** Instruments a real provisioner with call counts (it still does all the work). */
export function counting(inner: Provisioner): CountingProvisioner {
  const starts: StartRequest[] = [];
  const stops: string[] = [];
  return {
    kind: inner.kind,
    starts,
    stops,
    start: (req) => { starts.push(req); return inner.start(req); },
    stop: (id, handle, reason) => { stops.push(id); return inner.stop(id, handle, reason); },
    describe: (id) => inner.describe(id),
    list: () => inner.list(),
    ...(inner.prepare ? { prepare: (id: string, signal?: AbortSignal) => inner.prepare!(id, signal) } : {}),
    close: () => inner.close(),
  };
}

export interface TestGateway {
  gateway: Gateway;
  config: Config;
  store: StateStore;
  provisioner: CountingProvisioner;
  metrics: Metrics;
  port: number;
  adminPort: number;
  logs: Array<Record<string, unknown>>;
  dataDir: string;
  cookie(id: string): Promise<string>;
  close(): Promise<void>;
}

export interface TestGatewayOptions {
  env?: Env;
  redisUrl?: string;
  store?: StateStore;
  provisioner?: Provisioner;
  clock?: Clock;
  dataDir?: string;
  /** false: log lines are parsed but not kept (a long soak would count them as the gateway's heap). */
  keepLogs?: boolean;
}

/** A session cookie for `id` minted by `gateway` itself, under the name its config reads. */
export async function gatewayCookie(gateway: Gateway, config: Config, id: string): Promise<string> {
  return `${sessionCookieName(config.publicScheme)}=${(await gateway.auth.createSession(id)).value}`;
}

export async function startTestGateway(opts: TestGatewayOptions = {}): Promise<TestGateway> {
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'wsgw-data-'));
  const config = loadConfig({
    GATEWAY_PORT: '0', ADMIN_PORT: '0', LOG_LEVEL: 'info', GATEWAY_SECRET: TEST_SECRET, ADMIN_TOKEN: TEST_ADMIN_TOKEN,
    LOCAL_WORKSPACE: 'demo', LOCAL_DATA_DIR: dataDir, DEMO_READY_DELAY: '0ms', REAPER: 'off', ...(opts.redisUrl ? { REDIS_URL: opts.redisUrl } : {}),
    ...opts.env,
  });
  const clock = opts.clock ?? systemClock;
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({ write(chunk, _enc, cb) { for (const line of chunk.toString().split('\n')) if (line) try { const parsed = JSON.parse(line) as Record<string, unknown>; if (opts.keepLogs !== false) logs.push(parsed); } catch { /* not json */ } cb(); } });
  const logger = createLogger(config.logLevel, sink);
  const metrics = createMetrics({ enabled: true, defaultMetrics: false });
  const store = opts.store ?? (config.redisUrl ? await createRedisStore({ url: config.redisUrl, prefix: config.redisPrefix, commandTimeoutMs: config.redisCommandTimeoutMs }) : createMemoryStore(clock));
  // Its workspaces' parent environment is what main.ts would have been started with: this process's,
  // plus the gateway's settings, GATEWAY_SECRET among them (which no workspace may inherit).
  const provisioner = counting(opts.provisioner ?? createLocalProvisioner({ workspace: config.local.workspace, dataDir, codeServerBin: config.local.codeServerBin, demoReadyDelayMs: config.local.demoReadyDelayMs, parentEnv: { ...process.env, ...config.env } }));
  const gateway = await createGateway({ config, store, provisioner, metrics, logger, clock });
  const { gatewayPort, adminPort } = await gateway.listen();
  return {
    gateway, config, store, provisioner, metrics, port: gatewayPort, adminPort, logs, dataDir,
    cookie: (id: string) => gatewayCookie(gateway, config, id),
    async close() {
      await gateway.close();
      await provisioner.close();
      if (!opts.store) await store.close();
      if (!opts.dataDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export interface RawResponse { status: number; headers: IncomingHttpHeaders; body: string }

/** One HTTP request to 127.0.0.1:port with whatever Host and headers the test wants. */
export function request(port: number, opts: { host?: string; path?: string; method?: string; headers?: Record<string, string | string[]>; body?: string | Buffer; agent?: http.Agent | false }): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1', port, method: opts.method ?? 'GET', path: opts.path ?? '/', agent: opts.agent ?? false,
      headers: { host: opts.host ?? 'ws-demo.localhost', ...(opts.body !== undefined ? { 'content-length': String(Buffer.byteLength(opts.body)) } : {}), ...opts.headers },
      setHost: false,
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** A session cookie for `id` that a gateway keyed with TEST_SECRET (spawnGateway's) reached over `publicScheme` accepts. */
export async function sessionCookie(id: string, publicScheme: 'http' | 'https' = 'http'): Promise<string> {
  const auth = createAuth({ secret: TEST_SECRET, sessionTtlMs: 3_600_000, loginTokenMaxTtlMs: 300_000, clock: systemClock });
  return `${sessionCookieName(publicScheme)}=${(await auth.createSession(id)).value}`;
}

/** A one-time sign-in link for `id`, asked of the admin API as the platform asks it. */
export async function loginUrl(adminPort: number, id: string, next?: string): Promise<string> {
  const r = await fetch(`http://127.0.0.1:${adminPort}/api/workspaces/${id}/login-url`, {
    method: 'POST', headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(next === undefined ? {} : { next }),
  });
  return ((await r.json()) as { url: string }).url;
}

export const NAVIGATE = { 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document', accept: 'text/html,application/xhtml+xml,*/*;q=0.8' };
export const XHR = { 'sec-fetch-mode': 'cors', 'sec-fetch-dest': 'empty', accept: 'application/json' };

/** Polls until fn() is truthy. For waiting on a process we do not own (no event to subscribe to). */
export async function until<T>(fn: () => Promise<T> | T, timeoutMs = 15_000, everyMs = 25): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Waits for the workspace to be running, using the gateway's own long-poll. */
export async function waitRunning(port: number, cookie: string, host = 'ws-demo.localhost', timeoutMs = 30_000): Promise<Record<string, unknown>> {
  const end = Date.now() + timeoutMs;
  let known = { state: '', generation: '', stage: '' };
  for (;;) {
    const r = await request(port, { host, path: `/__gateway/status?wait=1&state=${known.state}&generation=${known.generation}&stage=${known.stage}`, headers: { cookie } });
    const v = JSON.parse(r.body) as Record<string, unknown>;
    if (v.state === 'running' || v.state === 'failed') return v;
    if (Date.now() > end) throw new Error(`workspace not running: ${r.body}`);
    known = { state: String(v.state), generation: String(v.generation), stage: String(v.stage ?? '') };
  }
}
