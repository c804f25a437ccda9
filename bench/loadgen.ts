// Load generator for what wrk does not do: an open-loop HTTP client at a fixed rate, and WebSocket
// clients (paced echo latency, closed-loop throughput, many idle sockets). Runs as its own process
// pinned to the load core; takes one JSON argument and prints one JSON line with its result.
import http from 'node:http';
import type { LookupFunction } from 'node:net';
import { createInterface } from 'node:readline';
import WebSocket from 'ws';

interface Job {
  mode: 'open' | 'ws-paced' | 'ws-closed' | 'ws-idle';
  port: number;
  host: string;
  headers: Record<string, string>;
  durationMs: number;
  /** Open loop: the first part of the run, sent but not measured. */
  warmupMs?: number;
  rate?: number;
  connections?: number;
}

const job = JSON.parse(process.argv[2]) as Job;
// Connect to loopback whatever the Host is, as browsers do for *.localhost.
const loopback = ((_h: string, o: { all?: boolean }, cb: (...a: unknown[]) => void) => {
  if (o && o.all) cb(null, [{ address: '127.0.0.1', family: 4 }]); else cb(null, '127.0.0.1', 4);
}) as unknown as LookupFunction;

function sortedMicros(xs: number[]): Float64Array { return new Float64Array(xs).sort(); }
function pct(s: Float64Array, p: number) { return s.length ? s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] : NaN; }
const nowUs = () => Number(process.hrtime.bigint() / 1000n);
const done = (r: unknown) => { process.stdout.write(`${JSON.stringify(r)}\n`); process.exit(0); };

/**
 * Open loop: requests are due at fixed times; latency counts from when each was due (no coordinated
 * omission). The first warmupMs is sent but not measured: there this client opens its connections
 * and compiles its code, and that ramp (tens of late requests, for every system alike) made p99.
 */
async function openLoop() {
  const rate = job.rate ?? 1000;
  const warmupUs = (job.warmupMs ?? 0) * 1000;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  const lat: number[] = [];
  let errors = 0;
  let sent = 0;
  let outstanding = 0;
  const t0 = nowUs();
  const total = Math.floor((rate * job.durationMs) / 1000);
  await new Promise<void>((resolve) => {
    const fire = (due: number) => {
      outstanding++;
      const req = http.request({ host: '127.0.0.1', port: job.port, path: '/', agent, headers: { host: job.host, ...job.headers } }, (res) => {
        res.resume();
        res.once('end', () => { if (res.statusCode !== 200) errors++; else if (due - t0 >= warmupUs) lat.push(nowUs() - due); if (--outstanding === 0 && sent >= total) resolve(); });
      });
      req.once('error', () => { errors++; if (--outstanding === 0 && sent >= total) resolve(); });
      req.end();
    };
    const tick = () => {
      const now = nowUs();
      while (sent < total && t0 + (sent * 1e6) / rate <= now) { fire(t0 + (sent * 1e6) / rate); sent++; }
      if (sent < total) setTimeout(tick, 1); else if (outstanding === 0) resolve();
    };
    tick();
    setTimeout(resolve, job.durationMs + 10_000).unref();
  });
  agent.destroy();
  const s = sortedMicros(lat);
  done({ ok: lat.length, errors, p50us: pct(s, 50), p99us: pct(s, 99), achievedRps: lat.length / ((job.durationMs - warmupUs / 1000) / 1000) });
}

function openSockets(n: number, parallel: number): Promise<{ sockets: WebSocket[]; failed: number; firstError?: string }> {
  return new Promise((resolve) => {
    const sockets: WebSocket[] = [];
    let failed = 0;
    let firstError: string | undefined;
    let started = 0;
    let settled = 0;
    const next = () => {
      if (started >= n) return;
      started++;
      const ws = new WebSocket(`ws://${job.host}:${job.port}/echo`, {
        lookup: loopback, headers: job.headers, origin: `http://${job.host}:${job.port}`, perMessageDeflate: false, handshakeTimeout: 15_000,
      });
      const fin = (ok: boolean, why?: string) => {
        if (ok) sockets.push(ws); else { failed++; firstError ??= why; }
        if (++settled === n) resolve({ sockets, failed, firstError }); else next();
      };
      ws.once('open', () => fin(true));
      ws.once('unexpected-response', (_q, res) => { res.resume(); fin(false, `HTTP ${res.statusCode}`); });
      ws.once('error', (e) => { if (ws.readyState !== WebSocket.OPEN) fin(false, e.message); });
    };
    if (n === 0) resolve({ sockets, failed: 0 });
    for (let i = 0; i < Math.min(parallel, n); i++) next();
  });
}

const payload = Buffer.alloc(64, 'm');

/** Paced echo: every socket sends at rate/connections per second with a random phase; RTT per message. */
async function wsPaced() {
  const n = job.connections ?? 100;
  const { sockets, failed, firstError } = await openSockets(n, 50);
  const rtt: number[] = [];
  const interval = (n * 1000) / (job.rate ?? 1000);
  const timers: NodeJS.Timeout[] = [];
  for (const ws of sockets) {
    const inflight: number[] = [];
    ws.on('message', () => { const t = inflight.shift(); if (t !== undefined) rtt.push(nowUs() - t); });
    const phase = setTimeout(() => {
      timers.push(setInterval(() => { inflight.push(nowUs()); ws.send(payload); }, interval));
    }, Math.random() * interval);
    timers.push(phase);
  }
  await new Promise((r) => setTimeout(r, job.durationMs));
  for (const t of timers) clearInterval(t);
  await new Promise((r) => setTimeout(r, 200));
  for (const ws of sockets) ws.terminate();
  const s = sortedMicros(rtt);
  done({ open: sockets.length, failed, firstError, messages: rtt.length, p50us: pct(s, 50), p99us: pct(s, 99) });
}

/** Closed loop: each socket keeps one message in flight; messages echoed per second. */
async function wsClosed() {
  const n = job.connections ?? 50;
  const { sockets, failed, firstError } = await openSockets(n, 50);
  let count = 0;
  let running = true;
  for (const ws of sockets) {
    ws.on('message', () => { count++; if (running) ws.send(payload); });
  }
  for (const ws of sockets) ws.send(payload);
  const warm = Math.min(1000, job.durationMs / 4);
  await new Promise((r) => setTimeout(r, warm));
  const c0 = count;
  const t0 = nowUs();
  await new Promise((r) => setTimeout(r, job.durationMs - warm));
  const msgs = count - c0;
  const secs = (nowUs() - t0) / 1e6;
  running = false;
  for (const ws of sockets) ws.terminate();
  done({ open: sockets.length, failed, firstError, messagesPerSecond: msgs / secs });
}

/** Idle: open N sockets, report, hold them until told (stdin line) or the deadline, then close. */
async function wsIdle() {
  const n = job.connections ?? 5000;
  const t0 = Date.now();
  const { sockets, failed, firstError } = await openSockets(n, 100);
  process.stdout.write(`${JSON.stringify({ open: sockets.length, failed, firstError, openMs: Date.now() - t0 })}\n`);
  await new Promise<void>((resolve) => {
    createInterface({ input: process.stdin }).once('line', () => resolve());
    process.stdin.once('end', () => resolve());
    setTimeout(resolve, job.durationMs).unref();
  });
  for (const ws of sockets) ws.terminate();
  process.exit(0);
}

const modes = { 'open': openLoop, 'ws-paced': wsPaced, 'ws-closed': wsClosed, 'ws-idle': wsIdle };
modes[job.mode]().catch((err) => { process.stderr.write(`${(err as Error).stack}\n`); process.exit(1); });
