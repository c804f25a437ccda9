// Forwarding (the last step of the request path). Plain HTTP goes through undici's pooled client:
// bench/ measured it beside http-proxy-3 (the maintained rewrite of the http-proxy the user named;
// issue 2) on one core, and it used about two thirds of the proxy CPU per request (issue 7).
// WebSocket upgrades are a single request: node:http's client does the handshake here, so nothing
// else holds the upgrade's objects for the socket's lifetime (bench/: idle memory per WebSocket),
// and onUpgrade hands the two sockets to ws-pairs, which moves their bytes. Everything here is
// per-request mechanics: header hygiene, timeouts, the retry of an idempotent request on a stale
// keep-alive socket, and mapping upstream failures to the error catalogue.
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { Agent, Client, type Dispatcher } from 'undici';
import type { Endpoint } from '../provisioner/contract.js';
import type { ErrorCode } from './errors.js';

export interface ProxyOptions {
  connectTimeoutMs: number;
  /** No response headers (web) within this long -> 504. */
  responseTimeoutMs: number;
  maxSockets: number;
  /** Keep idle upstream sockets open no longer than this (below code-server's own 5 s keep-alive). */
  freeSocketTimeoutMs?: number;
}

export interface ForwardFailure { code: ErrorCode; error: Error }

/** The upstream's 101: its fields may still be changed before they are written to the client. */
export interface UpgradeResponse { statusCode: 101; headers: http.IncomingHttpHeaders }

/** RFC 9110 7.6.1: connection-specific fields, never forwarded. */
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'proxy-authorization', 'proxy-authenticate'];
/** Client-supplied forwarding claims are replaced, never trusted (issue 3). */
const FORWARDING = ['forwarded', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port', 'x-real-ip', 'x-client-ip', 'true-client-ip'];
const IDEMPOTENT_NO_BODY = new Set(['GET', 'HEAD', 'OPTIONS', 'DELETE']);
/** A connection the upstream closed under us (a keep-alive race): worth one more try on a new one. */
const STALE_SOCKET = new Set(['UND_ERR_SOCKET', 'ECONNRESET', 'EPIPE']);
const TIMEOUTS = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT']);

function connectionTokens(value: string | string[] | undefined): string[] {
  if (!value) return [];
  return (Array.isArray(value) ? value.join(',') : value).split(',').map((s) => s.trim().toLowerCase()).filter(Boolean);
}

/** Removes hop-by-hop fields and those named in Connection (RFC 9110 7.6.1) from a header map. */
function stripHopByHop(headers: http.IncomingHttpHeaders | http.OutgoingHttpHeaders, keepUpgrade: boolean): void {
  for (const name of connectionTokens(headers.connection as string | undefined)) {
    if (keepUpgrade && name === 'upgrade') continue;
    delete headers[name];
  }
  for (const name of HOP_BY_HOP) {
    if (keepUpgrade && (name === 'connection' || name === 'upgrade')) continue;
    delete headers[name];
  }
}

export interface ForwardedFor { clientAddress: string; proto: 'http' | 'https'; host: string }

/** Rewrites the request's headers for the upstream: Host is kept (code-server checks Origin against it). */
function prepareHeaders(req: IncomingMessage, fwd: ForwardedFor, cookie: string | undefined, isUpgrade: boolean): void {
  const h = req.headers;
  stripHopByHop(h, isUpgrade);
  for (const name of FORWARDING) delete h[name];
  if (cookie === undefined) delete h.cookie; else h.cookie = cookie;
  h['x-forwarded-for'] = fwd.clientAddress;
  h['x-forwarded-proto'] = isUpgrade ? (fwd.proto === 'https' ? 'wss' : 'ws') : fwd.proto;
  h['x-forwarded-host'] = fwd.host;
  // Node has already answered `Expect: 100-continue` for us (RFC 9110 10.1.1); the upstream gets the body.
  if (!isUpgrade) delete h.expect;
}

/** RFC 9112 6.3: a request has content when it says so by Content-Length or Transfer-Encoding. */
export function hasRequestBody(headers: http.IncomingHttpHeaders): boolean {
  const length = headers['content-length'];
  return length !== undefined ? length !== '0' : headers['transfer-encoding'] !== undefined;
}

/**
 * The upstream's response fields for Node's writeHead, hop-by-hop ones removed. An object, not a
 * flat list: Node 20 keeps only the last of repeated names (two Set-Cookie) when a flat list meets
 * fields already set on the response, while an array value keeps them all.
 */
export function responseFields(raw: ReadonlyArray<Buffer | string>): http.OutgoingHttpHeaders {
  // undici hands over raw Buffers, node:http strings; HTTP field bytes are latin1 either way.
  const text = (x: Buffer | string) => (typeof x === 'string' ? x : x.toString('latin1'));
  const out: Record<string, string | string[]> = {};
  const nameOf = new Map<string, string>();
  let named: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = text(raw[i]);
    const lower = name.toLowerCase();
    const value = text(raw[i + 1]);
    if (lower === 'connection') named = [...named, ...connectionTokens(value)];
    if (HOP_BY_HOP.includes(lower)) continue;
    const first = nameOf.get(lower);
    if (first === undefined) { nameOf.set(lower, name); out[name] = value; continue; }
    const prev = out[first];
    out[first] = Array.isArray(prev) ? [...prev, value] : [prev, value];
  }
  // Fields the upstream named in Connection belong to that connection only (RFC 9110 7.6.1).
  for (const lower of named) { const name = nameOf.get(lower); if (name !== undefined) delete out[name]; }
  return out;
}

/** Header lines for a hand-written response head; values come from node's parser (no CR or LF). */
function headerBlock(fields: http.OutgoingHttpHeaders | http.IncomingHttpHeaders): string {
  let out = '';
  for (const [name, value] of Object.entries(fields)) {
    if (value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) out += `${name}: ${v}\r\n`;
  }
  return out;
}

/** A relayed WebSocket socket: no idle timeout (ws-pairs pings instead), no Nagle delay on small frames. */
function tune(socket: Duplex) {
  const s = socket as Partial<Socket>;
  s.setTimeout?.(0);
  s.setNoDelay?.(true);
  s.setKeepAlive?.(true, 0);
}

export function createForwarder(opts: ProxyOptions) {
  const idleMs = opts.freeSocketTimeoutMs ?? 4000;
  const clientOptions = {
    // One request per connection at a time: pipelining would let one slow response hold up others.
    pipelining: 1,
    connect: { timeout: opts.connectTimeoutMs },
    headersTimeout: opts.responseTimeoutMs,
    // Bodies may stream for as long as they like (server-sent events, long downloads).
    bodyTimeout: 0,
    keepAliveTimeout: idleMs,
    keepAliveMaxTimeout: idleMs,
  };
  // Per upstream origin a pool of keep-alive connections; undici drops an origin's pool once it has
  // no connections left, so stopped workspaces leave nothing behind.
  const pools = new Agent({ ...clientOptions, connections: opts.maxSockets });
  // WebSocket upgrades take a connection each and never return it: no pool to keep.
  const upgradeAgent = new http.Agent({ keepAlive: false });

  const origin = (e: Endpoint) => `http://${e.host.includes(':') ? `[${e.host}]` : e.host}:${e.port}`;

  interface WebHooks { onFailure(f: ForwardFailure): void; onResponse?(status: number): void }

  /** One attempt at a web request; `via` is the shared pool, or a one-off client for the retry. */
  function dispatchWeb(req: IncomingMessage, res: ServerResponse, endpoint: Endpoint, hooks: WebHooks, body: boolean, attempt: number, via: Dispatcher) {
    let abort: ((err?: Error) => void) | undefined;
    let resume: (() => void) | undefined;
    let waitingForDrain = false;
    const onDrain = () => { waitingForDrain = false; resume?.(); };
    const onClientGone = () => { if (!res.writableFinished) abort?.(new Error('client went away')); };
    res.once('close', onClientGone);
    const done = () => { res.off('close', onClientGone); res.off('drain', onDrain); if (via !== pools) void via.close(); };

    via.dispatch({
      origin: origin(endpoint), method: req.method!, path: req.url!, headers: req.headers as Record<string, string | string[]>,
      body: body ? req : null,
    }, {
      onConnect(a) { abort = a; },
      onHeaders(status, raw, r, statusText) {
        // 1xx (RFC 9110 15.2): interim, the final response follows; 101 never comes here (no Upgrade sent).
        if (status < 200) return true;
        resume = r;
        // Node decides per client whether this connection stays open (a client's `Connection: close`,
        // HTTP/1.0, the request path draining): the upstream's own keep-alive says nothing about ours.
        res.writeHead(status, statusText, responseFields(raw));
        hooks.onResponse?.(status);
        return true;
      },
      onData(chunk) {
        if (res.write(chunk)) return true;
        if (!waitingForDrain) { waitingForDrain = true; res.once('drain', onDrain); }
        return false;
      },
      onComplete() { done(); res.end(); },
      onError(err: Error & { code?: string }) {
        done();
        // An upstream that dies mid-body must not leave the client waiting on a response that will
        // never end; a client that went away needs nothing more.
        if (res.headersSent || res.destroyed) { res.destroy(); return; }
        // A keep-alive socket the upstream closed at the moment we used it: retry once, on a new
        // connection, only requests without a body that are safe to repeat (RFC 9110 9.2.2; issue 8).
        if (attempt === 0 && !body && IDEMPOTENT_NO_BODY.has(req.method ?? '') && STALE_SOCKET.has(err.code ?? '')) {
          dispatchWeb(req, res, endpoint, hooks, body, 1, new Client(origin(endpoint), clientOptions));
          return;
        }
        hooks.onFailure({ code: TIMEOUTS.has(err.code ?? '') ? 'UPSTREAM_TIMEOUT' : 'UPSTREAM_UNREACHABLE', error: err });
      },
    });
  }

  return {
    web(req: IncomingMessage, res: ServerResponse, endpoint: Endpoint, fwd: ForwardedFor, cookie: string | undefined, hooks: WebHooks) {
      const body = hasRequestBody(req.headers);
      prepareHeaders(req, fwd, cookie, false);
      dispatchWeb(req, res, endpoint, hooks, body, 0, pools);
    },
    ws(req: IncomingMessage, socket: Duplex, head: Buffer, endpoint: Endpoint, fwd: ForwardedFor, cookie: string | undefined, hooks: { onFailure(f: ForwardFailure): void; /** Takes over both sockets and relays their bytes. */ onUpgrade(upstream: Duplex, response: UpgradeResponse): void }) {
      prepareHeaders(req, fwd, cookie, true);
      tune(socket);
      // Bytes the client sent right behind its upgrade request travel once the relay starts.
      if (head.length) socket.unshift(head);
      const out = http.request({ host: endpoint.host, port: endpoint.port, method: req.method, path: req.url, headers: req.headers, agent: upgradeAgent, setHost: false });
      let settled = false;
      let timedOut = false;
      const timer = setTimeout(() => { timedOut = true; out.destroy(new Error('upstream upgrade timeout')); }, opts.connectTimeoutMs);
      const clientGone = () => { if (!settled) { settled = true; clearTimeout(timer); out.destroy(); } };
      const settle = () => { settled = true; clearTimeout(timer); socket.off('close', clientGone); };
      socket.once('close', clientGone);
      // `on`, not `once`: a second error after the first (or after the answer) must not go unhandled.
      out.on('error', (error) => {
        if (settled) return;
        settle();
        hooks.onFailure({ code: timedOut ? 'UPSTREAM_TIMEOUT' : 'UPSTREAM_UNREACHABLE', error });
      });
      // Refused (403) or answered with plain HTTP: that answer is the client's, then both close.
      out.once('response', (res) => {
        settle();
        const fields = responseFields(res.rawHeaders);
        socket.write(`HTTP/1.1 ${res.statusCode} ${res.statusMessage}\r\n${headerBlock(fields)}connection: close\r\n\r\n`);
        res.once('error', () => socket.destroy());
        socket.once('close', () => res.destroy());
        res.pipe(socket);
      });
      out.once('upgrade', (res, upstream: Socket, upstreamHead: Buffer) => {
        settle();
        tune(upstream);
        const response: UpgradeResponse = { statusCode: 101, headers: res.headers };
        // Synchronous, and before the 101 is written: the app may still change the response's fields.
        hooks.onUpgrade(upstream, response);
        socket.write(`HTTP/1.1 101 Switching Protocols\r\n${headerBlock(response.headers)}\r\n`);
        // The hook's owner (ws-pairs) moves the bytes from the next tick on, after this 101.
        if (upstreamHead.length) upstream.unshift(upstreamHead);
      });
      out.end();
    },
    /** Upstream connections held open by the keep-alive pools (for leak checks). */
    poolSize(): number {
      let n = 0;
      for (const stats of Object.values(pools.stats)) n += (stats as { connected?: number }).connected ?? 0;
      return n;
    },
    close() {
      upgradeAgent.destroy();
      void pools.destroy();
    },
  };
}

export type Forwarder = ReturnType<typeof createForwarder>;
