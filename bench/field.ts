// The field of issue 7, started by the benchmark itself on loopback: the upstream, direct access to
// it, nginx (one worker, keep-alive upstream pool, routing by Host), configurable-http-proxy (host
// routing) and the gateway exactly as deployed (dist/gateway/main.js, Redis store, metrics on, a warm
// route in the store, a minted session cookie). Every process is started through lib.start, so it is
// killed at the end whatever happens.
import { mkdirSync, mkdtempSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import { spawnSync } from 'node:child_process';
import { createAuth, sessionCookieName } from '../gateway/auth.js';
import { systemClock } from '../gateway/clock.js';
import { createRedisStore } from '../gateway/store/redis.js';
import { createIdentityKeys } from '../gateway/workspace-proof.js';
import type { TestRedis } from '../test/helpers/redis.js';
import { PROXY_CPU, deployedNodeArgs, freePort, sleep, start, startBenchRedis, stop, stopAll, waitLine } from './lib.js';
import http from 'node:http';

const here = dirname(fileURLToPath(import.meta.url));
/** dist/ root (this file is dist/bench/field.js). */
const dist = resolve(here, '..');
const root = resolve(dist, '..');
export const WORKSPACE = 'bench';
const GENERATION = 1;
export const HOST = `ws-${WORKSPACE}.localhost`;
const SECRET = 'bench-secret-bench-secret-bench-secret-0123456789';

export interface System {
  name: string;
  port: number;
  /** Host header the system routes by. */
  host: string;
  headers: Record<string, string>;
  /** The process whose CPU and memory are the proxy's (for direct: the upstream's). */
  pid: number;
  close(): Promise<void>;
}

export interface Upstream { port: number; pid: number; close(): Promise<void> }

export function workDir(): string { return mkdtempSync(join(tmpdir(), 'wsgw-bench-')); }

export async function startUpstream(): Promise<Upstream> {
  // Not pinned: it serves every system alike, and pinning it beside either side would skew one of them.
  // It answers the gateway's challenge as a workspace does (the route requires proof, as every local
  // and ECS route does): with the key the gateway derives for the route's start.
  const child = start(process.execPath, [join(dist, 'bench', 'upstream.js')], {
    env: { ...process.env, WORKSPACE_ID: WORKSPACE, WORKSPACE_KEY: createIdentityKeys(SECRET)(WORKSPACE, GENERATION) },
  });
  child.stderr!.pipe(process.stderr);
  const port = await waitLine(child, (l) => { try { return (JSON.parse(l) as { port?: number }).port; } catch { return undefined; } }, 10_000, 'upstream');
  return { port, pid: child.pid!, close: () => stop(child) };
}

export function direct(up: Upstream, cookie: string): System {
  return { name: 'direct', port: up.port, host: HOST, headers: { cookie }, pid: up.pid, close: async () => {} };
}

export function nginxVersion(): string | undefined {
  const r = spawnSync('nginx', ['-v']);
  if (r.error) return undefined;
  return r.stderr.toString().trim().replace(/^nginx version: /, '');
}

export async function startNginx(dir: string, up: Upstream, cookie: string): Promise<System> {
  const port = await freePort();
  const d = join(dir, 'nginx');
  spawnSync('mkdir', ['-p', d]);
  // One worker, a keep-alive pool to the upstream, routing by Host, WebSocket upgrade (nginx docs:
  // ngx_http_upstream_module "keepalive", "WebSocket proxying"). worker_connections counts both sides
  // of a pair, and once fewer than a sixteenth are free nginx closes connections still waiting for a
  // request ("worker_connections are not enough, reusing connections"): at 19,000 it held 8,906 idle
  // WebSockets of 9,800. The open-files limit, not this, is what caps it now.
  const conf = `
worker_processes 1;
daemon off;
pid ${d}/nginx.pid;
error_log ${d}/error.log warn;
worker_rlimit_nofile 20000;
events { worker_connections 21500; multi_accept on; }
http {
  access_log off;
  client_body_temp_path ${d}/body; proxy_temp_path ${d}/proxy; fastcgi_temp_path ${d}/fcgi; uwsgi_temp_path ${d}/uwsgi; scgi_temp_path ${d}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  upstream workspace { server 127.0.0.1:${up.port}; keepalive 64; keepalive_requests 1000000; }
  map $http_upgrade $connection_upgrade { default upgrade; '' ''; }
  server { listen 127.0.0.1:${port} default_server backlog=4096; server_name _; return 404; }
  server {
    listen 127.0.0.1:${port};
    server_name ${HOST};
    location / {
      proxy_pass http://workspace;
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
    }
  }
}`;
  writeFileSync(join(d, 'nginx.conf'), conf);
  const child = start('nginx', ['-c', join(d, 'nginx.conf'), '-p', d, '-e', join(d, 'error.log'), '-g', 'user root;'], { cpu: PROXY_CPU, logFile: join(d, 'stdout.log') });
  await waitHttp(port, HOST, { cookie }, child, 'nginx');
  return { name: 'nginx', port, host: HOST, headers: { cookie }, pid: child.pid!, close: () => stop(child) };
}

export function chpVersion(): string | undefined {
  try { return (JSON.parse(readFileSync(join(root, 'node_modules', 'configurable-http-proxy', 'package.json'), 'utf8')) as { version: string }).version; } catch { return undefined; }
}

export async function startChp(dir: string, up: Upstream, cookie: string): Promise<System> {
  const bin = join(root, 'node_modules', 'configurable-http-proxy', 'bin', 'configurable-http-proxy');
  if (!existsSync(bin)) throw new Error('configurable-http-proxy is not installed (npm ci installs it as a devDependency)');
  const [port, apiPort] = [await freePort(), await freePort()];
  const token = 'bench-chp-token';
  const child = start(process.execPath, [bin, '--ip', '127.0.0.1', '--port', String(port), '--api-ip', '127.0.0.1', '--api-port', String(apiPort),
    '--host-routing', '--log-level', 'warn'], { cpu: PROXY_CPU, env: { ...process.env, CONFIGPROXY_AUTH_TOKEN: token }, logFile: join(dir, 'chp.log') });
  await waitHttp(apiPort, '127.0.0.1', { authorization: `token ${token}` }, child, 'configurable-http-proxy API', '/api/routes');
  await new Promise<void>((res, rej) => {
    const body = JSON.stringify({ target: `http://127.0.0.1:${up.port}` });
    const req = http.request({ host: '127.0.0.1', port: apiPort, method: 'POST', path: `/api/routes/${HOST}`, headers: { authorization: `token ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (r) => {
      r.resume();
      if (r.statusCode === 201 || r.statusCode === 200) res(); else rej(new Error(`configurable-http-proxy route: HTTP ${r.statusCode}`));
    });
    req.once('error', rej);
    req.end(body);
  });
  await waitHttp(port, HOST, { cookie }, child, 'configurable-http-proxy');
  return { name: 'chp', port, host: HOST, headers: { cookie }, pid: child.pid!, close: () => stop(child) };
}

/** How long a system may take to say it listens: under a launcher (valgrind), far longer. */
const startupMs = (launcher: string[], plain: number) => (launcher.length ? 120_000 : plain);

/**
 * A proxy library's own floor (bench/library-proxy.ts), so the choice of library rests on this run's
 * figures; `tcp-relay` (named node-relay) is Node's own, with no HTTP at all.
 */
export async function startLibraryProxy(up: Upstream, cookie: string, engine: 'undici' | 'http-proxy-3' | 'tcp-relay', nodeArgs: string[] = [], launcher: string[] = []): Promise<System> {
  const name = engine === 'tcp-relay' ? 'node-relay' : `lib-${engine}`;
  const [cmd, ...args] = [...launcher, process.execPath, ...nodeArgs, join(dist, 'bench', 'library-proxy.js'), engine, String(up.port)];
  const child = start(cmd, args, { cpu: PROXY_CPU });
  child.stderr!.on('data', (d) => process.stderr.write(`[${name}] ${d}`));
  const port = await waitLine(child, (l) => { const m = /^listening (\d+)$/.exec(l); return m ? Number(m[1]) : undefined; }, startupMs(launcher, 10_000), name);
  await waitHttp(port, HOST, { cookie }, child, name);
  return { name, port, host: HOST, headers: { cookie }, pid: child.pid!, close: () => stop(child) };
}

export interface GatewayField { redis: TestRedis; cookie: string; dataDir: string; close(): Promise<void> }

/** One Redis for every gateway variant; the warm route and the cookie are shared (as replicas share them). */
export async function startGatewayState(up: Upstream, dir: string): Promise<GatewayField> {
  const redis = await startBenchRedis();
  const store = await createRedisStore({ url: redis.url, prefix: 'wsgw:', commandTimeoutMs: 1000 });
  const now = Date.now();
  const endpoint = { host: '127.0.0.1', port: up.port, proves: true as const };
  await store.putWorkspace({ id: WORKSPACE, state: 'running', generation: GENERATION, since: now, endpoint, startedAt: now });
  await store.close();
  // The local provisioner's run.json (its stand-in for Cloud Map) names the upstream as this workspace's
  // process, so a recheck after an upstream error finds it alive, as DescribeTasks would in production.
  const dataDir = join(dir, 'workspaces');
  mkdirSync(join(dataDir, WORKSPACE), { recursive: true });
  writeFileSync(join(dataDir, WORKSPACE, 'run.json'), JSON.stringify({ workspaceId: WORKSPACE, generation: GENERATION, endpoint, handle: String(up.pid), startedAt: now }));
  const auth = createAuth({ secret: SECRET, sessionTtlMs: 12 * 3_600_000, loginTokenMaxTtlMs: 300_000, clock: systemClock });
  const session = await auth.createSession(WORKSPACE);
  return { redis, cookie: `${sessionCookieName('http')}=${session.value}`, dataDir, close: () => redis.kill() };
}

/**
 * A measuring command's frame (instructions.ts, allocations.ts, legs.ts): an upstream and the gateway's
 * state for `body`, then every process stopped and the process ended; a failure is printed and exits 1.
 */
export async function benchCommand(body: (up: Upstream, state: GatewayField, dir: string) => Promise<void>): Promise<never> {
  let state: GatewayField | undefined;
  try {
    const dir = workDir();
    const up = await startUpstream();
    state = await startGatewayState(up, dir);
    await body(up, state, dir);
  } catch (err) {
    process.stderr.write(`${(err as Error).stack}\n`);
    process.exitCode = 1;
  } finally {
    await state?.close();
    await stopAll();
  }
  process.exit();
}

/**
 * `node dist/gateway/main.js`, with the image's node flags (deployedNodeArgs), and the production settings that matter: Redis store, metrics and activity
 * tracking on unless the variant turns them off (scenario 6). IDLE_TIMEOUT is raised only so the
 * reaper cannot stop the benchmark's workspace during a long --full run; it is not on the request path.
 * `launcher`: a command the gateway runs under (bench/instructions.ts: valgrind). `entry`: another
 * checkout's build instead of this one's (bench/compare.ts).
 */
export async function startGateway(state: GatewayField, name: string, env: Record<string, string> = {}, nodeArgs: string[] = [], launcher: string[] = [], entry = join(dist, 'gateway', 'main.js')): Promise<System> {
  const [cmd, ...args] = [...launcher, process.execPath, ...deployedNodeArgs(), ...nodeArgs, entry];
  const child = start(cmd, args, {
    cpu: PROXY_CPU,
    env: {
      PATH: process.env.PATH, HOME: process.env.HOME, NODE_ENV: 'production',
      GATEWAY_PORT: '0', ADMIN_PORT: '0', BASE_DOMAIN: 'localhost', REDIS_URL: state.redis.url, GATEWAY_SECRET: SECRET,
      ADMIN_TOKEN: 'bench-admin-token-0123456789', PROVISIONER: 'local', LOCAL_WORKSPACE: 'demo', LOCAL_DATA_DIR: state.dataDir,
      IDLE_TIMEOUT: '12h', METRICS: 'on', ACTIVITY_TRACKING: 'on', LOG_LEVEL: 'info', ...env,
    },
  });
  child.stderr!.on('data', (d) => process.stderr.write(`[${name}] ${d}`));
  const port = await waitLine(child, (l) => {
    try { const j = JSON.parse(l) as { event?: string; gatewayPort?: number }; return j.event === 'listening' ? j.gatewayPort : undefined; } catch { return undefined; }
  }, startupMs(launcher, 20_000), name);
  // Keep draining the log so a full pipe never stalls the gateway.
  child.stdout!.on('data', () => {});
  await waitHttp(port, HOST, { cookie: state.cookie }, child, name);
  return { name, port, host: HOST, headers: { cookie: state.cookie }, pid: child.pid!, close: () => stop(child) };
}

/** Waits until the system answers 200 for the benchmark's request, so nothing is measured half-started or misrouted. */
export async function waitHttp(port: number, host: string, headers: Record<string, string>, child: ChildProcess, what: string, path = '/'): Promise<void> {
  const deadline = Date.now() + 20_000;
  let last = '';
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode}`);
    const status = await new Promise<number>((res) => {
      const req = http.request({ host: '127.0.0.1', port, path, headers: { host, ...headers }, agent: false }, (r) => { r.resume(); r.once('end', () => res(r.statusCode ?? 0)); });
      req.once('error', (e) => { last = e.message; res(0); });
      req.setTimeout(2000, () => req.destroy());
      req.end();
    });
    if (status === 200) return;
    if (status) last = `HTTP ${status}`;
    await sleep(100);
  }
  throw new Error(`${what} did not answer 200 on ${host}${path} within 20 s (${last})`);
}

/**
 * The field both load scenarios measure: direct, nginx, configurable-http-proxy and the gateway (plus
 * gateway variants with other settings). A peer that cannot start is noted and left out, never fatal.
 */
export async function startField(dir: string, notes: string[], log: (s: string) => void, variants: Array<[name: string, env: Record<string, string>]> = []) {
  const up = await startUpstream();
  const state = await startGatewayState(up, dir);
  const field: System[] = [direct(up, state.cookie)];
  const tryStart = async (what: string, f: () => Promise<System>) => {
    try { field.push(await f()); } catch (err) { notes.push(`${what} not run: ${(err as Error).message}`); log(`  ${what} not run: ${(err as Error).message}`); }
  };
  await tryStart('nginx', () => startNginx(dir, up, state.cookie));
  await tryStart('configurable-http-proxy', () => startChp(dir, up, state.cookie));
  await tryStart('gateway', () => startGateway(state, 'gateway'));
  for (const [name, env] of variants) await tryStart(name, () => startGateway(state, name, env));
  return { up, state, field };
}
