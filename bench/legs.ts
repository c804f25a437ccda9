// Where a request's time goes at 1,000 req/s (issue 7: the added-latency targets). The open loop's
// percentiles mix the proxy's own work with four wake-ups and the upstream, all of which this VM
// stretches; this splits each request into its seven parts, so a change to the request path can be
// judged by the part it changes. `perf record -k mono` traces, on CLOCK_MONOTONIC, the epoll
// wake-ups and the socket writes of three threads: the open-loop client (bench/loadgen.ts), the
// proxy's event loop and the upstream's. One request is then, in order: the client's write, the
// proxy's wake-up, its write upstream (the request leg), the upstream's wake-up and its write, the
// proxy's wake-up and its write to the client (the response leg), the client's wake-up.
// Tracing costs each traced call a little, so compare systems measured in the same run.
// `node dist/bench/legs.js [seconds] [--rounds=N] [gateway|nginx|node-relay ...]` (needs perf, as root)
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { benchCommand, startGateway, startLibraryProxy, startNginx, type System } from './field.js';
import { LOAD_CPU, median, runToEnd, sleep, start } from './lib.js';
import { openLoopJob, wrk } from './scenarios/http.js';

export const SEGMENTS = ['proxy wakes', 'request leg', 'upstream wakes', 'upstream', 'proxy wakes again', 'response leg', 'client wakes'] as const;
const EVENTS = ['sys_exit_epoll_pwait', 'sys_exit_epoll_wait', 'sys_enter_write', 'sys_enter_writev'].map((e) => `syscalls:${e}`);
const loadgen = fileURLToPath(new URL('./loadgen.js', import.meta.url));

export interface TraceEvent { tid: number; us: number; kind: 'wake' | 'write' }

/**
 * `perf script -F tid,time,event,trace --ns` lines as events. A wake-up is an epoll wait that returned
 * events (a timeout's return of 0 is the client's own ticker); a write is one to a socket, not to
 * stdout or stderr (a log line is not part of a request).
 */
export function parseTrace(text: string): TraceEvent[] {
  const events: TraceEvent[] = [];
  const line = /^\s*(\d+)\s+(\d+)\.(\d+):\s+syscalls:sys_(exit_epoll_p?wait|enter_writev?):\s*(.*)$/;
  for (const l of text.split('\n')) {
    const m = line.exec(l);
    if (!m) continue;
    const us = Number(m[2]) * 1e6 + Number(m[3].padEnd(9, '0').slice(0, 9)) / 1000;
    if (m[4].startsWith('exit')) {
      if (Number(m[5].trim()) > 0) events.push({ tid: Number(m[1]), us, kind: 'wake' });
    } else {
      const fd = /fd: (0x[0-9a-f]+)/.exec(m[5]);
      if (fd && Number(fd[1]) > 2) events.push({ tid: Number(m[1]), us, kind: 'write' });
    }
  }
  return events;
}

/**
 * Each request's seven parts (µs), read off the events in time order: a client write starts one, and
 * the next expected event of the next expected thread takes it a step on; a new client write before
 * the last step drops the unfinished one (two requests in flight at once cannot be told apart).
 */
export function requestParts(events: readonly TraceEvent[], tids: { client: number; proxy: number; upstream: number }): number[][] {
  const steps: Array<[number, TraceEvent['kind']]> = [
    [tids.proxy, 'wake'], [tids.proxy, 'write'], [tids.upstream, 'wake'], [tids.upstream, 'write'],
    [tids.proxy, 'wake'], [tids.proxy, 'write'], [tids.client, 'wake'],
  ];
  const parts: number[][] = [];
  let times: number[] | undefined;
  for (const e of events) {
    if (e.tid === tids.client && e.kind === 'write') { times = [e.us]; continue; }
    if (!times) continue;
    const [tid, kind] = steps[times.length - 1];
    if (e.tid !== tid || e.kind !== kind) continue;
    times.push(e.us);
    if (times.length === steps.length + 1) {
      parts.push(times.slice(1).map((t, i) => t - times![i]));
      times = undefined;
    }
  }
  return parts;
}

export interface LegsResult { requests: number; medians: number[]; ownLegs: number }

/** Medians of each part, and of the proxy's own two legs per request. */
export function summarize(parts: readonly number[][]): LegsResult {
  return {
    requests: parts.length,
    medians: SEGMENTS.map((_, i) => median(parts.map((p) => p[i]))),
    ownLegs: median(parts.map((p) => p[1] + p[5])),
  };
}

/** The thread whose epoll loop serves the system: nginx's worker, or the Node process itself. */
function eventLoopTid(s: System): number {
  if (s.name !== 'nginx') return s.pid;
  const children = spawnSync('pgrep', ['-P', String(s.pid)]).stdout.toString().trim().split('\n').filter(Boolean).map(Number);
  if (children.length !== 1) throw new Error(`nginx: expected one worker, found ${children.length}`);
  return children[0];
}

export function hasPerf(): boolean {
  return spawnSync('perf', ['--version']).status === 0;
}

/** One traced open loop of `seconds` at 1,000 req/s against `s`. */
export async function traceRound(s: System, upstreamPid: number, seconds: number): Promise<LegsResult> {
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-legs-'));
  const data = join(dir, 'perf.data');
  try {
    const client = start(process.execPath, [loadgen, JSON.stringify(openLoopJob(s, seconds, 1000))], { cpu: LOAD_CPU });
    const clientDone = new Promise<number | null>((resolve) => client.once('exit', resolve));
    const proxy = eventLoopTid(s);
    // The client's first second (connections opening, its code compiling) is not traced, as it is not counted.
    await sleep(1000);
    const perf = start('perf', ['record', '-q', '-k', 'mono', '-p', [proxy, upstreamPid, client.pid].join(','), ...EVENTS.flatMap((e) => ['-e', e]), '-o', data]);
    const perfDone = new Promise<number | null>((resolve) => perf.once('exit', resolve));
    const code = await clientDone;
    perf.kill('SIGINT');
    const perfCode = await perfDone;
    if (code !== 0) throw new Error(`open loop against ${s.name} exited with ${code}`);
    if (perfCode !== 0 && perfCode !== null) throw new Error(`perf record exited with ${perfCode}`);
    const script = await runToEnd('perf', ['script', '-i', data, '-F', 'tid,time,event,trace', '--ns'], { timeoutMs: 120_000 });
    if (script.code !== 0) throw new Error(`perf script failed: ${script.stderr}`);
    return summarize(requestParts(parseTrace(script.stdout), { client: client.pid!, proxy, upstream: upstreamPid }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** `node dist/bench/legs.js [seconds] [--rounds=N] [gateway|nginx|node-relay ...]`: a table of medians. */
async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const seconds = Number(args.find((a) => /^\d+$/.test(a)) ?? 8);
  const rounds = Number(args.find((a) => a.startsWith('--rounds='))?.slice(9) ?? 3);
  const names = args.filter((a) => !a.startsWith('--') && !/^\d+$/.test(a));
  await benchCommand(async (up, state, dir) => {
    if (!hasPerf()) throw new Error('perf is not installed (Debian: apt-get install -y linux-perf)');
    const launch: Record<string, () => Promise<System>> = {
      gateway: () => startGateway(state, 'gateway'),
      nginx: () => startNginx(dir, up, state.cookie),
      'node-relay': () => startLibraryProxy(up, state.cookie, 'tcp-relay'),
    };
    const systems: System[] = [];
    for (const name of names.length ? names : ['gateway', 'nginx', 'node-relay']) {
      if (!launch[name]) throw new Error(`unknown system ${name} (gateway, nginx, node-relay)`);
      systems.push(await launch[name]());
    }
    // Warm each (JIT, keep-alive pools, route cache) as the benchmark does before its open loop.
    for (const s of systems) await wrk(s, 10, 50);
    const results = new Map<string, LegsResult[]>(systems.map((s) => [s.name, []]));
    for (let r = 0; r < rounds; r++) {
      for (const s of systems.map((_, i) => systems[(i + r) % systems.length])) {
        const res = await traceRound(s, up.pid, seconds);
        results.get(s.name)!.push(res);
        process.stdout.write(`round ${r + 1}/${rounds} ${s.name}: ${res.requests} requests, own legs ${res.ownLegs.toFixed(1)} µs\n`);
        await sleep(200);
      }
    }
    process.stdout.write(`\nmedians over ${rounds} rounds of ${seconds} s at 1,000 req/s, µs (range over rounds)\n`);
    process.stdout.write(`| system | ${SEGMENTS.join(' | ')} | own two legs |\n|---|${SEGMENTS.map(() => '---:|').join('')}---:|\n`);
    const range = (xs: number[]) => { const lo = Math.min(...xs), hi = Math.max(...xs); return hi - lo < 0.5 ? lo.toFixed(0) : `${lo.toFixed(0)}–${hi.toFixed(0)}`; };
    for (const [name, rs] of results) {
      process.stdout.write(`| ${name} | ${SEGMENTS.map((_, i) => range(rs.map((x) => x.medians[i]))).join(' | ')} | ${range(rs.map((x) => x.ownLegs))} |\n`);
    }
    process.stdout.write(`${JSON.stringify(Object.fromEntries(results))}\n`);
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) void main();
