// Scenario 2 of issue 7: WebSocket through each system. Paced echo round trips over 100 connections,
// closed-loop messages per second, and memory per idle connection (RSS delta of the proxy's process
// tree over N open sockets). Interleaved rounds, medians.
import { rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { addTarget, type Figure, type ScenarioResult, type Target } from '../result.js';
import { LOAD_CPU, loadAverage, openFilesLimit, median, round, rssBytes, runToEnd, sleep, start, stop, stopAll } from '../lib.js';
import { startField, workDir, type System } from '../field.js';

const loadgen = join(dirname(fileURLToPath(import.meta.url)), '..', 'loadgen.js');
const rotate = <T>(xs: T[], k: number) => xs.map((_, i) => xs[(i + k) % xs.length]);

async function job<T>(s: System, mode: string, extra: Record<string, unknown>, durationMs: number): Promise<T> {
  const j = { mode, port: s.port, host: s.host, headers: s.headers, durationMs, ...extra };
  const r = await runToEnd(process.execPath, [loadgen, JSON.stringify(j)], { cpu: LOAD_CPU, timeoutMs: durationMs + 30_000 });
  if (r.code !== 0) throw new Error(`${mode} against ${s.name} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as T;
}

/** Opens `count` idle sockets through the system and returns (RSS after - RSS before) / count. */
async function idleMemory(s: System, count: number, log: (s: string) => void): Promise<{ bytesPerConn: number; open: number; failed: number; firstError?: string }> {
  await sleep(1000);
  const before = rssBytes(s.pid);
  const child = start(process.execPath, [loadgen, JSON.stringify({ mode: 'ws-idle', port: s.port, host: s.host, headers: s.headers, durationMs: 120_000, connections: count })],
    { cpu: LOAD_CPU, stdio: ['pipe', 'pipe', 'pipe'] });
  try {
    const line = await new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('idle sockets did not open within 90 s')), 90_000);
      createInterface({ input: child.stdout! }).once('line', (l) => { clearTimeout(t); resolve(l); });
      child.once('exit', (c) => { clearTimeout(t); reject(new Error(`idle load generator exited ${c}`)); });
    });
    const r = JSON.parse(line) as { open: number; failed: number; firstError?: string; openMs: number };
    // Let the proxy settle (buffers released, lazily freed pages); then read its resident memory.
    await sleep(2000);
    const after = rssBytes(s.pid);
    log(`  idle ${s.name}: ${r.open} open (${r.failed} failed) in ${r.openMs} ms, RSS ${(before / 1048576).toFixed(1)} -> ${(after / 1048576).toFixed(1)} MB`);
    return { bytesPerConn: r.open ? (after - before) / r.open : NaN, open: r.open, failed: r.failed, firstError: r.firstError };
  } finally {
    child.stdin?.end('close\n');
    await stop(child, 5000);
    await sleep(1000);
  }
}

export async function run(opts: { quick: boolean; log: (s: string) => void }): Promise<ScenarioResult> {
  const { log } = opts;
  const rounds = opts.quick ? 2 : 4;
  const secs = opts.quick ? 3 : 8;
  // Each idle socket costs the proxy two file descriptors (client and upstream side); the hard limit
  // on open files (20,000 on the reference machine, not raisable without privileges) caps the count.
  const asked = opts.quick ? 5000 : 10_000;
  const wanted = Math.min(asked, Math.floor((openFilesLimit() - 400) / 2));
  const notes: string[] = [];
  if (wanted < asked) notes.push(`idle: ${wanted} sockets instead of ${asked}: the hard open-files limit (${openFilesLimit()}) allows a proxy two descriptors per socket for no more`);
  const dir = workDir();
  try {
    const { up, state, field } = await startField(dir, notes, log);

    type Paced = { open: number; failed: number; firstError?: string; messages: number; p50us: number; p99us: number };
    type Closed = { open: number; failed: number; firstError?: string; messagesPerSecond: number };
    const paced = new Map<string, Paced[]>(field.map((s) => [s.name, []]));
    const closed = new Map<string, Closed[]>(field.map((s) => [s.name, []]));
    for (const s of field) await job<Closed>(s, 'ws-closed', { connections: 50 }, 1000); // warm-up
    for (let r = 0; r < rounds; r++) {
      for (const s of rotate(field, r)) {
        const p = await job<Paced>(s, 'ws-paced', { connections: 100, rate: 1000 }, secs * 1000);
        if (p.failed) notes.push(`${s.name} paced round ${r + 1}: ${p.failed} sockets failed to open (${p.firstError})`);
        paced.get(s.name)!.push(p);
        const c = await job<Closed>(s, 'ws-closed', { connections: 50 }, secs * 1000);
        if (c.failed) notes.push(`${s.name} closed round ${r + 1}: ${c.failed} sockets failed to open (${c.firstError})`);
        closed.get(s.name)!.push(c);
        log(`  ws round ${r + 1}/${rounds} ${s.name}: paced p50 ${(p.p50us / 1000).toFixed(2)} ms p99 ${(p.p99us / 1000).toFixed(2)} ms; closed ${Math.round(c.messagesPerSecond)} msg/s (load ${loadAverage()})`);
      }
    }
    const idle = new Map<string, number>();
    for (const s of field) {
      if (s.name === 'direct') continue;
      try {
        const m = await idleMemory(s, wanted, log);
        if (m.failed) notes.push(`idle ${s.name}: ${m.failed} of ${wanted} sockets failed to open (${m.firstError}); delta divided by the ${m.open} that opened`);
        idle.set(s.name, m.bytesPerConn);
      } catch (err) { notes.push(`idle ${s.name}: ${(err as Error).message}`); }
    }

    const pmed = (n: string, k: 'p50us' | 'p99us') => median((paced.get(n) ?? []).map((p) => p[k]));
    const mps = (n: string) => median((closed.get(n) ?? []).map((c) => c.messagesPerSecond));
    const systems = field.map((s) => {
      const figures: Figure[] = [
        { name: 'echo p50', value: round(pmed(s.name, 'p50us') / 1000), unit: 'ms' },
        { name: 'echo p99', value: round(pmed(s.name, 'p99us') / 1000), unit: 'ms' },
        { name: 'msg/s', value: round(mps(s.name), 0), unit: 'msg/s' },
        { name: 'msg/s / direct', value: round(mps(s.name) / mps('direct')), unit: 'x' },
      ];
      if (idle.has(s.name)) figures.push({ name: 'idle mem/conn', value: round(idle.get(s.name)! / 1024, 2), unit: 'KB' });
      return { system: s.name, figures };
    });
    const targets: Target[] = [];
    const t = (name: string, value: number, limit: number, unit: string, op: '<=' | '>=') => addTarget({ targets, notes }, name, value, limit, unit, op, round);
    t('2: gateway ws msg/s / nginx msg/s', mps('gateway') / mps('nginx'), 1, 'x', '>=');
    t('2: gateway paced echo p99 (limit: nginx\'s)', pmed('gateway', 'p99us') / 1000, pmed('nginx', 'p99us') / 1000, 'ms', '<=');
    t(`2: gateway idle memory per WebSocket (${wanted} open)`, (idle.get('gateway') ?? NaN) / 1024, 6, 'KB', '<=');
    notes.push(`paced: 100 sockets, 1000 msg/s in all, 64-byte messages; closed loop: 50 sockets, one message in flight each; ${rounds} rounds x ${secs} s; idle: ${wanted} sockets, RSS delta of the proxy's process tree after 2 s`);
    return { scenario: '2 WebSocket (paced echo, closed loop, idle memory)', systems, targets, notes };
  } finally {
    await stopAll();
    rmSync(dir, { recursive: true, force: true });
  }
}
