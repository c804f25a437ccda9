// Scenarios 1 and 6 of issue 7, in one run so every ratio compares figures from the same minutes:
//  1. HTTP closed loop at 50 connections (wrk: rps, p50, p99; proxy CPU per request from /proc) and an
//     open loop at 1,000 rps (added p50/p99 latency over direct);
//  6. the gateway with METRICS and ACTIVITY_TRACKING off, with metrics alone off, and as deployed.
// Systems are interleaved (rotated order each round) and medians over rounds are reported.
import { rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { addTarget, type ScenarioResult, type Target, type Figure } from '../result.js';
import { LOAD_CPU, cpuMicros, loadAverage, median, processAlive, round, runToEnd, stopAll } from '../lib.js';
import { startField, startLibraryProxy, workDir, type System } from '../field.js';

const loadgen = join(dirname(fileURLToPath(import.meta.url)), '..', 'loadgen.js');

/** `rps` and `requests` count successful responses only; `non2xx` the others (wrk: status 400 and up). */
interface WrkResult { rps: number; requests: number; p50us: number; p99us: number; non2xx: number; errors: string }

function micros(v: string, unit: string): number {
  const n = Number(v);
  return unit === 'us' ? n : unit === 'ms' ? n * 1000 : unit === 's' ? n * 1e6 : unit === 'm' ? n * 60e6 : NaN;
}

export function parseWrk(out: string): WrkResult {
  const lat = (p: string) => { const m = new RegExp(`^\\s*${p}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(out); return m ? micros(m[1], m[2]) : NaN; };
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(out);
  const req = /(\d+) requests in/.exec(out);
  const non = /Non-2xx or 3xx responses:\s+(\d+)/.exec(out);
  const sockErr = /Socket errors:.*$/m.exec(out);
  const all = req ? Number(req[1]) : 0;
  const non2xx = non ? Number(non[1]) : 0;
  // wrk's Requests/sec counts error responses too: a proxy answering 502 at once must not gain by it.
  const ok = Math.max(0, all - non2xx);
  const rate = rps ? (all ? (Number(rps[1]) * ok) / all : Number(rps[1])) : NaN;
  return { rps: rate, requests: ok, p50us: lat('50'), p99us: lat('99'), non2xx, errors: sockErr ? sockErr[0] : '' };
}

/**
 * Behind the ALB every connection carries many browsers' requests, now and then one that is not a
 * proxied page (a starting page's status poll, a sign-in): one request in 50 here is a status poll,
 * on the same 50 connections.
 */
const MIXED_LUA = `local n = 0
request = function()
  n = n + 1
  if n % 50 == 0 then return wrk.format(nil, "/__gateway/status") end
  return wrk.format(nil, "/")
end
`;

/** A closed loop of wrk against `s` (one thread, `connections`), and the proxy's CPU per request over it. */
export async function wrk(s: System, seconds: number, connections: number, script?: string): Promise<WrkResult & { cpuUsPerReq: number }> {
  const args = ['-t1', `-c${connections}`, `-d${seconds}s`, '--latency', '--timeout', '5s', '-H', `Host: ${s.host}`];
  for (const [k, v] of Object.entries(s.headers)) args.push('-H', `${k}: ${v}`);
  if (script) args.push('-s', script);
  args.push(`http://127.0.0.1:${s.port}/`);
  const cpu0 = cpuMicros(s.pid);
  const r = await runToEnd('wrk', args, { cpu: LOAD_CPU, timeoutMs: (seconds + 15) * 1000 });
  const cpu = cpuMicros(s.pid) - cpu0;
  if (r.code !== 0) throw new Error(`wrk against ${s.name} failed (${r.code}): ${r.stderr || r.stdout}`);
  const w = parseWrk(r.stdout);
  return { ...w, cpuUsPerReq: w.requests ? cpu / w.requests : NaN };
}

interface OpenResult { ok: number; errors: number; p50us: number; p99us: number; achievedRps: number }
/** loadgen.ts's open loop against `s`: `seconds` measured after one sent but not counted. */
export function openLoopJob(s: System, seconds: number, rate: number) {
  return { mode: 'open', port: s.port, host: s.host, headers: s.headers, durationMs: (seconds + 1) * 1000, warmupMs: 1000, rate };
}
export async function openLoop(s: System, seconds: number, rate: number): Promise<OpenResult> {
  const job = openLoopJob(s, seconds, rate);
  const r = await runToEnd(process.execPath, [loadgen, JSON.stringify(job)], { cpu: LOAD_CPU, timeoutMs: seconds * 1000 + 20_000 });
  if (r.code !== 0) throw new Error(`open loop against ${s.name} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as OpenResult;
}

/**
 * The note for a bookkeeping cost this run cannot resolve: the gateway variants' throughput moved by
 * `widest` (a fraction of the median) between rounds. Only a quick run is told to try `--full`; a full
 * run already is the longer one (its table at 6358919 told itself to rerun with --full).
 */
export function spreadNote(widest: number, load: string, quick: boolean): string | undefined {
  if (!Number.isFinite(widest) || widest <= 0.1) return undefined;
  return `6: the gateway variants' throughput varied by up to ${(widest * 100).toFixed(0)}% between rounds (load average ${load}); costs below that are not resolved by this run: rerun on a quiet machine${quick ? ' or with --full' : ''}`;
}

const rotate = <T>(xs: T[], k: number) => xs.map((_, i) => xs[(i + k) % xs.length]);

export async function run(opts: { quick: boolean; log: (s: string) => void }): Promise<ScenarioResult> {
  const { log } = opts;
  // Seven in full: this shared machine has had slow spells of three rounds of five (notes below).
  const rounds = opts.quick ? 3 : 7;
  // Two seconds in quick mode (20,000 requests or more a round): with three, the whole quick run read
  // 5 min 21 s on a slower machine, over its five minutes.
  const closedSecs = opts.quick ? 2 : 8;
  const openSecs = opts.quick ? 2 : 8;
  // Two in quick mode, which keeps the whole quick run under its five minutes.
  const openRounds = opts.quick ? 2 : 7;
  const notes: string[] = [];
  const dir = workDir();
  try {
    const { up, state, field } = await startField(dir, notes, log, [
      ['gw-metrics-off', { METRICS: 'off' }],
      ['gw-bare', { METRICS: 'off', ACTIVITY_TRACKING: 'off' }],
    ]);
    // The two proxy libraries on their own: what each costs before any gateway logic (the pick; full
    // mode only, which keeps the quick mode under its five minutes); and a bare TCP relay, what any Node
    // process pays to pass these bytes (the CPU target's context).
    for (const engine of opts.quick ? ['tcp-relay'] as const : ['undici', 'http-proxy-3', 'tcp-relay'] as const) {
      try { field.push(await startLibraryProxy(up, state.cookie, engine)); } catch (err) { notes.push(`${engine} not run: ${(err as Error).message}`); }
    }
    const mixedScript = join(dir, 'mixed.lua');
    writeFileSync(mixedScript, MIXED_LUA);
    // Warm each system (JIT, keep-alive pools, route cache) before anything is measured.
    for (const s of field) await wrk(s, 1, 50);
    const gatewaySystem = field.find((s) => s.name === 'gateway');
    if (gatewaySystem) await wrk(gatewaySystem, 1, 50, mixedScript);
    const mixed: Array<WrkResult & { cpuUsPerReq: number }> = [];

    const closed = new Map<string, Array<WrkResult & { cpuUsPerReq: number }>>(field.map((s) => [s.name, []]));
    for (let r = 0; r < rounds; r++) {
      for (const s of rotate(field, r)) {
        const w = await wrk(s, closedSecs, 50);
        if (w.non2xx > 0 || w.errors) notes.push(`${s.name} round ${r + 1}: ${w.non2xx} non-2xx responses ${w.errors}`);
        // A peer that stopped answering (a full run once lost lib-undici after two rounds) is reported,
        // not averaged in as zero.
        if (w.rps === 0) { notes.push(`${s.name} round ${r + 1}: no answers (its process ${processAlive(s.pid) ? 'still runs' : 'is gone'}); round left out`); continue; }
        closed.get(s.name)!.push(w);
        log(`  closed loop round ${r + 1}/${rounds} ${s.name}: ${Math.round(w.rps)} rps p99 ${(w.p99us / 1000).toFixed(2)} ms, ${w.cpuUsPerReq.toFixed(1)} µs CPU/req (load ${loadAverage()})`);
        if (s === gatewaySystem) {
          const m = await wrk(s, closedSecs, 50, mixedScript);
          if (m.non2xx > 0 || m.errors) notes.push(`gateway mixed round ${r + 1}: ${m.non2xx} non-2xx responses ${m.errors}`);
          if (m.rps > 0) mixed.push(m);
          log(`  closed loop round ${r + 1}/${rounds} gateway, 1 in 50 a status poll: ${Math.round(m.rps)} rps, ${m.cpuUsPerReq.toFixed(1)} µs CPU/req`);
        }
      }
    }
    // node-relay too: the latency any Node process adds at this rate, waking twice per request.
    const openSystems = field.filter((s) => ['direct', 'nginx', 'chp', 'gateway', 'node-relay'].includes(s.name));
    const open = new Map<string, OpenResult[]>(openSystems.map((s) => [s.name, []]));
    for (let r = 0; r < openRounds; r++) {
      for (const s of rotate(openSystems, r)) {
        const o = await openLoop(s, openSecs, 1000);
        if (o.errors) notes.push(`${s.name} open loop round ${r + 1}: ${o.errors} errors`);
        open.get(s.name)!.push(o);
        log(`  open loop 1000 rps round ${r + 1}/${openRounds} ${s.name}: p50 ${(o.p50us / 1000).toFixed(3)} ms p99 ${(o.p99us / 1000).toFixed(3)} ms`);
      }
    }

    const med = (name: string, k: keyof (WrkResult & { cpuUsPerReq: number })) => median((closed.get(name) ?? []).map((w) => w[k] as number));
    const omed = (name: string, k: 'p50us' | 'p99us') => median((open.get(name) ?? []).map((o) => o[k]));
    const rps = (n: string) => med(n, 'rps');
    const each = (name: string, k: 'rps' | 'cpuUsPerReq', digits: number) => (closed.get(name) ?? []).map((w) => round(w[k], digits));
    const systems = field.map((s) => {
      const cpu = each(s.name, 'cpuUsPerReq', 1);
      const figures: Figure[] = [
        { name: 'rps', value: round(rps(s.name), 0), unit: 'req/s', rounds: each(s.name, 'rps', 0) },
        { name: 'rps / direct', value: round(rps(s.name) / rps('direct')), unit: 'x' },
        { name: 'p50', value: round(med(s.name, 'p50us') / 1000), unit: 'ms' },
        { name: 'p99', value: round(med(s.name, 'p99us') / 1000), unit: 'ms' },
        { name: 'CPU/req', value: round(med(s.name, 'cpuUsPerReq'), 1), unit: 'µs', rounds: cpu },
      ];
      // A shared machine has slow spells (a full run once saw every Node system at twice its CPU per
      // request for two rounds): the medians take up to three such rounds of seven; more shows here.
      if (cpu.length > 1 && Math.max(...cpu) > 1.5 * Math.min(...cpu)) notes.push(`${s.name}: CPU per request moved ${round(Math.max(...cpu) / Math.min(...cpu), 2)} x between rounds (${cpu.join(', ')} µs, in the order run): the machine's own slow spells`);
      if (s === gatewaySystem && mixed.length) {
        figures.push({ name: 'rps, 1 in 50 a status poll', value: round(median(mixed.map((m) => m.rps)), 0), unit: 'req/s' });
        figures.push({ name: 'CPU/req, 1 in 50 a status poll', value: round(median(mixed.map((m) => m.cpuUsPerReq)), 1), unit: 'µs' });
      }
      if (open.has(s.name)) {
        // Each round kept, in the order run, so added latency can be read per round as well (each
        // round's figure minus direct's in the same round).
        const oRounds = (k: 'p50us' | 'p99us') => (open.get(s.name) ?? []).map((o) => round(o[k] / 1000));
        figures.push({ name: 'open p50', value: round(omed(s.name, 'p50us') / 1000), unit: 'ms', rounds: oRounds('p50us') });
        figures.push({ name: 'open p99', value: round(omed(s.name, 'p99us') / 1000), unit: 'ms', rounds: oRounds('p99us') });
        if (s.name !== 'direct') {
          figures.push({ name: 'added p50', value: round((omed(s.name, 'p50us') - omed('direct', 'p50us')) / 1000), unit: 'ms' });
          figures.push({ name: 'added p99', value: round((omed(s.name, 'p99us') - omed('direct', 'p99us')) / 1000), unit: 'ms' });
        }
      }
      return { system: s.name, figures };
    });

    const targets: Target[] = [];
    const t = (name: string, value: number, limit: number, unit: string, op: '<=' | '>=') => addTarget({ targets, notes }, name, value, limit, unit, op, round);
    t('1: gateway rps / nginx rps', rps('gateway') / rps('nginx'), 0.7, 'x', '>=');
    t('1: gateway rps / chp rps', rps('gateway') / rps('chp'), 2.5, 'x', '>=');
    t('1: gateway proxy CPU per request', med('gateway', 'cpuUsPerReq'), 45, 'µs', '<=');
    const added = (n: string, k: 'p50us' | 'p99us') => (omed(n, k) - omed('direct', k)) / 1000;
    t('1: gateway added p50 at 1000 rps (limit: nginx\'s)', added('gateway', 'p50us'), added('nginx', 'p50us'), 'ms', '<=');
    t('1: gateway added p99 at 1000 rps (limit: nginx\'s)', added('gateway', 'p99us'), added('nginx', 'p99us'), 'ms', '<=');
    t('6: bookkeeping cost (1 - rps on / rps off)', 1 - rps('gateway') / rps('gw-bare'), 0.10, 'fraction', '<=');
    // CPU per request is steadier than throughput on a shared machine; reported beside the targets.
    const cpuCost = (off: string) => 1 - med(off, 'cpuUsPerReq') / med('gateway', 'cpuUsPerReq');
    // A cost smaller than the gateway's own round-to-round spread is not resolved by this run.
    const spread = (n: string) => { const v = (closed.get(n) ?? []).map((w) => w.rps); return (Math.max(...v) - Math.min(...v)) / median(v); };
    const widest = Math.max(spread('gateway'), spread('gw-bare'), spread('gw-metrics-off'));
    const unresolved = spreadNote(widest, loadAverage(), opts.quick);
    if (unresolved !== undefined) notes.push(unresolved);
    // Issue 7 sets one target for all bookkeeping (metrics and activity together); metrics alone is
    // reported, by throughput and by CPU, not judged: its few percent are inside this machine's spread.
    notes.push(`6: metrics alone: ${((1 - rps('gateway') / rps('gw-metrics-off')) * 100).toFixed(1)}% of throughput (1 - rps metrics on / off); bookkeeping share of gateway CPU per request: ${(cpuCost('gw-bare') * 100).toFixed(1)}%, metrics alone: ${(cpuCost('gw-metrics-off') * 100).toFixed(1)}%`);
    if (closed.has('lib-undici') && closed.has('lib-http-proxy-3')) {
      notes.push(`library pick: on its own undici forwards at ${med('lib-undici', 'cpuUsPerReq').toFixed(1)} µs CPU/req (${Math.round(rps('lib-undici'))} req/s), http-proxy-3 at ${med('lib-http-proxy-3', 'cpuUsPerReq').toFixed(1)} µs (${Math.round(rps('lib-http-proxy-3'))} req/s), the whole gateway at ${med('gateway', 'cpuUsPerReq').toFixed(1)} µs: it forwards with neither, but with its own pool on node's HTTP parser (gateway/upstream-pool.ts), on the warm lane without node:http's server objects (gateway/http1.ts)`);
    }
    if (closed.has('node-relay')) {
      notes.push(`Node's floor: a bare TCP relay (node:net, one upstream connection per client connection, no HTTP parsed) costs ${med('node-relay', 'cpuUsPerReq').toFixed(1)} µs CPU/req here (${Math.round(rps('node-relay'))} req/s); nginx ${med('nginx', 'cpuUsPerReq').toFixed(1)} µs with HTTP parsed both ways; the gateway ${med('gateway', 'cpuUsPerReq').toFixed(1)} µs`);
    }
    notes.push('CPU/req is the proxy process tree\'s CPU per request served; for direct it is the upstream\'s own');
    notes.push('gateway "1 in 50 a status poll": the closed loop again, every 50th request on each connection a GET /__gateway/status (a store read, answered on the warm lane, the connection kept): traffic as the ALB brings it');
    notes.push(`closed loop: wrk -t1 -c50, ${rounds} rounds x ${closedSecs} s; open loop: ${openRounds} rounds x ${openSecs} s at 1000 rps, each request sent when due (never waiting on an answer), its latency counted from its write (bench/loadgen.ts)`);
    return { scenario: '1+6 HTTP (closed loop 50 conns, open loop 1000 rps) and bookkeeping', systems, targets, notes };
  } finally {
    await stopAll();
    rmSync(dir, { recursive: true, force: true });
  }
}
