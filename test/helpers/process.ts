// A gateway as its own process (`node dist/gateway/main.js`), exactly as an operator runs it, with
// its JSON log lines captured so tests can count events such as start.requested.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dockerEnv } from './image.js';
import { freePort } from './redis.js';
import { TEST_ADMIN_TOKEN, TEST_SECRET } from './gateway.js';

export const MAIN = fileURLToPath(new URL('../../gateway/main.js', import.meta.url));
export const REAPER_MAIN = fileURLToPath(new URL('../../reaper/main.js', import.meta.url));

export interface GatewayProcess {
  child: ChildProcess;
  /** The container's name when run from the image. */
  container?: string;
  port: number;
  adminPort: number;
  logs: Array<Record<string, unknown>>;
  /** Resolves with the first log line matching. */
  waitFor(pred: (l: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  exited: Promise<number | null>;
  /** The last 4,000 characters the process wrote to stderr. */
  stderr(): string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/**
 * `image`: run the gateway's Docker image instead, as ECS runs it (its own entrypoint and command, the
 * given settings only, on the host's network so it reaches the test's Redis, fake AWS and tasks on
 * loopback; `dockerArgs` before the image); `stop` then signals the container's PID 1 (`docker kill
 * --signal`), as `docker stop` and ECS do.
 */
export async function spawnGateway(env: Record<string, string>, opts: { image?: string; dockerArgs?: string[] } = {}): Promise<GatewayProcess> {
  // A process binds port 0 and names its ports in its `listening` line: a port picked free beforehand
  // can be taken by another test file's connection before the gateway binds it (one CI run's replica
  // never came up). The image keeps fixed ports: its HEALTHCHECK reads ADMIN_PORT.
  const [port, adminPort] = opts.image ? [await freePort(), await freePort()] : [0, 0];
  const settings: Record<string, string> = {
    GATEWAY_PORT: String(port), ADMIN_PORT: String(adminPort),
    GATEWAY_SECRET: TEST_SECRET, ADMIN_TOKEN: TEST_ADMIN_TOKEN, LOCAL_WORKSPACE: 'demo', DEMO_READY_DELAY: '0ms', LOG_LEVEL: 'info', ...env,
  };
  const container = opts.image ? `wsgw-test-${process.pid}-${port}` : undefined;
  const child = opts.image
    ? spawn('docker', ['run', '--rm', '--name', container!, '--network', 'host',
      ...(opts.dockerArgs ?? []), ...dockerEnv(settings), opts.image], { stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn(process.execPath, [MAIN], { env: { PATH: process.env.PATH, HOME: process.env.HOME, ...settings }, stdio: ['ignore', 'pipe', 'pipe'] });
  const { logs, waitFor, exited, stderr } = captureLogs(child);
  const listening = await waitFor((l) => l.event === 'listening');
  return {
    child, container, port: Number(listening.gatewayPort), adminPort: Number(listening.adminPort), logs, waitFor, exited,
    stderr,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      if (container) spawn('docker', ['kill', '--signal', signal, container], { stdio: 'ignore' });
      else child.kill(signal);
      return exited;
    },
  };
}

export interface ReaperProcess {
  child: ChildProcess;
  logs: Array<Record<string, unknown>>;
  waitFor(pred: (l: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  exited: Promise<number | null>;
  stderr(): string;
}

/** The standalone reaper (`node dist/reaper/main.js`) in its loop, once it has logged `reaper.started`. */
export async function spawnReaper(env: Record<string, string>): Promise<ReaperProcess> {
  const settings: Record<string, string> = { GATEWAY_SECRET: TEST_SECRET, ADMIN_TOKEN: TEST_ADMIN_TOKEN, LOG_LEVEL: 'info', ...env };
  const child = spawn(process.execPath, [REAPER_MAIN], { env: { PATH: process.env.PATH, HOME: process.env.HOME, ...settings }, stdio: ['ignore', 'pipe', 'pipe'] });
  const captured = captureLogs(child);
  await captured.waitFor((l) => l.event === 'reaper.started');
  return { child, ...captured };
}

/** A child's JSON log lines (stdout), its stderr tail and its exit, for tests that wait on log events. */
function captureLogs(child: ChildProcess) {
  const logs: Array<Record<string, unknown>> = [];
  const watchers = new Set<(l: Record<string, unknown>) => void>();
  let buf = '';
  child.stdout!.on('data', (c: Buffer) => {
    buf += c.toString();
    let i;
    while ((i = buf.indexOf('\n')) !== -1) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        const l = JSON.parse(line) as Record<string, unknown>;
        logs.push(l);
        for (const w of watchers) w(l);
      } catch { /* the printed banner */ }
    }
  });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => { stderr = (stderr + c.toString()).slice(-4000); });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const waitFor = (pred: (l: Record<string, unknown>) => boolean, timeoutMs = 20_000) => new Promise<Record<string, unknown>>((resolve, reject) => {
    const hit = logs.find(pred);
    if (hit) { resolve(hit); return; }
    const timer = setTimeout(() => { watchers.delete(w); reject(new Error(`log line not seen; stderr: ${stderr}`)); }, timeoutMs);
    const w = (l: Record<string, unknown>) => { if (pred(l)) { clearTimeout(timer); watchers.delete(w); resolve(l); } };
    watchers.add(w);
    void exited.then(() => { if (watchers.has(w)) { clearTimeout(timer); watchers.delete(w); reject(new Error(`process exited; stderr: ${stderr}`)); } });
  });
  return { logs, waitFor, exited, stderr: () => stderr };
}
