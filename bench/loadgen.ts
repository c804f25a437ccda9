// Load generator for what wrk does not do: an open-loop HTTP client at a fixed rate, and WebSocket
// clients (paced echo latency, closed-loop throughput, many idle sockets). Runs as its own process
// pinned to the load core; takes one JSON argument and prints one JSON line with its result.
import { randomBytes } from 'node:crypto';
import net, { type LookupFunction } from 'node:net';
import { createInterface } from 'node:readline';
import WebSocket from 'ws';
import { clientFrame } from '../gateway/ws-frames.js';
import { fieldLines, getRequest, responseComplete } from './http-response.js';

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
// performance.now(): microsecond resolution without a BigInt per reading.
const nowUs = () => performance.now() * 1000;
const done = (r: unknown) => { process.stdout.write(`${JSON.stringify(r)}\n`); process.exit(0); };

/**
 * Open loop: requests are due at fixed times, every 1/rate s, each sent when due on an idle connection
 * (a new one if none is idle), never waiting for an answer, so a slow proxy cannot slow the sending
 * (no coordinated omission). Latency counts from each request's write: Node's timers fire up to a
 * millisecond late, and counting from the due time put that jitter of this client's own into every
 * figure (direct's p50 was 0.9 ms, more than the differences between proxies being measured). Raw
 * keep-alive sockets, a request written as prepared bytes and only the response's framing read keep
 * this client's own time per request small and steady (direct's p50 now reads 0.07-0.18 ms). Spinning
 * instead of sleeping between sends was tried: it keeps this core busy, and the unpinned upstream
 * then waits behind it more the busier the proxy's core is. The first warmupMs is sent but not
 * measured (connections opening, code compiling).
 */
async function openLoop() {
  const rate = job.rate ?? 1000;
  const warmupUs = (job.warmupMs ?? 0) * 1000;
  const request = getRequest(job.host, job.headers);
  const lat: number[] = [];
  let errors = 0;
  let sent = 0;
  let outstanding = 0;
  const idle: OpenConn[] = [];
  const t0 = nowUs();
  const total = Math.floor((rate * job.durationMs) / 1000);
  const finish = (c: OpenConn, ok: boolean) => {
    outstanding--;
    if (!ok) { errors++; c.socket.destroy(); return; }
    if (c.due - t0 >= warmupUs) lat.push(nowUs() - c.sentAt);
    idle.push(c);
  };
  const open = (): OpenConn => {
    const c: OpenConn = { socket: net.connect({ host: '127.0.0.1', port: job.port, noDelay: true }), due: 0, sentAt: 0, busy: false, text: '' };
    c.socket.on('data', (d) => {
      if (!c.busy) return;
      c.text += d.toString('latin1');
      const verdict = responseComplete(c.text);
      if (verdict === undefined) return;
      c.busy = false;
      c.text = '';
      finish(c, verdict);
    });
    c.socket.on('error', () => undefined);
    c.socket.on('close', () => { const i = idle.indexOf(c); if (i !== -1) idle.splice(i, 1); if (c.busy) { c.busy = false; finish(c, false); } });
    return c;
  };
  await new Promise<void>((resolve) => {
    const deadline = t0 + job.durationMs * 1000 + 10_000_000;
    const tick = () => {
      const now = nowUs();
      while (sent < total && t0 + (sent * 1e6) / rate <= now) {
        const c = idle.pop() ?? open();
        c.due = t0 + (sent * 1e6) / rate;
        c.busy = true;
        outstanding++;
        sent++;
        c.sentAt = nowUs();
        c.socket.write(request);
      }
      if ((sent >= total && outstanding === 0) || now > deadline) { resolve(); return; }
      setTimeout(tick, 1);
    };
    tick();
  });
  for (const c of idle) c.socket.destroy();
  const s = sortedMicros(lat);
  done({ ok: lat.length, errors: errors + outstanding, p50us: pct(s, 50), p99us: pct(s, 99), achievedRps: lat.length / ((job.durationMs - warmupUs / 1000) / 1000) });
}

interface OpenConn { socket: net.Socket; due: number; sentAt: number; busy: boolean; text: string }

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

/** A binary message as a client sends it (masked, FIN), prepared once. */
const pacedFrame = clientFrame(0x2, payload);

/** `sentAt` and `counted` in step: a message's write time, and whether it was due after the warm-up. */
interface RawWs { socket: net.Socket; sentAt: number[]; counted: boolean[]; pending: Buffer | undefined }

/** A WebSocket on a raw socket: the handshake by hand, then frames read by `onMessage` (with each data frame's payload). */
function openRawWs(onMessage: (c: RawWs, data: Buffer) => void): Promise<RawWs> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port: job.port, noDelay: true });
    const c: RawWs = { socket, sentAt: [], counted: [], pending: undefined };
    // Host and Origin as the ws client sent them before (a browser on that page sends the same pair).
    socket.write(`GET /echo HTTP/1.1\r\nhost: ${job.host}:${job.port}\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: ${randomBytes(16).toString('base64')}\r\nsec-websocket-version: 13\r\norigin: http://${job.host}:${job.port}\r\n${fieldLines(job.headers)}\r\n`);
    let text = '';
    const timer = setTimeout(() => { socket.destroy(); reject(new Error('handshake timeout')); }, 15_000);
    const onHandshake = (d: Buffer) => {
      text += d.toString('latin1');
      const end = text.indexOf('\r\n\r\n');
      if (end === -1) return;
      clearTimeout(timer);
      socket.off('data', onHandshake);
      if (!text.startsWith('HTTP/1.1 101')) { socket.destroy(); reject(new Error(text.split('\r\n')[0])); return; }
      const rest = Buffer.from(text.slice(end + 4), 'latin1');
      c.pending = rest.length ? rest : undefined;
      socket.on('data', (chunk: Buffer) => { c.pending = c.pending ? Buffer.concat([c.pending, chunk]) : chunk; readFrames(c, onMessage); });
      resolve(c);
    };
    socket.on('data', onHandshake);
    socket.on('error', (err) => { clearTimeout(timer); reject(err); });
  });
}

/** Server frames (unmasked): each data frame is one echo; a ping is answered. */
function readFrames(c: RawWs, onMessage: (c: RawWs, data: Buffer) => void) {
  let b = c.pending!;
  for (;;) {
    if (b.length < 2) break;
    let length = b[1] & 0x7f;
    let at = 2;
    if (length === 126) { if (b.length < 4) break; length = b.readUInt16BE(2); at = 4; } else if (length === 127) { c.socket.destroy(); return; }
    if (b.length < at + length) break;
    const opcode = b[0] & 0x0f;
    if (opcode === 0x9) c.socket.write(clientFrame(0xa, b.subarray(at, at + length)));
    else if (opcode < 0x8) onMessage(c, b.subarray(at, at + length));
    b = b.subarray(at + length);
  }
  c.pending = b.length ? b : undefined;
}

/**
 * Paced echo: message k is due at k/rate s, on socket k mod n (so each socket sends every n/rate s),
 * written when due by one ticker as a prepared frame on a raw socket; its round trip counts from
 * that write to its echo's last byte. The ws library's client with a timer per socket put its own
 * allocations and timer batches into every figure (direct's own p99 read 1.1-1.2 ms at 1,000 msg/s,
 * more than the differences between proxies). The first warmupMs is sent but not measured.
 */
async function wsPaced() {
  const n = job.connections ?? 100;
  const rate = job.rate ?? 1000;
  const warmupUs = (job.warmupMs ?? 1000) * 1000;
  const rtt: number[] = [];
  let t0 = 0;
  let outstanding = 0;
  // An answer that is not the message sent is no echo (issue 7: a system must relay, not just answer).
  let wrong = 0;
  const echoed = (c: RawWs, data: Buffer) => {
    const at = c.sentAt.shift();
    const counted = c.counted.shift();
    if (at === undefined) return;
    outstanding--;
    if (!data.equals(payload)) { wrong++; return; }
    if (counted) rtt.push(nowUs() - at);
  };
  const sockets: RawWs[] = [];
  let failed = 0;
  let firstError: string | undefined;
  for (let i = 0; i < n; i += 50) {
    const batch = await Promise.allSettled(Array.from({ length: Math.min(50, n - i) }, () => openRawWs(echoed)));
    for (const r of batch) if (r.status === 'fulfilled') sockets.push(r.value); else { failed++; firstError ??= (r.reason as Error).message; }
  }
  if (sockets.length) {
    t0 = nowUs();
    const total = Math.floor((rate * job.durationMs) / 1000);
    let sent = 0;
    await new Promise<void>((resolve) => {
      const deadline = t0 + job.durationMs * 1000 + 2_000_000;
      const tick = () => {
        const now = nowUs();
        while (sent < total && t0 + (sent * 1e6) / rate <= now) {
          const c = sockets[sent % sockets.length];
          // By when it was due, not when it went: a late ticker must not move warm-up messages into the count.
          c.counted.push((sent * 1e6) / rate >= warmupUs);
          outstanding++;
          sent++;
          c.sentAt.push(nowUs());
          c.socket.write(pacedFrame);
        }
        if ((sent >= total && outstanding === 0) || now > deadline) { resolve(); return; }
        setTimeout(tick, 1);
      };
      tick();
    });
  }
  for (const c of sockets) c.socket.destroy();
  const s = sortedMicros(rtt);
  done({ open: sockets.length, failed, firstError, messages: rtt.length, lost: outstanding, wrong, p50us: pct(s, 50), p99us: pct(s, 99) });
}

/** Closed loop: each socket keeps one message in flight; messages echoed per second. */
async function wsClosed() {
  const n = job.connections ?? 50;
  const { sockets, failed, firstError } = await openSockets(n, 50);
  let count = 0;
  let wrong = 0;
  let running = true;
  for (const ws of sockets) {
    ws.on('message', (data: Buffer) => { if (payload.equals(data)) count++; else wrong++; if (running) ws.send(payload); });
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
  // `echoed`: every message of the run, warm-up included, for CPU per message over the whole job.
  done({ open: sockets.length, failed, firstError, messagesPerSecond: msgs / secs, echoed: count, wrong });
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
