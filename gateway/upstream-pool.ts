// Keep-alive HTTP/1.1 connections to workspaces for the warm lane (gateway/http1.ts): the request
// head is written as one string and the response parsed with llhttp, its body bytes passed on as
// they come, with no node:http or undici objects per request (issue 7: those were most of the CPU
// of a proxied request). Per workspace endpoint at most `maxSockets` connections, idle ones kept for
// `idleMs` (below code-server's own 5 s keep-alive), LIFO so the warmest is reused.
import net from 'node:net';
import { isMisdirected, type RequestBody } from './http-fields.js';
import { PARSE_ON, SKIP_BODY, createParser, releaseParser, restartParser, stopForBody, type Parser, type ParserEvents } from './llhttp.js';
import { scanSimpleHead, type SimpleHead } from './response-head.js';
import { READ_BUFFER_BYTES } from './socket-reads.js';
import { challengeHead, checkAnswer, identityFailure, newNonce, type Claim, type IdentityReason, type Upstream } from './workspace-proof.js';

export type BodyMode = RequestBody;
/** How the response's body is delimited on the upstream connection (RFC 9112 6.3). */
export type Framing = 'none' | 'length' | 'chunked' | 'close';
export type UpstreamFailure = 'UPSTREAM_UNREACHABLE' | 'UPSTREAM_TIMEOUT' | 'UPSTREAM_BAD_RESPONSE';

export interface UpstreamRequest {
  method: string;
  /** Request line and fields, each ending in CRLF, without the blank line or Transfer-Encoding. */
  head: string;
  body: BodyMode;
}

/** Where one response goes. Calls arrive in order: head, data*, end; or fail at any point. */
export interface ResponseSink {
  head(status: number, statusText: string, fields: string[], framing: Framing): void;
  /**
   * Instead of head(), where the sink has it, for a simple head (response-head.ts: a Content-Length
   * body): the head is `bytes[0, head.end)`, in the pool's read buffer, so it is valid only until the
   * sink's next data(), flush() or end(), one of which follows before the read returns.
   */
  passHead?(status: number, bytes: Buffer, head: SimpleHead): void;
  /**
   * Body bytes, valid for this call only unless `own`: they are in the pool's read buffer, which the
   * next read overwrites, and a sink that passes them on asynchronously (a write that may queue) copies
   * them. `own`: a Buffer of their own (node's parser copies chunked and close-delimited bodies), kept as
   * it is. False: stop reading the upstream until exchange.resume().
   */
  data(chunk: Buffer, own?: boolean): boolean;
  /** One read from the upstream has been passed on: anything held back to join later bytes goes now. */
  flush(): void;
  end(): void;
  fail(code: UpstreamFailure, error: Error): void;
  /** The request body may flow again after Exchange.body() returned false. */
  drain(): void;
}

export interface PoolOptions {
  connectTimeoutMs: number;
  /** No response head within this long of the request -> UPSTREAM_TIMEOUT. */
  responseTimeoutMs: number;
  maxSockets: number;
  idleMs: number;
}

/** Safe to send again on a new connection when a reused one turns out closed (RFC 9110 9.2.2). */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'DELETE']);
const QUEUED_BODY_LIMIT = 64 * 1024;
const CRLF = '\r\n';
/** The zero-length chunk that ends a chunked body (RFC 9112 7.1), with no trailer fields. */
export const LAST_CHUNK = '0\r\n\r\n';

/** `claim`: every new connection proves it reaches this workspace before it carries a request (workspace-proof.ts). */
interface Pool { host: string; port: number; claim: Claim | undefined; key: string; idle: Conn[]; open: number; queue: Exchange[] }

/** One request and its response. */
export class Exchange {
  conn: Conn | undefined;
  attempt = 0;
  headSeen = false;
  bodyDone: boolean;
  done = false;
  pending: Buffer[] | undefined;
  pendingBytes = 0;
  waitingDrain = false;
  /**
   * While queued: when it fails with UPSTREAM_TIMEOUT if no connection has come free (Date.now() ms),
   * one limit from its arrival or its body's last piece. Once sent, the latest its response head is
   * due (Conn.awaitResponse); 0: never queued.
   */
  queuedUntil = 0;
  constructor(readonly owner: UpstreamPool, readonly pool: Pool, readonly request: UpstreamRequest, readonly sink: ResponseSink) {
    this.bodyDone = request.body === 'none';
  }

  /** A piece of the request body, as the client's parser decoded it. */
  body(chunk: Buffer): boolean {
    if (this.done || chunk.length === 0) return true;
    this.pieceArrived();
    if (this.conn) {
      const ok = writeBody(this.conn.socket, this.request.body, chunk);
      if (!ok) this.waitingDrain = true;
      return ok;
    }
    (this.pending ??= []).push(chunk);
    this.pendingBytes += chunk.length;
    if (this.pendingBytes < QUEUED_BODY_LIMIT) return true;
    this.waitingDrain = true;
    return false;
  }

  end(): void {
    if (this.bodyDone) return;
    this.bodyDone = true;
    if (this.done) return;
    this.pieceArrived();
    if (this.conn && this.request.body === 'chunked') this.conn.socket.write(LAST_CHUNK);
  }

  /**
   * A body on its way counts as activity: UPSTREAM_TIMEOUT runs from its last piece (the request is
   * still arriving), whether it is waiting in the queue, for its connection or for the response. A
   * piece that came while queued used to count for nothing, so a slow upload to a busy workspace got
   * 504 one limit from its arrival. Not once the response has begun: its body has no deadline, and a
   * new one would cut it.
   */
  /** Waited (queued, or for its new connection's proof) past its UPSTREAM_TIMEOUT, and not yet failed. */
  overdue(now: number): boolean { return !this.done && this.queuedUntil !== 0 && this.queuedUntil <= now; }

  private pieceArrived(): void {
    if (this.headSeen) return;
    if (this.conn?.connected) { this.queuedUntil = 0; this.conn.awaitResponse(); }
    else if (this.queuedUntil !== 0) this.queuedUntil = Date.now() + this.owner.opts.responseTimeoutMs;
  }

  /** The sink can take more of the response. */
  resume(): void { this.conn?.socket.resume(); }

  /** The client went away: nothing more is sent anywhere. */
  abort(): void {
    if (this.done) return;
    this.done = true;
    const conn = this.conn;
    if (conn) { conn.exchange = undefined; conn.socket.destroy(); return; }
    this.owner.dequeue(this.pool, this);
  }
}

function writeBody(socket: net.Socket, mode: BodyMode, chunk: Buffer): boolean {
  return mode === 'chunked' ? writeChunk(socket, chunk) : socket.write(chunk);
}

/** One chunk of a chunked body (RFC 9112 7.1), in one write; false as socket.write() says it. */
export function writeChunk(socket: net.Socket, chunk: Buffer): boolean {
  socket.cork();
  socket.write(chunk.length.toString(16) + CRLF);
  socket.write(chunk);
  const ok = socket.write(CRLF);
  socket.uncork();
  return ok;
}

/** One upstream connection and its response parser. */
class Conn implements ParserEvents {
  readonly socket: net.Socket;
  readonly parser: Parser;
  exchange: Exchange | undefined;
  connected = false;
  reused = false;
  gotBytes = false;
  interim = false;
  keepAlive = true;
  framing: Framing = 'none';
  /**
   * A Content-Length body's bytes still to come, counted here rather than by the parser (undefined:
   * the parser reads the body). Node's parser copied each body chunk into a new Buffer and called
   * into JavaScript twice more per response (body, completion): 9 k of a warm request's 77 k
   * instructions (bench/instructions.ts); a length is all there is to count.
   */
  bodyLeft: number | undefined;
  /** The parser has seen none of the current response: its head may be read by scanSimpleHead. */
  fresh = true;
  /** The parser stopped after a head (stopForBody) and must be restarted for the next response. */
  stopped = false;
  timedOut = false;
  /** Closed for what the workspace sent (llhttp refused it, or a transfer coding we cannot undo). */
  unreadable = false;
  /**
   * While the workspace has not yet proven who it is: the request that waits for it (not yet written,
   * its body held by the Exchange) and the challenge's nonce and answer so far.
   */
  awaiting: Exchange | undefined;
  nonce: string | undefined;
  answer: Buffer | undefined;
  /**
   * Closed because the server at this address is not the workspace meant: its answer to the
   * challenge was no valid proof, or it refused a request as meant for another workspace (a marked
   * 421: a stale route to a reused address). Failed as UPSTREAM_UNREACHABLE, so the route is
   * re-checked, and nothing of its answer reaches the client.
   */
  unproven: IdentityReason | undefined;
  /**
   * `unproven` was set by a complete answer (to the challenge, or a marked 421): definite about the
   * server at this address. A close or timeout before an answer leaves it false (IdentityFailure).
   */
  answered = false;
  /** When the pool's sweep closes this connection (Date.now() ms; 0: never): connecting, awaiting a head, or idle. */
  deadline = 0;
  /** In read(): a response completed now waits for the read's end to free the connection (releasing). */
  reading = false;
  releasing = false;

  constructor(readonly pool: Pool, readonly owner: UpstreamPool, maxHeaderSize: number) {
    // Reads land in the pool's one buffer (net's `onread`), not in a new Buffer pushed through a
    // Readable stream each: the stream's per-read work (push, nextTick, maybeReadMore) was 7.8 k of a
    // warm request's 70 k instructions and 0.75 KB of its 5.6 KB of garbage (bench/instructions.ts,
    // bench/allocations.ts). What a sink keeps, it copies (ResponseSink.data).
    this.socket = net.connect({ host: pool.host, port: pool.port, noDelay: true, onread: { buffer: owner.readBuffer, callback: (n) => { this.read(owner.readBuffer.subarray(0, n)); return true; } } });
    this.parser = createParser('response', maxHeaderSize, this);
    const socket = this.socket;
    socket.on('connect', () => { this.connected = true; if (this.exchange) this.awaitResponse(); });
    // A response delimited by the connection's close ends here (RFC 9112 6.3, item 8).
    socket.on('end', () => { if (this.exchange && this.framing === 'close') this.parser.finish(); socket.end(); });
    socket.on('drain', () => {
      const ex = this.exchange;
      if (ex?.waitingDrain) { ex.waitingDrain = false; ex.sink.drain(); }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => owner.closed(this));
  }

  /**
   * One read from the workspace: a view of the pool's read buffer. A response that ends inside it
   * frees the connection only once all of it is read: bytes behind that response (a workspace
   * answering twice, or past its body) spend the connection, and a queued request given it first
   * was lost with it, or read that stray answer as its own.
   */
  read(d: Buffer): void {
    if (this.nonce !== undefined) { this.checkProof(d); return; }
    this.reading = true;
    this.take(d);
    this.reading = false;
    if (this.releasing) { this.releasing = false; this.owner.release(this); }
  }

  take(d: Buffer): void {
    // Bytes on an idle connection answer nothing we asked: it cannot be trusted with the next request.
    const ex = this.exchange;
    if (!ex) { this.socket.destroy(); return; }
    this.gotBytes = true;
    if (this.bodyLeft !== undefined) { this.countBody(ex, d); return; }
    if (this.fresh && ex.sink.passHead && ex.request.method !== 'HEAD') {
      const simple = scanSimpleHead(d, this.owner.maxHeaderSize);
      // A 421 goes to llhttp, whose fields say whether it is a workspace's refusal (onHeadersComplete).
      if (simple && simple.status !== 421) { this.passHead(ex, d, simple); return; }
    }
    this.fresh = false;
    const r = this.parser.execute(d);
    if (typeof r !== 'number') { this.unreadable = true; this.socket.destroy(r); }
    else if (this.bodyLeft !== undefined) { this.countBody(ex, r < d.length ? d.subarray(r) : undefined); return; }
    ex.sink.flush();
  }

  /**
   * Sends the challenge, ahead of any request: `ex` is written only once the answer proves the
   * workspace (proven), within the connect timeout the connection already has.
   */
  challenge(claim: Claim, ex: Exchange): void {
    this.awaiting = ex;
    this.nonce = newNonce();
    this.socket.write(challengeHead(this.pool.host, this.pool.port, claim, this.nonce), 'latin1');
  }

  /** The challenge's answer, as it comes (copied: reads land in the pool's one buffer). */
  checkProof(d: Buffer): void {
    this.answer = this.answer === undefined ? Buffer.from(d) : Buffer.concat([this.answer, d]);
    const verdict = checkAnswer(this.answer, this.pool.claim!, this.nonce!);
    if (verdict === 'more') return;
    this.answer = undefined;
    if (verdict !== 'proven') { this.unproven = verdict; this.answered = true; this.socket.destroy(); return; }
    this.nonce = undefined;
    const ex = this.awaiting!;
    this.awaiting = undefined;
    this.gotBytes = false;
    // Its client may have left meanwhile, or its UPSTREAM_TIMEOUT run out (the sweep not yet round):
    // the proven connection serves the next request instead. Sent late, its response was due at once
    // and the sweep closed this connection under it, the workspace at work on it.
    if (ex.overdue(Date.now())) this.owner.queueTimeout(ex);
    if (ex.done) this.owner.release(this); else this.owner.start(this, ex);
  }

  /** A simple head (response-head.ts) goes to the sink as its bytes; llhttp sees nothing of this response. */
  passHead(ex: Exchange, d: Buffer, head: SimpleHead): void {
    this.deadline = 0;
    this.keepAlive = true;
    this.framing = 'length';
    ex.headSeen = true;
    ex.sink.passHead!(head.status, d, head);
    this.bodyLeft = head.contentLength;
    this.countBody(ex, head.end < d.length ? d.subarray(head.end) : undefined);
  }

  /** Body bytes of a Content-Length response, passed on as they come; the response ends with the last. */
  countBody(ex: Exchange, bytes: Buffer | undefined): void {
    const left = this.bodyLeft!;
    // More than the body: the workspace answered something we did not ask, so the connection is spent.
    const extra = bytes !== undefined && bytes.length > left;
    if (bytes !== undefined && left > 0) {
      const body = extra ? bytes.subarray(0, left) : bytes;
      this.bodyLeft = left - body.length;
      if (!ex.sink.data(body)) this.socket.pause();
    }
    if (this.bodyLeft! > 0) { ex.sink.flush(); return; }
    this.bodyLeft = undefined;
    if (this.stopped) { this.stopped = false; restartParser(this.parser, 'response', this.owner.maxHeaderSize); }
    this.onMessageComplete();
    if (extra) this.socket.destroy();
  }

  /**
   * The response's head is due within the response timeout from now, or by the queue's deadline for a
   * request that waited for this connection: UPSTREAM_TIMEOUT (README) is the wait for a free
   * connection and for the head together, from the request's arrival. A fresh limit here allowed twice it.
   */
  awaitResponse(): void {
    const due = Date.now() + this.owner.opts.responseTimeoutMs;
    const queued = this.exchange === undefined ? 0 : this.exchange.queuedUntil;
    this.deadline = queued !== 0 && queued < due ? queued : due;
  }

  // ---------------------------------------------------------------- the response parser's events
  // Node's parser hands each body chunk over as a copy of its own: the sink need not copy it again.
  onBody(chunk: Buffer): void { const ex = this.exchange; if (ex && !ex.sink.data(chunk, true)) this.socket.pause(); }
  onMessageComplete(): void {
    if (this.interim) { this.interim = false; return; }
    this.fresh = true;
    this.owner.finish(this);
  }
  onHeadersComplete(_maj: number, _min: number, fields: string[], _m: number, _u: string, status: number, statusText: string, upgrade: boolean, keepAlive: boolean): number {
    const ex = this.exchange;
    // A response to nothing asked (bytes behind the last one): the connection cannot be trusted again.
    if (!ex) { this.socket.destroy(); return PARSE_ON; }
    // 1xx (RFC 9110 15.2) are interim: the final response follows. A 101 was never asked for.
    if (status < 200) {
      // Stopped here: llhttp would report the 101 complete at once, and the request end with no response.
      if (status === 101 || upgrade) { this.unreadable = true; this.socket.destroy(new Error('unexpected 101 from upstream')); return stopForBody(this.parser); }
      this.interim = true;
      return PARSE_ON;
    }
    this.deadline = 0;
    if (isMisdirected(status, fields)) { this.unproven = 'misdirected'; this.answered = true; this.socket.destroy(); return stopForBody(this.parser); }
    this.keepAlive = keepAlive;
    const head = ex.request.method === 'HEAD';
    const body = head || status === 204 || status === 304 ? { framing: 'none' as const } : framingOf(fields);
    // Before any of it reaches the client: the request fails as one the workspace answered unreadably does.
    // The parser stops here, so none of its body is passed on either.
    if (body.framing === 'unsupported') { this.unreadable = true; this.socket.destroy(new Error('upstream used a transfer coding other than chunked')); return stopForBody(this.parser); }
    this.framing = body.framing;
    ex.headSeen = true;
    ex.sink.head(status, statusText, fields, this.framing);
    if (head) return SKIP_BODY;
    if (body.length === undefined) return PARSE_ON;
    this.bodyLeft = body.length;
    this.stopped = true;
    return stopForBody(this.parser);
  }
}

/**
 * RFC 9112 6.3 for a response that may have a body: chunked, a length, or until the connection closes;
 * with a length, its value (llhttp checked the field: digits, one value).
 */
export function framingOf(fields: readonly string[]): { framing: Framing | 'unsupported'; length?: number } {
  let length: string | undefined;
  let coding: string | undefined;
  let codings = 0;
  for (let i = 0; i < fields.length; i += 2) {
    const n = fields[i];
    if (n.length === 17 && n.toLowerCase() === 'transfer-encoding') { coding = fields[i + 1]; codings++; }
    if (n.length === 14 && n.toLowerCase() === 'content-length') length = fields[i + 1];
  }
  // Chunked alone is the only transfer coding undone here. Another one (gzip) would have to be decoded
  // before the body goes on re-framed, and without chunked last the body runs to the close (RFC 9112
  // 6.3), which was taken for chunks and never ended: refused instead.
  if (codings > 0) return codings === 1 && coding!.trim().toLowerCase() === 'chunked' ? { framing: 'chunked' } : { framing: 'unsupported' };
  return length !== undefined ? { framing: 'length', length: Number(length) } : { framing: 'close' };
}

export class UpstreamPool {
  private readonly pools = new Map<string, Pool>();
  private readonly keys = new WeakMap<Upstream, string>();
  private readonly conns = new Set<Conn>();
  private closing = false;
  /** Requests waiting in all pools' queues: the sweep looks at the queues only when there are some. */
  private queued = 0;
  /** Every connection's reads land here (Conn): one read runs at a time, and what outlives it is copied. */
  readonly readBuffer = Buffer.allocUnsafe(READ_BUFFER_BYTES);
  /**
   * Timeouts by one sweep over the connections: socket.setTimeout() made a timer and a bound function
   * per call, three calls per request (connect or response, none, idle), and refreshed it on every
   * read and write. An eighth of the shortest timeout (at most 0.5 s) keeps the idle close (4 s) well
   * ahead of code-server's own keep-alive close (5 s), which would race a request sent as it closes.
   */
  private readonly sweep: NodeJS.Timeout;
  constructor(readonly opts: PoolOptions, readonly maxHeaderSize = 16 * 1024) {
    const every = Math.max(10, Math.min(500, Math.floor(Math.min(opts.connectTimeoutMs, opts.responseTimeoutMs, opts.idleMs) / 8)));
    this.sweep = setInterval(() => this.expire(Date.now()), every);
    this.sweep.unref();
  }

  /**
   * Connections past their deadline close; one awaiting a response fails it with UPSTREAM_TIMEOUT. So
   * does a request queued that long: the connections it waits for may be held by downloads a client
   * stopped reading, or bodies a workspace stopped sending, which have no deadline.
   */
  expire(now: number): void {
    for (const conn of this.conns) {
      // A queued request whose new connection is still proving itself fails at its own deadline, not
      // the connect timeout's; the connection goes on, for the next request (Conn.checkProof).
      const waiting = conn.awaiting;
      if (waiting?.overdue(now)) this.queueTimeout(waiting);
      if (conn.deadline === 0 || conn.deadline > now) continue;
      conn.deadline = 0;
      conn.timedOut = conn.exchange !== undefined || conn.awaiting !== undefined;
      conn.socket.destroy();
    }
    if (this.queued === 0) return;
    for (const pool of this.pools.values()) {
      // Not in the queue's order: a body piece moves a queued request's deadline on (Exchange.pieceArrived).
      for (let i = 0; i < pool.queue.length;) {
        const ex = pool.queue[i];
        if (ex.queuedUntil > now) i++;
        else this.queueTimeout(this.dequeue(pool, ex)!);
      }
    }
  }

  /** A request that waited its UPSTREAM_TIMEOUT for a connection (queued, or its new one proving itself). */
  queueTimeout(ex: Exchange): void {
    ex.done = true;
    ex.sink.fail('UPSTREAM_TIMEOUT', new Error('no upstream connection came free in time'));
  }

  /**
   * The next queued request for a connection that came free. One already past its deadline (the sweep
   * not yet round) fails now, as the sweep would fail it: sent, its response would be due at once, and
   * the sweep would then close a good connection under it.
   */
  private nextInTime(pool: Pool): Exchange | undefined {
    let next = this.dequeue(pool);
    if (next === undefined) return undefined;
    const now = Date.now();
    while (next !== undefined && next.queuedUntil <= now) { this.queueTimeout(next); next = this.dequeue(pool); }
    return next;
  }

  private enqueue(pool: Pool, ex: Exchange): void {
    ex.queuedUntil = Date.now() + this.opts.responseTimeoutMs;
    pool.queue.push(ex);
    this.queued++;
  }

  /** The next queued request, if any; also for one whose client left (Exchange.abort). */
  dequeue(pool: Pool, ex?: Exchange): Exchange | undefined {
    if (ex === undefined) {
      const next = pool.queue.shift();
      if (next !== undefined) this.queued--;
      return next;
    }
    const i = pool.queue.indexOf(ex);
    if (i === -1) return undefined;
    this.queued--;
    return pool.queue.splice(i, 1)[0];
  }

  send(endpoint: Upstream, request: UpstreamRequest, sink: ResponseSink): Exchange {
    const key = this.keyOf(endpoint);
    let pool = this.pools.get(key);
    if (!pool) { pool = { host: endpoint.host, port: endpoint.port, claim: endpoint.claim, key, idle: [], open: 0, queue: [] }; this.pools.set(key, pool); }
    const ex = new Exchange(this, pool, request, sink);
    // Never synchronously: the caller may be inside its own parser's callback.
    if (this.closing) { process.nextTick(() => { ex.done = true; sink.fail('UPSTREAM_UNREACHABLE', new Error('gateway closing')); }); return ex; }
    // One the sweep (or the workspace's FIN) has just closed stays listed until its 'close', a phase of
    // the event loop later: a request read in between must not be written to it.
    let idle = pool.idle.pop();
    while (idle !== undefined && !idle.socket.writable) idle = pool.idle.pop();
    if (idle) this.start(idle, ex);
    else if (pool.open < this.opts.maxSockets) this.startNew(pool, ex);
    else this.enqueue(pool, ex);
    return ex;
  }

  /**
   * A route's endpoint is one object for as long as the route is cached: its key is built and hashed
   * once, not for every request (bench/instructions.ts).
   */
  private keyOf(endpoint: Upstream): string {
    let key = this.keys.get(endpoint);
    if (key === undefined) {
      // A connection proven for one start is never lent to another's request: a stale route and the
      // live one may name the same address.
      const claim = endpoint.claim;
      key = claim === undefined ? `${endpoint.host}:${endpoint.port}` : `${endpoint.host}:${endpoint.port}#${claim.workspaceId}#${claim.key}`;
      this.keys.set(endpoint, key);
    }
    return key;
  }

  /** Connections open to all workspaces (for leak checks). */
  size(): number { return this.conns.size; }

  close(): void {
    this.closing = true;
    clearInterval(this.sweep);
    for (const pool of this.pools.values()) {
      this.queued -= pool.queue.length;
      for (const ex of pool.queue.splice(0)) ex.sink.fail('UPSTREAM_UNREACHABLE', new Error('gateway closing'));
      for (const conn of pool.idle.splice(0)) conn.socket.destroy();
    }
  }

  private connect(pool: Pool): Conn {
    pool.open++;
    const conn = new Conn(pool, this, this.maxHeaderSize);
    this.conns.add(conn);
    return conn;
  }

  /** A new connection for `ex`: the request goes at once, or once the workspace has proven itself. */
  private startNew(pool: Pool, ex: Exchange): void {
    const conn = this.connect(pool);
    if (pool.claim === undefined) { this.start(conn, ex); return; }
    conn.deadline = Date.now() + this.opts.connectTimeoutMs;
    conn.challenge(pool.claim, ex);
  }

  start(conn: Conn, ex: Exchange): void {
    conn.exchange = ex;
    conn.gotBytes = false;
    conn.framing = 'none';
    ex.conn = conn;
    const socket = conn.socket;
    if (conn.connected) conn.awaitResponse(); else conn.deadline = Date.now() + this.opts.connectTimeoutMs;
    // Parsed field values hold one byte per character (obs-text, RFC 9110 5.5): latin1 writes those bytes.
    if (ex.request.body === 'none') { socket.write(`${ex.request.head}\r\n`, 'latin1'); return; }
    // Head and whatever body is already here leave in one write (writev) once this tick ends.
    socket.cork();
    socket.write(ex.request.body === 'chunked' ? `${ex.request.head}transfer-encoding: chunked\r\n\r\n` : `${ex.request.head}\r\n`, 'latin1');
    if (ex.pending) {
      for (const chunk of ex.pending) writeBody(socket, ex.request.body, chunk);
      ex.pending = undefined;
      ex.pendingBytes = 0;
    }
    if (ex.bodyDone && ex.request.body === 'chunked') socket.write(LAST_CHUNK);
    process.nextTick(uncork, socket);
    if (ex.waitingDrain && !socket.writableNeedDrain) { ex.waitingDrain = false; ex.sink.drain(); }
  }

  /** Response complete; the connection goes back to the pool once the request has been sent too. */
  finish(conn: Conn): void {
    const ex = conn.exchange;
    if (!ex) return;
    if (!ex.done) { ex.done = true; ex.sink.end(); }
    if (!ex.bodyDone) {
      // The upstream answered before the body was all sent (a 413, say): this connection is spent.
      conn.exchange = undefined;
      conn.socket.destroy();
      return;
    }
    conn.exchange = undefined;
    ex.conn = undefined;
    if (!conn.keepAlive || conn.framing === 'close') { conn.socket.destroy(); return; }
    if (conn.reading) conn.releasing = true; else this.release(conn);
  }

  /** A kept-alive connection after its response: the next queued request's, or idle. */
  release(conn: Conn): void {
    if (this.closing || conn.socket.destroyed) { conn.socket.destroy(); return; }
    // Paused by the last response's backpressure: reading again is how an idle connection's close is
    // noticed, and the next response must be read at all (the workbench's second file hung on it).
    conn.socket.resume();
    conn.reused = true;
    const pool = conn.pool;
    const next = this.nextInTime(pool);
    if (next) { this.start(conn, next); return; }
    conn.deadline = Date.now() + this.opts.idleMs;
    pool.idle.push(conn);
  }

  closed(conn: Conn): void {
    releaseParser(conn.parser);
    const pool = conn.pool;
    pool.open--;
    this.conns.delete(conn);
    const i = pool.idle.indexOf(conn);
    if (i !== -1) pool.idle.splice(i, 1);
    const ex = conn.exchange ?? conn.awaiting;
    conn.exchange = undefined;
    conn.awaiting = undefined;
    if (ex && !ex.done) {
      ex.conn = undefined;
      // A kept-alive connection the upstream closed as we used it: one more try on a new one, for
      // requests without a body that are safe to repeat (issue 8).
      // Not one we timed out ourselves: the workspace has it and may still be at it.
      if (conn.reused && !conn.gotBytes && !conn.timedOut && ex.attempt === 0 && ex.request.body === 'none' && IDEMPOTENT.has(ex.request.method) && !this.closing) {
        ex.attempt = 1;
        this.startNew(pool, ex);
      } else {
        ex.done = true;
        // Connected but closed, timed out or answered otherwise before a proof: not the workspace.
        const identity = conn.unproven ?? (conn.nonce !== undefined && conn.connected ? 'unproven' : undefined);
        const code: UpstreamFailure = conn.unreadable ? 'UPSTREAM_BAD_RESPONSE' : identity === undefined && conn.timedOut && !ex.headSeen ? 'UPSTREAM_TIMEOUT' : 'UPSTREAM_UNREACHABLE';
        ex.sink.fail(code, identity !== undefined ? identityFailure(identity, conn.answered) : new Error(conn.unreadable ? 'upstream response not passed on'
          : conn.timedOut ? 'upstream timed out' : conn.connected ? 'upstream connection closed' : 'upstream connection failed'));
      }
    }
    // The closed connection's place goes to the next queued request, unless the retry above took it:
    // open counts the retry's connection already, and maxSockets holds for both.
    if (pool.queue.length > 0 && pool.open < this.opts.maxSockets) { const next = this.nextInTime(pool); if (next) this.startNew(pool, next); }
    if (pool.queue.length === 0 && pool.open === 0) this.pools.delete(pool.key);
  }
}

/** For process.nextTick: a corked socket's writes leave together once the tick ends. */
export function uncork(socket: net.Socket) { socket.uncork(); }

export function createUpstreamPool(opts: PoolOptions, maxHeaderSize?: number): UpstreamPool {
  return new UpstreamPool(opts, maxHeaderSize);
}
