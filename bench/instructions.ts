// Instructions per proxied request, counted by valgrind's callgrind (issue 7: CPU per request). Time
// on this shared machine varies by up to 40 % between rounds and `perf` has no hardware counters
// here, so a change of a few per cent to the warm path cannot be told from noise by timing it;
// an instruction count is the same from run to run whatever else the machine is doing. Each system
// runs under callgrind with instrumentation off (so it starts and warms at valgrind's plain speed),
// serves `warmup` requests, is counted over the next `requests`, and the count is divided by them.
// All of the process's threads are counted (V8's compiler and GC threads included). A window in
// which V8 optimized code is counted again (at most MAX_WINDOWS in all): its compiler's work is a
// start-up cost, not the steady cost of a request.
// `node dist/bench/instructions.js [requests] [gateway|node-relay ...] [--warmup=N] [--top]`
import net from 'node:net';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import { HOST, benchCommand, startGateway, startLibraryProxy, type GatewayField, type System, type Upstream } from './field.js';
import { getRequest, responseComplete } from './http-response.js';
import { sleep } from './lib.js';

const CONNECTIONS = 10;
/**
 * Requests before the count, and counted. Fewer than 30,000 before left V8 still optimising the
 * gateway inside the count (145 k instructions a request after 20,000, 72 k after 30,000).
 */
export const WARMUP = 30_000;
export const COUNTED = 5_000;
/**
 * Windows of `requests` counted at most, until one in which V8 generated no optimized code. After
 * 30,000 requests a full run on an AMD EPYC (family 26) machine still re-optimized node's stream
 * write functions inside the count: 68.5 k instructions a request, 28 % of them V8's compiler thread;
 * 43.8 k after 60,000. How long V8 takes to settle depends on the machine, so the count checks.
 */
export const MAX_WINDOWS = 4;

/**
 * Keep-alive connections sending requests one at a time each, read as loadgen.ts reads them. The
 * counted requests go on connections already warm: opening and closing connections between warm-up
 * and count made V8 deoptimize and re-optimize the stream functions inside the count.
 */
export async function openClient(port: number, headers: Record<string, string>) {
  const request = getRequest(HOST, headers);
  let left = 0;
  let finished: (() => void) | undefined;
  let failed: ((err: Error) => void) | undefined;
  let idle = 0;
  const connection = () => new Promise<net.Socket>((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => resolve(socket));
    let text = '';
    const next = () => {
      if (left <= 0) { if (++idle === CONNECTIONS) finished?.(); return; }
      left--;
      socket.write(request);
    };
    socket.on('error', (err) => { reject(err); failed?.(err); });
    socket.on('data', (d) => {
      text += d.toString('latin1');
      const verdict = responseComplete(text);
      if (verdict === undefined) return;
      if (!verdict) { failed?.(new Error(`unexpected response: ${text.split('\r\n')[0]}`)); return; }
      text = '';
      next();
    });
    (socket as net.Socket & { next?: () => void }).next = next;
  });
  const sockets = await Promise.all(Array.from({ length: CONNECTIONS }, connection));
  return {
    run: (total: number) => new Promise<void>((resolve, reject) => {
      left = total;
      idle = 0;
      finished = resolve;
      failed = reject;
      for (const s of sockets) (s as net.Socket & { next: () => void }).next();
    }),
    close: () => { for (const s of sockets) s.destroy(); },
  };
}

function callgrindControl(args: string[]): void {
  const r = spawnSync('callgrind_control', args, { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`callgrind_control ${args.join(' ')}: ${r.stderr || r.stdout}`);
}

/** The dump's total instruction count (its `summary:` or `totals:` line). */
function totalInstructions(file: string): number {
  const m = /^(?:summary|totals): (\d+)/m.exec(readFileSync(file, 'utf8'));
  if (!m) throw new Error(`no totals in ${file}`);
  return Number(m[1]);
}

/** Names for V8's generated code, from the map `--perf-basic-prof` writes (callgrind knows only addresses). */
function jitNames(pid: number): (address: number) => string {
  let entries: Array<[number, number, string]> = [];
  try {
    entries = readFileSync(`/tmp/perf-${pid}.map`, 'utf8').split('\n').filter(Boolean).map((l) => {
      const [a, n, ...rest] = l.split(' ');
      return [parseInt(a, 16), parseInt(n, 16), rest.join(' ')] as [number, number, string];
    });
  } catch { /* no map: addresses stay */ }
  return (address) => {
    // The last code object mapped at this address is the live one (code space is reused).
    for (let i = entries.length - 1; i >= 0; i--) {
      const [a, n, name] = entries[i];
      if (address >= a && address < a + n) return name;
    }
    return `0x${address.toString(16)}`;
  };
}

export type Launch = (launcher: string[], nodeArgs: string[]) => Promise<System>;

/** Whether callgrind is here to count with (valgrind is a Debian package). */
export function hasCallgrind(): boolean {
  return spawnSync('valgrind', ['--version']).status === 0 && spawnSync('callgrind_control', ['-h']).status === 0;
}

/** The gateway and the bare Node relay, as `measure` starts them: under a launcher, with node options. */
export function launchers(up: Upstream, state: GatewayField): Record<'gateway' | 'node-relay', Launch> {
  return {
    gateway: (l, n) => startGateway(state, 'gateway', {}, n, l),
    'node-relay': (l, n) => startLibraryProxy(up, state.cookie, 'tcp-relay', n, l),
  };
}

/** The name of each optimized (Turbofan, `*`) code object in perf-map lines. */
const optimized = (lines: string[]) => lines.map((l) => l.split(' ').slice(2).join(' ')).filter((n) => n.startsWith('JS:*'));

/**
 * User-space instructions per request of one system: `warmup` requests, then windows of `requests`
 * counted until V8 optimizes nothing during one (MAX_WINDOWS at most); the last window's count.
 * `note` hears how many windows it took, and what was still being optimized if it never settled.
 */
export interface CountedClient { run(total: number): Promise<void>; close(): void }
export type OpenClient = (port: number, headers: Record<string, string>) => Promise<CountedClient>;

export async function measure(start: Launch, requests: number, warmup: number, top = false, note: (s: string) => void = () => {}, open: OpenClient = openClient): Promise<number> {
  const out = mkdtempSync(join(tmpdir(), 'wsgw-callgrind-'));
  const file = join(out, 'callgrind.out');
  // --perf-basic-prof: V8 names each code object it makes in /tmp/perf-<pid>.map, so the count can
  // tell whether the compiler was still at work, and --top can name JIT frames.
  const system = await start(['valgrind', '--tool=callgrind', '--instr-atstart=no', `--callgrind-out-file=${file}`], ['--perf-basic-prof']);
  try {
    // Connections come and go in production too: the first half of the warm-up on connections closed after it.
    const first = await open(system.port, system.headers);
    await first.run(warmup / 2);
    first.close();
    const client = await open(system.port, system.headers);
    await client.run(warmup / 2);
    await sleep(500);
    const mapLines = () => { try { return readFileSync(`/tmp/perf-${system.pid}.map`, 'utf8').split('\n').filter(Boolean); } catch { return []; } };
    callgrindControl(['-i', 'on', String(system.pid)]);
    let compiled: string[] = [];
    let window = 0;
    do {
      window++;
      const before = mapLines().length;
      await client.run(requests);
      // Each dump holds what was counted since the one before: callgrind.out.1, .2, ...
      callgrindControl(['-d', String(system.pid)]);
      compiled = optimized(mapLines().slice(before));
    } while (compiled.length > 0 && window < MAX_WINDOWS);
    client.close();
    const dump = `${file}.${window}`;
    if (!existsSync(dump)) throw new Error(`no callgrind dump ${dump}`);
    note(compiled.length === 0
      ? `window ${window} of ${requests.toLocaleString('en')} requests${window === 1 ? '' : ` (V8 still optimized code in the ${window === 2 ? 'one' : window - 1} before it)`}`
      : `V8 still optimizing after ${window} windows of ${requests.toLocaleString('en')}: ${compiled.map((n) => n.slice(4)).join(', ')}`);
    if (top) {
      process.stdout.write(`code optimized while the last window was counted: ${compiled.length ? compiled.join(', ') : 'none'}\n`);
      const names = jitNames(system.pid);
      for (const inclusive of ['no', 'yes']) {
        const r = spawnSync('callgrind_annotate', [`--inclusive=${inclusive}`, dump], { encoding: 'utf8', maxBuffer: 64 << 20 });
        const lines = r.stdout.split('\n').filter((l) => /^\s*[\d,]+ \(/.test(l)).slice(0, 70);
        process.stdout.write(`\n${inclusive === 'no' ? 'self' : 'inclusive'} instructions per request\n`);
        if (inclusive === 'no') process.stdout.write(`(dump: ${dump}; JIT names: /tmp/perf-${system.pid}.map)\n`);
        for (const l of lines) {
          const m = /^\s*([\d,]+) \(\s*([\d.]+)%\)\s+(.*)$/.exec(l);
          if (!m) continue;
          const per = Number(m[1].replace(/,/g, '')) / requests;
          const fn = m[3].replace(/\?\?\?:(0x[0-9a-f]+) \[\?\?\?\]/, (_, a: string) => `JS ${names(Number(a))}`).replace(/^\?\?\?:/, '').replace(/ \[\/usr\/bin\/node\]$/, '');
          process.stdout.write(`${Math.round(per).toString().padStart(8)} ${m[2].padStart(6)}%  ${fn.slice(0, 150)}\n`);
        }
      }
    }
    return totalInstructions(dump) / requests;
  } finally {
    await system.close();
  }
}

export type Measure = (start: Launch, requests: number, warmup: number, top: boolean, note?: (s: string) => void) => Promise<number>;

/**
 * A per-request measure as a command: `[requests] [gateway|node-relay ...] [--warmup=N] [--top]`, each
 * system measured in turn and printed as `<name>: <value> <what>` (this file and bench/allocations.ts).
 */
export async function runPerRequestCommand(measure: Measure, defaults: { warmup: number; requests: number }, what: string): Promise<void> {
  const args = process.argv.slice(2);
  const top = args.includes('--top');
  const warmup = Number(args.find((a) => a.startsWith('--warmup='))?.slice(9) ?? defaults.warmup);
  const requests = Number(args.find((a) => /^\d+$/.test(a)) ?? defaults.requests);
  const names = args.filter((a) => !a.startsWith('--') && !/^\d+$/.test(a));
  await benchCommand(async (up, state) => {
    const launch = launchers(up, state);
    for (const name of names.length ? names : ['gateway', 'node-relay']) {
      const start = launch[name as keyof typeof launch] as Launch | undefined;
      if (!start) throw new Error(`unknown system ${name} (gateway, node-relay)`);
      const perRequest = await measure(start, requests, warmup, top, (s) => process.stdout.write(`${name}: ${s}\n`));
      process.stdout.write(`${name}: ${Math.round(perRequest).toLocaleString('en')} ${what} (${requests} requests)\n`);
    }
  });
}

// A command of its own, and a module the full benchmark imports (scenarios/instructions.ts).
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  void runPerRequestCommand(measure, { warmup: WARMUP, requests: COUNTED }, 'instructions per request');
}
