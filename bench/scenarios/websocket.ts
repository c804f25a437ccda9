// Scenario 2 of issue 7: WebSocket through each system. Paced echo round trips over 100 connections,
// closed-loop messages per second, and memory per idle connection (RSS delta of the proxy's process
// tree over N open sockets). Interleaved rounds, medians.
import { rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import type { ChildProcess } from 'node:child_process';
import { addTarget, type Figure, type ScenarioResult, type Target } from '../result.js';
import { LOAD_CPU, cpuMicros, loadAverage, openFilesLimit, median, round, rssBytes, runToEnd, sleep, start, stop, stopAll } from '../lib.js';
import { startField, startLibraryProxy, workDir, type System } from '../field.js';

const loadgen = join(dirname(fileURLToPath(import.meta.url)), '..', 'loadgen.js');
const rotate = <T>(xs: T[], k: number) => xs.map((_, i) => xs[(i + k) % xs.length]);

async function job<T>(s: System, mode: string, extra: Record<string, unknown>, durationMs: number): Promise<T> {
  const j = { mode, port: s.port, host: s.host, headers: s.headers, durationMs, ...extra };
  const r = await runToEnd(process.execPath, [loadgen, JSON.stringify(j)], { cpu: LOAD_CPU, timeoutMs: durationMs + 30_000 });
  if (r.code !== 0) throw new Error(`${mode} against ${s.name} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as T;
}

type IdleResult = { open: number; failed: number; firstError?: string; openMs: number };

/** Starts a load generator holding `count` idle sockets through the system; resolves once they are open. */
async function holdIdle(s: System, count: number, held: ChildProcess[]): Promise<IdleResult> {
  const child = start(process.execPath, [loadgen, JSON.stringify({ mode: 'ws-idle', port: s.port, host: s.host, headers: s.headers, durationMs: 120_000, connections: count })],
    { cpu: LOAD_CPU, stdio: ['pipe', 'pipe', 'pipe'] });
  held.push(child);
  const line = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('idle sockets did not open within 90 s')), 90_000);
    createInterface({ input: child.stdout! }).once('line', (l) => { clearTimeout(t); resolve(l); });
    child.once('exit', (c) => { clearTimeout(t); reject(new Error(`idle load generator exited ${c}`)); });
  });
  return JSON.parse(line) as IdleResult;
}

/** Tells each idle load generator to close its sockets, and waits for it to exit. */
async function releaseIdle(held: ChildProcess[]): Promise<void> {
  for (const child of held) child.stdin?.end('close\n');
  await Promise.all(held.map((child) => stop(child, 5000)));
}

/**
 * Opens `count` idle sockets through the system in two halves. The issue's figure is (RSS after - RSS
 * before) / count; the second half's growth divided by its count is reported beside it: what one
 * more socket costs, without the one-off growth a process makes as it starts holding sockets (V8's
 * young generation alone can take up to 32 MB more resident memory in a Node proxy).
 */
/**
 * The idle memory per socket that is judged: the larger of the whole delta over all sockets and the
 * second half's over its own. The warm-up's freed memory stays resident and the first sockets reuse
 * it, so the whole delta read about a fifth low for every proxy (nginx, deterministic, read 0.80 of
 * its second-half figure in each of 16 stored full runs); the second half reuses none of it. NaN
 * when either is unknown.
 */
export function judgedIdleBytes(whole: number, secondHalf: number): number {
  return Number.isNaN(whole) || Number.isNaN(secondHalf) ? NaN : Math.max(whole, secondHalf);
}

async function idleMemory(s: System, count: number, log: (s: string) => void): Promise<{ bytesPerConn: number; marginalPerConn: number; open: number; failed: number; firstError?: string }> {
  // Warm-up, as every other figure here is taken on a warmed system: a fifth of the sockets opened and
  // closed first, so the baseline is read from a process that has grown its heap and allocator pools
  // for this work (an idle Node process gives its young generation back; opening sockets grows it again).
  const warm: ChildProcess[] = [];
  try { await holdIdle(s, Math.floor(count / 5), warm); } finally { await releaseIdle(warm); }
  await sleep(1000);
  const before = rssBytes(s.pid);
  const held: ChildProcess[] = [];
  try {
    const half = Math.floor(count / 2);
    const a = await holdIdle(s, half, held);
    // Let the proxy settle (buffers released, lazily freed pages); then read its resident memory.
    await sleep(2000);
    const middle = rssBytes(s.pid);
    const b = await holdIdle(s, count - half, held);
    await sleep(2000);
    const after = rssBytes(s.pid);
    const open = a.open + b.open;
    log(`  idle ${s.name}: ${open} open (${a.failed + b.failed} failed) in ${a.openMs} + ${b.openMs} ms, RSS ${(before / 1048576).toFixed(1)} -> ${(middle / 1048576).toFixed(1)} -> ${(after / 1048576).toFixed(1)} MB`);
    return {
      bytesPerConn: open ? (after - before) / open : NaN,
      marginalPerConn: b.open ? (after - middle) / b.open : NaN,
      open, failed: a.failed + b.failed, firstError: a.firstError ?? b.firstError,
    };
  } finally {
    await releaseIdle(held);
    await sleep(1000);
  }
}

export async function run(opts: { quick: boolean; log: (s: string) => void }): Promise<ScenarioResult> {
  const { log } = opts;
  const rounds = opts.quick ? 2 : 4;
  // Two seconds a round in quick mode, which keeps the whole quick run under its five minutes.
  const secs = opts.quick ? 2 : 8;
  // Each idle socket costs the proxy two file descriptors (client and upstream side); the hard limit
  // on open files (20,000 on the reference machine, not raisable without privileges) caps the count.
  const asked = opts.quick ? 5000 : 10_000;
  const wanted = Math.min(asked, Math.floor((openFilesLimit() - 400) / 2));
  const notes: string[] = [];
  if (wanted < asked) notes.push(`idle: ${wanted} sockets instead of ${asked}: the hard open-files limit (${openFilesLimit()}) allows a proxy two descriptors per socket for no more`);
  const dir = workDir();
  try {
    const { up, state, field } = await startField(dir, notes, log);
    // What any Node process pays to pass these bytes (two reads and two writes per echo, nothing parsed):
    // the floor under the gateway's CPU per message, as in scenario 1.
    try { field.push(await startLibraryProxy(up, state.cookie, 'tcp-relay')); } catch (err) { notes.push(`node-relay not run: ${(err as Error).message}`); }

    type Paced = { open: number; failed: number; firstError?: string; messages: number; lost: number; wrong: number; p50us: number; p99us: number };
    type Closed = { open: number; failed: number; firstError?: string; messagesPerSecond: number; echoed: number; wrong: number; cpuUsPerMsg: number };
    const paced = new Map<string, Paced[]>(field.map((s) => [s.name, []]));
    const closed = new Map<string, Closed[]>(field.map((s) => [s.name, []]));
    for (const s of field) await job<Closed>(s, 'ws-closed', { connections: 50 }, 1000); // warm-up
    for (let r = 0; r < rounds; r++) {
      for (const s of rotate(field, r)) {
        // One second more than measured: the first is sent but not counted (bench/loadgen.ts).
        const p = await job<Paced>(s, 'ws-paced', { connections: 100, rate: 1000, warmupMs: 1000 }, secs * 1000 + 1000);
        if (p.failed) notes.push(`${s.name} paced round ${r + 1}: ${p.failed} sockets failed to open (${p.firstError})`);
        if (p.lost) notes.push(`${s.name} paced round ${r + 1}: ${p.lost} messages not echoed`);
        if (p.wrong) notes.push(`${s.name} paced round ${r + 1}: ${p.wrong} answers were not the message sent (not counted)`);
        paced.get(s.name)!.push(p);
        const cpu0 = cpuMicros(s.pid);
        const c = await job<Closed>(s, 'ws-closed', { connections: 50 }, secs * 1000);
        c.cpuUsPerMsg = c.echoed ? (cpuMicros(s.pid) - cpu0) / c.echoed : NaN;
        if (c.failed) notes.push(`${s.name} closed round ${r + 1}: ${c.failed} sockets failed to open (${c.firstError})`);
        if (c.wrong) notes.push(`${s.name} closed round ${r + 1}: ${c.wrong} answers were not the message sent (not counted)`);
        closed.get(s.name)!.push(c);
        log(`  ws round ${r + 1}/${rounds} ${s.name}: paced p50 ${(p.p50us / 1000).toFixed(2)} ms p99 ${(p.p99us / 1000).toFixed(2)} ms; closed ${Math.round(c.messagesPerSecond)} msg/s, ${c.cpuUsPerMsg.toFixed(1)} µs CPU/msg (load ${loadAverage()})`);
      }
    }
    const idle = new Map<string, number>();
    const marginal = new Map<string, number>();
    for (const s of field) {
      if (s.name === 'direct') continue;
      try {
        const m = await idleMemory(s, wanted, log);
        if (m.failed) notes.push(`idle ${s.name}: ${m.failed} of ${wanted} sockets failed to open (${m.firstError}); delta divided by the ${m.open} that opened`);
        idle.set(s.name, m.bytesPerConn);
        marginal.set(s.name, m.marginalPerConn);
      } catch (err) { notes.push(`idle ${s.name}: ${(err as Error).message}`); }
    }

    const pmed = (n: string, k: 'p50us' | 'p99us') => median((paced.get(n) ?? []).map((p) => p[k]));
    const mps = (n: string) => median((closed.get(n) ?? []).map((c) => c.messagesPerSecond));
    const cpuMsg = (n: string) => median((closed.get(n) ?? []).map((c) => c.cpuUsPerMsg));
    const systems = field.map((s) => {
      const figures: Figure[] = [
        { name: 'echo p50', value: round(pmed(s.name, 'p50us') / 1000), unit: 'ms', rounds: (paced.get(s.name) ?? []).map((p) => round(p.p50us / 1000)) },
        { name: 'echo p99', value: round(pmed(s.name, 'p99us') / 1000), unit: 'ms', rounds: (paced.get(s.name) ?? []).map((p) => round(p.p99us / 1000)) },
        { name: 'msg/s', value: round(mps(s.name), 0), unit: 'msg/s', rounds: (closed.get(s.name) ?? []).map((c) => round(c.messagesPerSecond, 0)) },
        { name: 'msg/s / direct', value: round(mps(s.name) / mps('direct')), unit: 'x' },
        { name: 'CPU/msg', value: round(cpuMsg(s.name), 1), unit: 'µs', rounds: (closed.get(s.name) ?? []).map((c) => round(c.cpuUsPerMsg, 1)) },
      ];
      if (idle.has(s.name)) figures.push({ name: 'idle mem/conn', value: round(idle.get(s.name)! / 1024, 2), unit: 'KB' });
      if (marginal.has(s.name)) figures.push({ name: 'second half, per conn', value: round(marginal.get(s.name)! / 1024, 2), unit: 'KB' });
      return { system: s.name, figures };
    });
    const targets: Target[] = [];
    const t = (name: string, value: number, limit: number, unit: string, op: '<=' | '>=') => addTarget({ targets, notes }, name, value, limit, unit, op, round);
    t('2: gateway ws msg/s / nginx msg/s', mps('gateway') / mps('nginx'), 1, 'x', '>=');
    t('2: gateway paced echo p99 (limit: nginx\'s)', pmed('gateway', 'p99us') / 1000, pmed('nginx', 'p99us') / 1000, 'ms', '<=');
    t(`2: gateway idle memory per WebSocket (${wanted} open; the larger of the whole and the second half)`, judgedIdleBytes(idle.get('gateway') ?? NaN, marginal.get('gateway') ?? NaN) / 1024, 6, 'KB', '<=');
    // The closed loop shares two cores between the load generator, the upstream and the proxy: a proxy's
    // CPU per message is what it leaves the other two, and so decides its msg/s as much as its latency does.
    if (closed.has('node-relay')) notes.push(`CPU per echoed message (closed loop, both directions): gateway ${cpuMsg('gateway').toFixed(1)} µs, nginx ${cpuMsg('nginx').toFixed(1)}, chp ${cpuMsg('chp').toFixed(1)}, a bare Node TCP relay ${cpuMsg('node-relay').toFixed(1)} (Node's floor: two reads and two writes, nothing parsed); for direct, the upstream's own`);
    notes.push(`paced: 100 sockets, 1000 msg/s in all (one every 100 ms on each), 64-byte messages written when due as prepared frames on raw sockets by one ticker, each round trip from its write to its echo's last byte, the first second not counted; closed loop: 50 sockets, one message in flight each; ${rounds} rounds x ${secs} s; idle: a fifth of ${wanted} sockets opened and closed (warm-up), then ${wanted} opened in two halves, RSS delta of the proxy's process tree 2 s after each; "idle mem/conn" is the whole delta over all sockets, "second half, per conn" the second half's delta over its sockets; the larger of the two is judged (the warm-up's freed memory, reused by the first sockets, made the whole delta read about a fifth low)`);
    return { scenario: '2 WebSocket (paced echo, closed loop, idle memory)', systems, targets, notes };
  } finally {
    await stopAll();
    rmSync(dir, { recursive: true, force: true });
  }
}
