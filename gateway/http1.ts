// The public port's connections. Each starts on the warm lane: requests are parsed here with llhttp
// and, when the request path can decide at once (a workspace host, a cached session, a cached
// route: `plan`), forwarded through the upstream pool with no node:http objects at all (issue 7).
// The starting page's status long-poll is answered on the lane too, whenever its answer is ready, so
// the page's reload follows on the same connection, warm.
// The first request it cannot decide at once (sign-in, starting pages, other /__gateway/ paths, WebSocket
// upgrades, Expect, HTTP/1.0, Connection: close, a cache miss) hands the connection to node:http,
// which runs the full request path from that request on: its head is written back as parsed and
// the bytes behind it follow, so node:http reads exactly what the client sent from there. Unless the
// client is already pipelining, node:http answers that one request with `Connection: close`
// (releasesAfter): the client's next connection starts on the lane again. Kept open, a connection
// stayed on node:http for good, and behind a load balancer, which reuses its connections for every
// browser, one starting page or sign-in would have moved each of them off the lane.
import type http from 'node:http';
import type { Socket } from 'node:net';
import type { Endpoint } from '../provisioner/contract.js';
import { isContentLength, isDateField, isHopByHop, namedInConnection, scanRequest, type RequestScan } from './http-fields.js';
import { METHODS, PARSE_ON, STOP_AFTER_HEAD, createParser, releaseParser, reportCompletion, restartParser, type Parser, type ParserEvents } from './llhttp.js';
import { READ_BUFFER_BYTES, pushCopy, readIntoBuffer } from './socket-reads.js';
import type { SimpleHead } from './response-head.js';
import { Departure } from './departure.js';
import { LAST_CHUNK, writeChunk, type BodyMode, type Exchange, type Framing, type ResponseSink, type UpstreamFailure, type UpstreamPool } from './upstream-pool.js';

export interface LaneRequest {
  method: string;
  url: string;
  /** As sent: name, value, name, value… */
  fields: string[];
  /** What the fields say, read once for the plan and for a handover's end of request. */
  scan: RequestScan;
  socket: Socket;
  /** The planner's notes on this connection, kept from one of its requests to the next. */
  memo: LaneMemo;
}

/**
 * What the planner keeps with a connection (request-path.ts: what the last request's Host and Cookie
 * decided). It lives and dies with the connection, so nothing in it outlives the client that sent it.
 */
export interface LaneMemo { notes: unknown }

/** What the request path decided for a request the lane takes: forward it, or answer it itself. */
export type WarmPlan = ForwardPlan | AnswerPlan;

export interface ForwardPlan {
  kind: 'forward';
  endpoint: Endpoint;
  upstreamHead: string;
  body: BodyMode;
  /** Fields added to the client's response, each ending in CRLF. */
  responseFields: string;
  responded(status: number): void;
  /** The error response (a whole message) for a request the workspace did not answer. */
  failed(code: UpstreamFailure, error: Error): string;
}

/**
 * The gateway's own answer to a request without a body, when it is ready (a long-poll): a whole
 * response message; `close` ends the connection after it. `departure` is told if the client leaves first.
 */
export interface AnswerPlan {
  kind: 'answer';
  answer(departure: Departure): Promise<{ message: string; close: boolean }>;
}

export interface Http1Options {
  /** node:http's server: connections the lane hands over continue there. */
  server: http.Server;
  pool: UpstreamPool;
  /** undefined: not for the warm lane, node:http runs the request path instead. */
  plan(req: LaneRequest): WarmPlan | undefined;
  /** node:http's clientError handling, for parse errors and timeouts met here. */
  clientError(err: Error & { code?: string }, socket: Socket): void;
  keepAliveTimeoutMs: number;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  maxHeaderSize: number;
}

/**
 * Heads with more fields go to node:http, which keeps the first 2,000 (maxHeadersCount): the lane must
 * never see a field (a Host, a cookie) that node:http's view of the same request would not have.
 */
const LANE_MAX_FIELDS = 100;
/** Bytes a lane holds behind a pipelined request before it stops reading (Node 20 sockets buffered 16 KB). */
const STASH_LIMIT = 64 * 1024;
/** How often the timeouts are checked: a limit is enforced within this much of passing. */
const SWEEP_MS = 1000;

/** Date for responses that come without one (RFC 9110 6.6.1), formatted once a second. */
let dateSecond = -1;
let dateText = '';
export function httpDate(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) { dateSecond = second; dateText = new Date(now).toUTCString(); }
  return dateText;
}

/** The client's response head: the upstream's end-to-end fields, ours, and our own framing. */
export function responseHead(status: number, statusText: string, fields: readonly string[], framing: Framing, extra: string, date: () => string = httpDate): { head: string; chunked: boolean } {
  const named = namedInConnection(fields);
  let head = `HTTP/1.1 ${status} ${statusText}\r\n`;
  let dated = false;
  for (let i = 0; i < fields.length; i += 2) {
    const name = fields[i];
    // A 'length' body passes as it is, so its Content-Length stays even if Connection names it.
    if (isHopByHop(name) || (named?.has(name.toLowerCase()) && !isContentLength(name))) continue;
    if (isDateField(name)) dated = true;
    head += `${name}: ${fields[i + 1]}\r\n`;
  }
  if (!dated) head += `date: ${date()}\r\n`;
  // A body delimited by the upstream's close or chunks goes to the client chunked, so the client's
  // connection stays open (RFC 9112 7.1); a Content-Length body passes as it is.
  const chunked = framing === 'chunked' || framing === 'close';
  return { head: `${head}${extra}${chunked ? 'transfer-encoding: chunked\r\n' : ''}\r\n`, chunked };
}

/** A request body's length as its head tells it (none, or Content-Length); undefined for chunked or Expect. */
function knownBodyBytes(scan: RequestScan): number | undefined {
  if (scan.body === 'none') return 0;
  return scan.body === 'length' && /^\d{1,15}$/.test(scan.length!) ? Number(scan.length) : undefined;
}

/** The head node:http gets when a connection is handed over (llhttp checked it; values are trimmed). */
function rebuildHead(method: string, url: string, major: number, minor: number, fields: string[]): string {
  let head = `${method} ${url} HTTP/${major}.${minor}\r\n`;
  for (let i = 0; i < fields.length; i += 2) head += `${fields[i]}: ${fields[i + 1]}\r\n`;
  return `${head}\r\n`;
}

function startsMessage(d: Buffer): boolean {
  for (let i = 0; i < d.length; i++) if (d[i] !== 13 && d[i] !== 10) return true;
  return false;
}

/**
 * A response head (latin1: one byte per character, RFC 9110 5.5 obs-text) and the body's first chunk,
 * framed as a chunk when `chunked`, in one write. The chunk is the pool's read buffer, so it is
 * copied whatever its size, and the head joins it in the same copy.
 */
export function writeJoined(socket: Socket, head: string, chunk: Buffer, chunked: boolean): boolean {
  const size = chunked ? `${chunk.length.toString(16)}\r\n` : '';
  const out = Buffer.allocUnsafe(head.length + size.length + chunk.length + (chunked ? 2 : 0));
  let at = out.write(head, 0, 'latin1');
  if (chunked) at += out.write(size, at, 'latin1');
  at += chunk.copy(out, at);
  if (chunked) out.write('\r\n', at, 'latin1');
  return socket.write(out);
}

type Phase = 'idle' | 'head' | 'body' | 'waiting';

/** One client connection while it is on the warm lane. */
class Lane implements ResponseSink, ParserEvents, LaneMemo {
  readonly parser: Parser;
  notes: unknown = undefined;
  phase: Phase = 'idle';
  began = 0;
  idleSince = Date.now();
  /** Set in the head callback: what to do with the bytes after this head. */
  stop: 'handover' | 'stash' | undefined;
  stopHead = '';
  /**
   * A request handed over that node:http may keep the connection open after (HTTP/1.1, no upgrade):
   * its body's length when its head tells it (none, or Content-Length), so where it ends on the wire,
   * and so a request pipelined behind it, can be told. Otherwise undefined.
   */
  handoverBodyBytes: number | undefined;
  stash: Buffer | undefined;
  plan: ForwardPlan | undefined;
  exchange: Exchange | undefined;
  /** An answer of our own being awaited (AnswerPlan). */
  answering: Departure | undefined;
  requestDone = true;
  responseDone = true;
  responseStarted = false;
  /** The response's head, waiting for its body's first bytes or the end of the upstream's read. */
  heldHead: string | undefined;
  /** Or a simple head's bytes (passHead), in the pool's read buffer: valid until that read returns. */
  heldBytes: Buffer | undefined;
  heldSimple: SimpleHead | undefined;
  status = 0;
  chunked = false;
  clientEnded = false;

  constructor(readonly socket: LaneSocket, readonly front: Http1Front) {
    this.parser = createParser('request', front.opts.maxHeaderSize, this);
    socket[kLane] = this;
    socket.setNoDelay(true);
    // Reads into the front's buffer where Node allows it (socket-reads.ts), else as 'data' events.
    if (!readIntoBuffer(socket, front.readBuffer, onRead)) socket.on('data', onData);
    socket.on('drain', onDrain);
    socket.on('close', onClose);
    socket.on('end', onEnd);
    socket.on('error', noop);
  }

  // ---------------------------------------------------------------- the request parser's events
  // No onMessageBegin: a request's start is noted in read(), which saves a call from node's parser
  // into JavaScript per request (bench/instructions.ts).
  onBody(chunk: Buffer): void { if (this.exchange && !this.exchange.body(chunk)) this.socket.pause(); }
  onMessageComplete(): void {
    if (this.stop) return;
    this.requestDone = true;
    if (this.phase === 'body') this.phase = 'waiting';
    this.exchange?.end();
    this.settle();
  }
  /**
   * node:http's server allows half-open sockets: a client's FIN is ours to answer. A long-poll is not
   * worth holding for a client that has sent its last (node:http aborts such a request too).
   */
  ended(): void {
    this.clientEnded = true;
    if (this.isIdle() || this.answering) this.leave();
  }
  drained(): void { this.exchange?.resume(); }

  read(d: Buffer): void {
    if (this.stash) { this.holdBack(d); return; }
    // node:http's headersTimeout and requestTimeout count from the request's start, so a client
    // dribbling a byte at a time does not reset them (edge.test: slowloris).
    if (this.phase === 'head' && Date.now() - this.began > this.front.opts.headersTimeoutMs) { this.reject('ERR_HTTP_REQUEST_TIMEOUT'); return; }
    // A request starts with its first byte other than CR or LF (llhttp skips those between messages,
    // RFC 9112 2.2). One pipelined behind a response not yet done waits in the stash, untimed.
    if (this.phase === 'idle' && this.responseDone && startsMessage(d)) { this.began = Date.now(); this.phase = 'head'; }
    const r = this.parser.execute(d);
    if (typeof r !== 'number') { this.reject(r.code ?? 'HPE_ERROR', r); return; }
    if (!this.stop) return;
    const rest = r < d.length ? d.subarray(r) : undefined;
    const bytes = rest ? Buffer.concat([Buffer.from(this.stopHead, 'latin1'), rest]) : Buffer.from(this.stopHead, 'latin1');
    const stop = this.stop;
    this.stop = undefined;
    this.stopHead = '';
    if (stop === 'handover') {
      // Where this request ends in the client's byte stream: what the socket has read, less what waits
      // unread in its buffer (reading 'data' events, a paused socket's) and what came behind this head
      // in the lane's bytes (a replayed stash's included).
      const socket = this.socket;
      const body = this.handoverBodyBytes;
      const ends = body !== undefined ? socket.bytesRead - socket.readableLength - (rest?.length ?? 0) + body : undefined;
      this.front.handOver(this, bytes, ends);
      return;
    }
    // A pipelined request (RFC 9112 9.3.2) waits, unparsed, for the response before it.
    this.stash = bytes;
    this.holdBack();
  }

  /**
   * Bytes behind a stashed request join it, unparsed, until STASH_LIMIT: a request that comes while
   * one is held back is then known to be there when the held one is handed over, and node:http keeps
   * the connection for it (releasesAfter). Past the limit the socket stops reading.
   */
  holdBack(more?: Buffer): void {
    const stash = more ? Buffer.concat([this.stash!, more]) : this.stash!;
    this.stash = stash;
    if (stash.length >= STASH_LIMIT) this.socket.pause();
  }

  onHeadersComplete(major: number, minor: number, fields: string[], methodNo: number, url: string, _s: number, _t: string, upgrade: boolean, keepAlive: boolean): number {
    const method = METHODS[methodNo];
    if (!this.requestDone || !this.responseDone) return this.stopAt('stash', method, url, major, minor, fields);
    // HTTP/1.0, Connection: close, upgrades and CONNECT keep node:http's handling of them.
    // Only a request node:http could keep the connection after is read further (HTTP/1.1, no upgrade).
    const scan = major === 1 && minor === 1 && keepAlive && !upgrade ? scanRequest(fields) : undefined;
    let plan: WarmPlan | undefined;
    try {
      plan = scan && !this.front.draining && fields.length <= 2 * LANE_MAX_FIELDS
        ? this.front.opts.plan({ method, url, fields, scan, socket: this.socket, memo: this }) : undefined;
    } catch {
      plan = undefined; // node:http's request path meets the same fault and reports it
    }
    if (!plan) {
      this.handoverBodyBytes = scan ? knownBodyBytes(scan) : undefined;
      return this.stopAt('handover', method, url, major, minor, fields);
    }
    // A request without a body is whole with its head: done now, and llhttp need not say so.
    const whole = plan.kind === 'answer' || plan.body === 'none';
    reportCompletion(this.parser, !whole);
    this.requestDone = whole;
    this.responseDone = false;
    this.responseStarted = false;
    if (plan.kind === 'answer') { this.awaitAnswer(plan); return PARSE_ON; }
    this.plan = plan;
    // The workspace's own response timeout applies from here; a body still has the request timeout.
    this.phase = plan.body === 'none' ? 'waiting' : 'body';
    this.exchange = this.front.opts.pool.send(plan.endpoint, { method, head: plan.upstreamHead, body: plan.body }, this);
    return PARSE_ON;
  }

  /** Our own answer, written when it is ready; the request has no body, so its end follows at once. */
  awaitAnswer(plan: AnswerPlan): void {
    this.phase = 'waiting';
    const pending = new Departure();
    this.answering = pending;
    plan.answer(pending).then(({ message, close }) => {
      if (this.answering !== pending) return;
      this.answering = undefined;
      if (close) { this.leave(message); return; }
      this.socket.write(message);
      this.responseDone = true;
      this.settle();
    }, () => { if (this.answering === pending) this.socket.destroy(); });
  }

  stopAt(stop: 'handover' | 'stash', method: string, url: string, major: number, minor: number, fields: string[]): number {
    this.stop = stop;
    this.stopHead = rebuildHead(method, url, major, minor, fields);
    return STOP_AFTER_HEAD;
  }

  // ---------------------------------------------------------------- ResponseSink
  head(status: number, statusText: string, fields: string[], framing: Framing): void {
    const plan = this.plan!;
    const r = responseHead(status, statusText, fields, framing, plan.responseFields);
    this.chunked = r.chunked;
    this.responseStarted = true;
    // Usually the body's first bytes came in the same read: head and body then leave in one write.
    this.heldHead = r.head;
    this.status = status;
  }

  passHead(status: number, bytes: Buffer, head: SimpleHead): void {
    this.chunked = false;
    this.responseStarted = true;
    this.heldBytes = bytes;
    this.heldSimple = head;
    this.status = status;
  }

  /** `chunk` is valid for this call only unless `own` (ResponseSink): any other chunk is copied before it is written. */
  data(chunk: Buffer, own = false): boolean {
    if (this.heldBytes !== undefined) return this.writeSimple(chunk);
    const held = this.heldHead;
    if (held === undefined) {
      const kept = own ? chunk : Buffer.from(chunk);
      return this.chunked ? writeChunk(this.socket, kept) : this.socket.write(kept);
    }
    this.heldHead = undefined;
    const ok = writeJoined(this.socket, held, chunk, this.chunked);
    this.headSent();
    return ok;
  }

  flush(): void {
    if (this.heldBytes !== undefined) { this.writeSimple(undefined); return; }
    const held = this.heldHead;
    if (held === undefined) return;
    this.heldHead = undefined;
    this.socket.write(held, 'latin1');
    this.headSent();
  }

  end(): void {
    if (this.heldBytes !== undefined) this.writeSimple(undefined);
    const held = this.heldHead;
    this.heldHead = undefined;
    const last = (held ?? '') + (this.chunked ? LAST_CHUNK : '');
    if (last) this.socket.write(last, 'latin1');
    if (held !== undefined) this.headSent();
    this.responseDone = true;
    // Answered before its body was all read (RFC 9110 10.1.1): the connection stays, so the rest is
    // read and dropped, whatever the workspace's backpressure had paused.
    if (!this.requestDone) this.socket.resume();
    this.settle();
  }

  /**
   * A simple head as the workspace sent it, less its hop-by-hop lines, with ours (and a Date if it had
   * none) before the blank line, and the body's first bytes: one copy out of the read buffer, one write.
   */
  writeSimple(body: Buffer | undefined): boolean {
    const bytes = this.heldBytes!;
    const head = this.heldSimple!;
    this.heldBytes = undefined;
    this.heldSimple = undefined;
    const ours = head.dated ? this.plan!.responseFields : `date: ${httpDate()}\r\n${this.plan!.responseFields}`;
    const { drop } = head;
    let dropped = 0;
    for (let i = 0; i < drop.length; i += 2) dropped += drop[i + 1] - drop[i];
    const fieldsEnd = head.end - 2;
    const out = Buffer.allocUnsafe(fieldsEnd - dropped + ours.length + 2 + (body?.length ?? 0));
    let at = 0;
    let from = 0;
    for (let i = 0; i < drop.length; i += 2) { at += bytes.copy(out, at, from, drop[i]); from = drop[i + 1]; }
    at += bytes.copy(out, at, from, fieldsEnd);
    at += out.write(ours, at, 'latin1');
    out[at++] = 13;
    out[at++] = 10;
    if (body) body.copy(out, at);
    const ok = this.socket.write(out);
    this.headSent();
    return ok;
  }

  /** Metrics and logs once the head is on its way: the client waits on the write, not on them. */
  headSent(): void { this.plan?.responded(this.status); }

  fail(code: UpstreamFailure, error: Error): void {
    this.exchange = undefined;
    // Mid-body there is no way to say it but to cut the connection.
    if (this.responseStarted) { this.socket.destroy(); return; }
    this.leave(this.plan!.failed(code, error));
  }

  /** The client's own fault (a parse error, a timeout): node:http's answer, then the connection closes. */
  reject(code: string, error?: Error): void {
    this.exchange?.abort();
    this.exchange = undefined;
    this.front.detach(this);
    this.socket.once('finish', () => this.socket.destroy());
    this.front.opts.clientError(Object.assign(error ?? new Error(code), { code }), this.socket);
  }

  drain(): void { this.socket.resume(); }

  // ---------------------------------------------------------------- connection
  /** Both halves of an exchange are done: wait for the next request, or take up a stashed one. */
  settle(): void {
    if (!this.requestDone || !this.responseDone) return;
    this.exchange = undefined;
    this.plan = undefined;
    this.phase = 'idle';
    this.idleSince = Date.now();
    if (this.stash) { process.nextTick(replay, this); return; }
    if (this.front.draining || this.clientEnded) this.leave();
  }

  /** The stashed request, now that the one before it is answered. */
  replay(): void {
    const stash = this.stash;
    if (!stash || !this.front.holds(this)) return;
    this.stash = undefined;
    this.socket.resume();
    // The stop at its head may have left the parser expecting no more messages (Connection: close).
    restartParser(this.parser, 'request', this.front.opts.maxHeaderSize);
    this.read(stash);
  }

  /** The front's sweep: node:http's keepAliveTimeout, headersTimeout and requestTimeout, here. */
  expire(now: number): void {
    const { keepAliveTimeoutMs, headersTimeoutMs, requestTimeoutMs } = this.front.opts;
    if (this.phase === 'idle' && !this.stash && now - this.idleSince > keepAliveTimeoutMs) { this.front.detach(this); this.socket.destroy(); return; }
    if ((this.phase === 'head' && now - this.began > headersTimeoutMs) || (this.phase === 'body' && now - this.began > requestTimeoutMs)) this.reject('ERR_HTTP_REQUEST_TIMEOUT');
  }

  closed(): void {
    this.exchange?.abort();
    this.exchange = undefined;
    this.front.detach(this);
  }

  /** An answer not yet written is not wanted any more: the connection left the lane. */
  stopAnswering(): void {
    const pending = this.answering;
    this.answering = undefined;
    pending?.leave();
  }

  isIdle(): boolean { return this.phase === 'idle' && !this.stash; }

  /**
   * Our last bytes, then the socket is gone: node:http's server sockets are half-open (allowHalfOpen),
   * so end() alone would wait for a client's FIN that a client need never send.
   */
  leave(last?: string): void {
    this.front.detach(this);
    const socket = this.socket;
    socket.end(last ?? '', () => socket.destroy());
  }
}

export class Http1Front {
  private readonly lanes = new Set<Lane>();
  /**
   * Every lane's reads land here (socket-reads.ts): one read runs at a time, and what outlives it is
   * copied (llhttp's strings and body chunks are its own; a stash or a handover is concatenated).
   */
  readonly readBuffer = Buffer.allocUnsafe(READ_BUFFER_BYTES);
  private readonly nodeConnection: (socket: Socket) => void;
  draining = false;

  /**
   * Timeouts by one sweep over the connections, as node:http enforces its own: socket.setTimeout()
   * allocates a timer and a bound function per call and leaves them on the socket for good (0.3 KB of
   * every WebSocket handed over; bench/ws-heap.ts).
   */
  private readonly sweep: NodeJS.Timeout;

  constructor(readonly opts: Http1Options) {
    this.sweep = setInterval(() => { const now = Date.now(); for (const lane of this.lanes) lane.expire(now); }, SWEEP_MS);
    this.sweep.unref();
    const [listener] = opts.server.listeners('connection') as Array<(socket: Socket) => void>;
    this.nodeConnection = listener;
    opts.server.off('connection', listener);
    opts.server.on('connection', (socket: Socket) => this.lanes.add(new Lane(socket, this)));
  }

  holds(lane: Lane): boolean { return this.lanes.has(lane); }

  /** The connection leaves the lane; the lane's listeners go with it. */
  detach(lane: Lane, parserFree = false): void {
    if (!this.lanes.delete(lane)) return;
    lane.stopAnswering();
    releaseParser(lane.parser, parserFree);
    const s = lane.socket;
    s[kLane] = undefined;
    s.off('data', onData);
    s.off('drain', onDrain);
    s.off('close', onClose);
    s.off('end', onEnd);
  }

  /**
   * `requestEnds`: the socket's byte count (bytesRead) at which this request ends, when known and
   * node:http may keep the connection: then, unless more bytes have come by the time it is answered
   * (a client pipelining, whose requests node:http answers in order), the answer closes the
   * connection (releasesAfter), and the client's next request starts on the lane. Unknown for a
   * chunked body; not given for an upgrade or a request that closes the connection anyway.
   */
  handOver(lane: Lane, bytes: Buffer, requestEnds: number | undefined): void {
    // Called once the lane's parser has returned: node:http can take it straight back from its list.
    this.detach(lane, true);
    const socket = lane.socket;
    if (requestEnds !== undefined) socket[kReturns] = requestEnds;
    // node:http listens for errors from here on; on every other way out the socket may still be
    // closing (an error page being flushed), and an error with no listener would end the process.
    socket.off('error', noop);
    socket.unshift(bytes);
    // node:http would otherwise read the socket in C++ (consume), ahead of the bytes given back here.
    const handle = (socket as unknown as { _handle?: { _consumed?: boolean } })._handle;
    if (handle) handle._consumed = true;
    socket.resume();
    this.nodeConnection.call(this.opts.server, socket);
  }

  /**
   * For node:http's request handler: true for the request a connection was handed over with, when
   * nothing has come behind it. Its response then carries `Connection: close` (RFC 9112 9.6), and the client's next
   * request comes on a new connection, which starts on the lane.
   */
  releasesAfter(socket: Socket): boolean {
    const s = socket as LaneSocket;
    const ends = s[kReturns];
    if (ends === undefined) return false;
    s[kReturns] = undefined;
    return socket.bytesRead <= ends;
  }

  /** Drain: idle connections close now, busy ones after their response. */
  closeIdle(): void {
    this.draining = true;
    for (const lane of [...this.lanes]) if (lane.isIdle()) lane.leave();
  }

  closeAll(): void {
    clearInterval(this.sweep);
    for (const lane of [...this.lanes]) { this.detach(lane); lane.socket.destroy(); }
  }

  size(): number { return this.lanes.size; }
}

// The socket's listeners, module-level: closures per connection were garbage for every WebSocket,
// which only passes through here on its way to node:http (bench/: idle memory per WebSocket).
const kLane = Symbol('http1 lane');
/** Handed over for one request: node:http's answer to it closes the connection. */
const kReturns = Symbol('http1 returns to the lane');
type LaneSocket = Socket & { [kLane]?: Lane; [kReturns]?: number };
function onData(this: LaneSocket, d: Buffer) { this[kLane]?.read(d); }
/** A read into the front's buffer: the lane's, or once the connection has left it, node:http's (a copy). */
function onRead(this: LaneSocket, bytes: number, buffer: Buffer): boolean {
  const lane = this[kLane];
  if (!lane) return pushCopy(this, bytes, buffer);
  lane.read(buffer.subarray(0, bytes));
  return true;
}
function onDrain(this: LaneSocket) { this[kLane]?.drained(); }
function onClose(this: LaneSocket) { this[kLane]?.closed(); }
function onEnd(this: LaneSocket) { this[kLane]?.ended(); }
// Never from inside the parser's own callbacks (settle runs in them): llhttp is not re-entrant.
function replay(lane: Lane) { lane.replay(); }
function noop() { /* errors end in 'close' */ }

export function createHttp1Front(opts: Http1Options): Http1Front {
  return new Http1Front(opts);
}
