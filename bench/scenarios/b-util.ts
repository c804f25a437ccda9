// Shared helpers for part B's scenarios (issue 7 scenarios 3-5): a gateway child process exactly as
// an operator runs it (`node dist/gateway/main.js`, JSON logs on stdout), minted session cookies,
// simple statistics, and Redis INFO parsing. Everything here is bounded in time and owns what it
// starts (close() kills it).
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { createAuth, sessionCookieName } from '../../gateway/auth.js';
import { systemClock } from '../../gateway/clock.js';
import { adopt, deployedNodeArgs } from '../lib.js';

export const BENCH_SECRET = 'bench-secret-0123456789-0123456789-abcdef';
export const BENCH_ADMIN_TOKEN = 'bench-admin-token-0123456789';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function quantile(values: number[], q: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
}

export type LogLine = Record<string, unknown> & { event?: string; time?: number; msg?: string };

export interface GatewayChild {
  port: number;
  adminPort: number;
  pid: number;
  logs: LogLine[];
  /** Resolves with the first log line (past or future) matching pred, or rejects after timeoutMs. */
  waitForLog(pred: (l: LogLine) => boolean, timeoutMs: number): Promise<LogLine>;
  /** RSS of the child in bytes (from /proc), or NaN when unavailable. */
  rss(): Promise<number>;
  /** CPU time (user + system) the child has used so far, in ms (from /proc), or NaN. */
  cpuMs(): Promise<number>;
  close(): Promise<void>;
}

/**
 * Starts `node dist/gateway/main.js` (with the image's node flags) with only the given environment (plus PATH and HOME), so the
 * bench never inherits a stray REDIS_URL or PROVISIONER from the shell it runs in.
 */
export async function startGatewayChild(env: Record<string, string>, timeoutMs = 20_000, nodeArgs: string[] = []): Promise<GatewayChild> {
  const main = fileURLToPath(new URL('../../gateway/main.js', import.meta.url));
  const child: ChildProcess = spawn(process.execPath, [...deployedNodeArgs(), ...nodeArgs, main], {
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp', GATEWAY_PORT: '0', ADMIN_PORT: '0', LOG_LEVEL: 'info', GATEWAY_SECRET: BENCH_SECRET, ADMIN_TOKEN: BENCH_ADMIN_TOKEN, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // Killed with the rest if the scenario overruns its bound (bench/run.ts): a surge cut off at
  // its bound once left a gateway and its Redis running through the rest of the run.
  adopt(child);
  const logs: LogLine[] = [];
  const watchers = new Set<(l: LogLine) => void>();
  let buf = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    buf += chunk;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (!line.startsWith('{')) continue;
      try {
        const l = JSON.parse(line) as LogLine;
        logs.push(l);
        for (const w of watchers) w(l);
      } catch { /* not a log line */ }
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (c: string) => { stderr = (stderr + c).slice(-4000); });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  const waitForLog = (pred: (l: LogLine) => boolean, ms: number) => new Promise<LogLine>((resolve, reject) => {
    const found = logs.find(pred);
    if (found) { resolve(found); return; }
    const timer = setTimeout(() => { watchers.delete(w); reject(new Error(`no matching gateway log line within ${ms} ms; stderr: ${stderr.slice(-500)}`)); }, ms);
    const w = (l: LogLine) => { if (pred(l)) { clearTimeout(timer); watchers.delete(w); resolve(l); } };
    watchers.add(w);
    void exited.then(() => { if (watchers.has(w)) { clearTimeout(timer); watchers.delete(w); reject(new Error(`gateway exited: ${stderr.slice(-800)}`)); } });
  });

  const close = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 8000);
      await exited;
      clearTimeout(killer);
    }
  };
  try {
    const l = await waitForLog((x) => x.event === 'listening', timeoutMs);
    return {
      port: Number(l.gatewayPort), adminPort: Number(l.adminPort), pid: child.pid!, logs, waitForLog,
      async rss() {
        try {
          const { readFile } = await import('node:fs/promises');
          const status = await readFile(`/proc/${child.pid}/status`, 'utf8');
          const m = /VmRSS:\s+(\d+) kB/.exec(status);
          return m ? Number(m[1]) * 1024 : NaN;
        } catch { return NaN; }
      },
      async cpuMs() {
        try {
          const { readFile } = await import('node:fs/promises');
          // Fields 14 and 15 of /proc/<pid>/stat, in clock ticks (100 per second on Linux).
          const stat = (await readFile(`/proc/${child.pid}/stat`, 'utf8')).split(') ')[1].split(' ');
          return (Number(stat[11]) + Number(stat[12])) * 10;
        } catch { return NaN; }
      },
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

/** Mints session cookies the way the gateway does (same secret, its http name: the bench reaches it on *.localhost), one per simulated browser. */
export function cookieMinter(secret = BENCH_SECRET) {
  const auth = createAuth({ secret, sessionTtlMs: 12 * 3_600_000, loginTokenMaxTtlMs: 300_000, clock: systemClock });
  return async (workspaceId: string) => `${sessionCookieName('http')}=${(await auth.createSession(workspaceId)).value}`;
}

/** A forced full GC, for heap deltas (V8 flag set at run time, so no node flag is needed). */
export function gcFunction(): () => void {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  return () => { gc(); gc(); };
}

/** Parses `INFO <section>` into a field map. */
export function parseInfo(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i > 0 && !line.startsWith('#')) out[line.slice(0, i)] = line.slice(i + 1);
  }
  return out;
}

/** Runs tasks with at most `limit` in flight. */
export async function pool<T>(count: number, limit: number, task: (i: number) => Promise<T>): Promise<T[]> {
  const out = new Array<T>(count);
  let next = 0;
  const worker = async () => { for (let i = next++; i < count; i = next++) out[i] = await task(i); };
  await Promise.all(Array.from({ length: Math.min(limit, count) }, worker));
  return out;
}

/** Largest number of timestamps (ms) within any window of `windowMs`. */
export function maxInWindow(times: number[], windowMs = 1000): number {
  const at = [...times].sort((a, b) => a - b);
  let best = 0;
  for (let i = 0, j = 0; i < at.length; i++) {
    while (at[i] - at[j] >= windowMs) j++;
    best = Math.max(best, i - j + 1);
  }
  return best;
}
