// Shared mechanics of the benchmark runner: child processes that are always killed (even when a
// scenario throws or the runner is interrupted), /proc readers for CPU and memory, and statistics.
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { readFileSync, createWriteStream } from 'node:fs';
import { createServer } from 'node:net';
import { createInterface } from 'node:readline';
import { startRedis, type TestRedis } from '../test/helpers/redis.js';

// ---------------------------------------------------------------- processes
const live = new Set<ChildProcess>();
let hooked = false;
function hookExit() {
  if (hooked) return;
  hooked = true;
  // Last resort: whatever is still alive when the runner exits is killed, so nothing outlives a run.
  process.on('exit', () => { for (const c of live) { try { c.kill('SIGKILL'); } catch { /* gone */ } } });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => { process.stderr.write(`\n${sig}: stopping everything the benchmark started\n`); process.exit(130); });
}

export const CPUS = (() => { try { return Number(spawnSync('nproc').stdout.toString().trim()) || 1; } catch { return 1; } })();
const HAS_TASKSET = spawnSync('taskset', ['--version']).status === 0;
/** The proxy under test gets core 0, load generators core 1 (issue 7: one worker each, fair comparison). */
export const PROXY_CPU = '0';
export const LOAD_CPU = CPUS > 1 ? '1' : '0';
export const pinned = HAS_TASKSET && CPUS > 1;

/**
 * The node flags the gateway's image runs it with (the Dockerfile's CMD, between `node` and the entry
 * point), so every scenario measures the gateway exactly as deployed. Throws if the CMD no longer
 * names dist/gateway/main.js: a bench silently running other settings would measure something else.
 */
export function deployedNodeArgs(dockerfile = readFileSync(new URL('../../Dockerfile', import.meta.url), 'utf8')): string[] {
  const cmd = dockerfile.split(/\r?\n/).filter((l) => /^CMD\s*\[/.test(l)).pop();
  const argv = cmd ? (JSON.parse(cmd.replace(/^CMD\s*/, '')) as string[]) : [];
  const entry = argv.indexOf('dist/gateway/main.js');
  if (argv[0] !== 'node' || entry < 0) throw new Error(`the Dockerfile's CMD does not run node dist/gateway/main.js: ${cmd ?? 'no CMD'}`);
  return argv.slice(1, entry);
}

/** Spawns a child (pinned to `cpu` with taskset where possible; taskset execs, so the pid is the program's). */
export function start(cmd: string, args: string[], opts: SpawnOptions & { cpu?: string; logFile?: string } = {}): ChildProcess {
  hookExit();
  const [c, a] = opts.cpu !== undefined && pinned ? ['taskset', ['-c', opts.cpu, cmd, ...args]] : [cmd, args];
  const child = spawn(c, a, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (opts.logFile) {
    const log = createWriteStream(opts.logFile, { flags: 'a' });
    child.stdout?.pipe(log);
    child.stderr?.pipe(log);
  }
  return child;
}

/** Waits for the first stdout line that `match` accepts; the rest of stdout keeps draining. */
export function waitLine<T>(child: ChildProcess, match: (line: string) => T | undefined, timeoutMs: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const rl = createInterface({ input: child.stdout! });
    let done = false;
    const timer = setTimeout(() => finish(new Error(`${what}: no ready line within ${timeoutMs} ms`)), timeoutMs);
    const finish = (err?: Error, v?: T) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      child.off('exit', onExit);
      if (err) reject(err); else resolve(v as T);
    };
    const onExit = (code: number | null) => finish(new Error(`${what}: exited (${code}) before it was ready`));
    child.once('exit', onExit);
    rl.on('line', (line) => { if (done) return; const v = match(line); if (v !== undefined) finish(undefined, v); });
  });
}

/** SIGTERM, then SIGKILL after graceMs; resolves when the process is gone. */
export async function stop(child: ChildProcess | undefined, graceMs = 2000): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  await new Promise<void>((resolve) => {
    const t = setTimeout(() => { try { child.kill('SIGKILL'); } catch { /* gone */ } }, graceMs);
    child.once('exit', () => { clearTimeout(t); resolve(); });
    try { child.kill('SIGTERM'); } catch { clearTimeout(t); resolve(); }
  });
}

/** Registers a child started elsewhere (test/helpers/redis.ts) so it is killed with the rest. */
export function adopt(child: ChildProcess): void {
  hookExit();
  if (child.exitCode !== null || child.signalCode !== null) return;
  live.add(child);
  child.once('exit', () => live.delete(child));
}

/** A redis-server of the benchmark's own, killed with the rest (a scenario cut off at its bound included). */
export async function startBenchRedis(): Promise<TestRedis> {
  const redis = await startRedis();
  adopt(redis.process());
  return redis;
}

export async function stopAll(): Promise<void> {
  await Promise.all([...live].map((c) => stop(c)));
}

/** Runs a program to completion (bounded) and returns its stdout. */
export function runToEnd(cmd: string, args: string[], opts: { cpu?: string; timeoutMs: number; input?: string }): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = start(cmd, args, { cpu: opts.cpu, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d) => { stdout += d; });
    child.stderr!.on('data', (d) => { stderr += d; });
    const t = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs);
    child.once('exit', (code) => { clearTimeout(t); resolve({ code, stdout, stderr }); });
    child.stdin!.end(opts.input ?? '');
  });
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address() as { port: number }; s.close(() => resolve(port)); });
  });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- /proc
/** Whether a process with this pid still runs (signal 0 checks without sending anything). */
export function processAlive(pid: number | undefined): boolean {
  if (pid === undefined) return false;
  try { process.kill(pid, 0); return true; } catch { return false; }
}

const TICK_US = 1e6 / (Number(spawnSync('getconf', ['CLK_TCK']).stdout?.toString().trim()) || 100);

/** The pid and all its descendants (nginx's master + worker, a gateway's children if any). */
export function processTree(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    try {
      const kids = readFileSync(`/proc/${out[i]}/task/${out[i]}/children`, 'utf8').trim();
      if (kids) out.push(...kids.split(/\s+/).map(Number));
    } catch { /* exited */ }
  }
  return out;
}

/** utime + stime of the process tree in µs (proc(5): fields 14 and 15 of /proc/<pid>/stat). */
export function cpuMicros(pid: number): number {
  let ticks = 0;
  for (const p of processTree(pid)) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(fields[11]) + Number(fields[12]);
    } catch { /* exited */ }
  }
  return ticks * TICK_US;
}

/** Resident set size of the process tree, in bytes (VmRSS). */
export function rssBytes(pid: number): number {
  let kb = 0;
  for (const p of processTree(pid)) {
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${p}/status`, 'utf8'));
      if (m) kb += Number(m[1]);
    } catch { /* exited */ }
  }
  return kb * 1024;
}

/** This process's hard limit on open files (proc(5) /proc/self/limits); children inherit it. */
export function openFilesLimit(): number {
  try {
    const m = /Max open files\s+\S+\s+(\S+)/.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m && m[1] !== 'unlimited' ? Number(m[1]) : Infinity;
  } catch { return Infinity; }
}

export function loadAverage(): string {
  try { return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '); } catch { return 'unknown'; }
}

// ---------------------------------------------------------------- statistics
export function median(xs: number[]): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

/** Nearest-rank percentile of an already sorted array. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

export const round = (x: number, digits = 3) => (Number.isFinite(x) ? Number(x.toFixed(digits)) : x);
