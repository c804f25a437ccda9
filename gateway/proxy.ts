// Forwarding for node:http's side of the request path (gateway/http1.ts hands it the requests the
// warm lane does not take). Plain HTTP goes through the same upstream pool as the warm lane
// (gateway/upstream-pool.ts: one string per request head, llhttp for the response; bench/ measured
// it against undici and http-proxy-3, the maintained rewrite of the http-proxy the user named; issues
// 2 and 7), written to node:http's response here. WebSocket upgrades are a single request: node:http's
// client does the handshake, so nothing else holds the upgrade's objects for the socket's lifetime
// (bench/: idle memory per WebSocket), and onUpgrade hands the two sockets to ws-pairs, which moves
// their bytes. Everything here is per-request mechanics: header hygiene and mapping upstream
// failures to the error catalogue; timeouts and the retry on a stale connection are the pool's.
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import net, { type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { ErrorCode } from './errors.js';
import { FORWARDING, HOP_BY_HOP, WORKSPACE_FIELD, connectionTokens, isMisdirected, namedInConnection, upstreamRequestHead, type ForwardedFor } from './http-fields.js';
import type { ResponseSink, UpstreamFailure, UpstreamPool, Exchange } from './upstream-pool.js';
import { identityFailure, proveSocket, type Upstream } from './workspace-proof.js';

export type { ForwardedFor } from './http-fields.js';

export interface ProxyOptions {
  /** The WebSocket handshake (connect, proof, 101) must be done within this long of its start -> 504. */
  connectTimeoutMs: number;
  /** Keep-alive connections to workspaces, shared with the warm lane. */
  pool: UpstreamPool;
}

export interface ForwardFailure { code: ErrorCode; error: Error }

/** The upstream's 101: its fields may still be changed before they are written to the client. */
export interface UpgradeResponse { statusCode: 101; headers: http.IncomingHttpHeaders }

/**
 * The upgrade request's fields for the upstream (RFC 9110 7.6.1: hop-by-hop fields and those named in
 * Connection go, but Connection: Upgrade and Upgrade themselves travel). Host is kept (code-server
 * checks Origin against it); forwarding claims and the workspace's name are ours.
 */
function prepareUpgradeHeaders(req: IncomingMessage, fwd: ForwardedFor, cookie: string | undefined, workspaceId: string): void {
  const h = req.headers;
  for (const name of connectionTokens(h.connection)) if (name !== 'upgrade') delete h[name];
  for (const name of HOP_BY_HOP) if (name !== 'connection' && name !== 'upgrade') delete h[name];
  for (const name of FORWARDING) delete h[name];
  if (cookie === undefined) delete h.cookie; else h.cookie = cookie;
  h['x-forwarded-for'] = fwd.clientAddress;
  h['x-forwarded-proto'] = fwd.proto === 'https' ? 'wss' : 'ws';
  h['x-forwarded-host'] = fwd.host;
  // Replaces whatever the client sent under this name (node:http joined repeats into one value).
  h[WORKSPACE_FIELD] = workspaceId;
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
export function responseFields(raw: readonly string[]): http.OutgoingHttpHeaders {
  // Fields the upstream named in Connection belong to that connection only (RFC 9110 7.6.1).
  const named = namedInConnection(raw);
  const out: Record<string, string | string[]> = {};
  const nameOf = new Map<string, string>();
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i];
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || named?.has(lower)) continue;
    const value = raw[i + 1];
    const first = nameOf.get(lower);
    if (first === undefined) { nameOf.set(lower, name); out[name] = value; continue; }
    const prev = out[first];
    out[first] = Array.isArray(prev) ? [...prev, value] : [prev, value];
  }
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

/** node:http's response as the pool's sink: fields through writeHead, body with backpressure. */
class ResponseWriter implements ResponseSink {
  exchange: Exchange | undefined;
  /** A 'drain' listener is on the response. */
  waiting = false;
  constructor(private readonly req: IncomingMessage, private readonly res: ServerResponse, private readonly hooks: WebHooks) {}
  head(status: number, statusText: string, fields: string[]): void {
    // Node decides per client whether this connection stays open (a client's `Connection: close`,
    // HTTP/1.0, the request path draining): the upstream's own keep-alive says nothing about ours.
    this.res.writeHead(status, statusText, responseFields(fields));
    this.hooks.onResponse?.(status);
  }
  /** `chunk` is valid for this call only unless `own` (ResponseSink): node:http may keep what it is given. */
  data(chunk: Buffer, own = false): boolean {
    if (this.res.write(own ? chunk : Buffer.from(chunk))) return true;
    // One read of a chunked body gives a call per chunk: one listener for them all (Node warns at 11).
    if (!this.waiting) { this.waiting = true; this.res.once('drain', () => { this.waiting = false; this.exchange?.resume(); }); }
    return false;
  }
  /**
   * An answer before the body was all read (RFC 9110 10.1.1) leaves node:http keeping the connection:
   * the rest is read and dropped (Exchange.body takes no more), whatever backpressure had paused.
   */
  end(): void { this.res.end(); this.req.resume(); }
  /** node:http sends the head with the first body bytes itself. */
  flush(): void { /* nothing held here */ }
  fail(code: UpstreamFailure, error: Error): void {
    // An upstream that dies mid-body must not leave the client waiting on a response that will
    // never end; a client that went away needs nothing more.
    if (this.res.headersSent || this.res.destroyed) { this.res.destroy(); return; }
    this.hooks.onFailure({ code, error });
  }
  drain(): void { this.req.resume(); }
}

interface WebHooks { onFailure(f: ForwardFailure): void; onResponse?(status: number): void }

export function createForwarder(opts: ProxyOptions) {
  // WebSocket upgrades take a connection each and never return it: no pool to keep.
  const upgradeAgent = new http.Agent({ keepAlive: false });

  return {
    web(req: IncomingMessage, res: ServerResponse, endpoint: Upstream, workspaceId: string, fwd: ForwardedFor, cookie: string | undefined, hooks: WebHooks) {
      // node:http has decoded the body's chunks: the pool frames it again.
      const body = !hasRequestBody(req.headers) ? 'none' : req.headers['transfer-encoding'] !== undefined ? 'chunked' : 'length';
      const writer = new ResponseWriter(req, res, hooks);
      const exchange = opts.pool.send(endpoint, { method: req.method!, head: upstreamRequestHead(req.method!, req.url!, req.rawHeaders, fwd, cookie, workspaceId), body }, writer);
      writer.exchange = exchange;
      res.once('close', () => { if (!res.writableFinished) exchange.abort(); });
      if (body === 'none') { req.resume(); return; }
      req.on('data', (chunk: Buffer) => { if (!exchange.body(chunk)) req.pause(); });
      req.on('end', () => exchange.end());
    },
    ws(req: IncomingMessage, socket: Duplex, head: Buffer, endpoint: Upstream, workspaceId: string, fwd: ForwardedFor, cookie: string | undefined, hooks: {
      onFailure(f: ForwardFailure): void;
      /** Takes over both sockets and relays their bytes; false: it refused the client and closed both, no 101 is sent. */
      onUpgrade(upstream: Duplex, response: UpgradeResponse): boolean | void;
    }) {
      prepareUpgradeHeaders(req, fwd, cookie, workspaceId);
      tune(socket);
      // Bytes the client sent right behind its upgrade request travel once the relay starts.
      if (head.length) socket.unshift(head);
      let settled = false;
      // One deadline from the moment the upstream connection is begun: connecting, the proof and the
      // 101 share it. A limit per phase held a browser's upgrade for up to twice UPSTREAM_CONNECT_TIMEOUT.
      const deadline = Date.now() + opts.connectTimeoutMs;
      const claim = endpoint.claim;
      if (claim !== undefined) {
        // The upgrade request goes only on a connection that has proven it reaches this workspace.
        const upstream = net.connect({ host: endpoint.host, port: endpoint.port, noDelay: true });
        const clientLeft = () => { settled = true; upstream.destroy(); };
        socket.once('close', clientLeft);
        proveSocket(upstream, endpoint.host, endpoint.port, claim, opts.connectTimeoutMs).then(() => {
          socket.off('close', clientLeft);
          if (!settled) upgrade(() => upstream);
        }, (error: Error) => {
          socket.off('close', clientLeft);
          if (settled) return;
          settled = true;
          hooks.onFailure({ code: (error as NodeJS.ErrnoException).code === 'ETIMEDOUT' ? 'UPSTREAM_TIMEOUT' : 'UPSTREAM_UNREACHABLE', error });
        });
        return;
      }
      upgrade(undefined);

      function upgrade(createConnection: (() => Socket) | undefined) {
        const out = http.request({
          host: endpoint.host, port: endpoint.port, method: req.method, path: req.url, headers: req.headers, setHost: false,
          ...(createConnection ? { createConnection } : { agent: upgradeAgent }),
        });
        let timedOut = false;
        // What the proof left of the deadline (the proof itself ends by it: none left fires at once).
        const timer = setTimeout(() => { timedOut = true; out.destroy(new Error('upstream upgrade timeout')); }, Math.max(0, deadline - Date.now()));
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
          // The workspace at this address is another one (a stale route): as if nothing answered, so
          // the route is re-checked, and its refusal is not the client's to see.
          if (isMisdirected(res.statusCode ?? 0, res.rawHeaders)) {
            res.destroy();
            hooks.onFailure({ code: 'UPSTREAM_UNREACHABLE', error: identityFailure('misdirected', true) });
            return;
          }
          const fields = responseFields(res.rawHeaders);
          // Parsed field values hold one byte per character (obs-text, RFC 9110 5.5): latin1 gives the same bytes back.
          socket.write(`HTTP/1.1 ${res.statusCode} ${res.statusMessage}\r\n${headerBlock(fields)}connection: close\r\n\r\n`, 'latin1');
          res.once('error', () => socket.destroy());
          socket.once('close', () => res.destroy());
          res.pipe(socket);
        });
        out.once('upgrade', (res, upstream: Socket, upstreamHead: Buffer) => {
          settle();
          tune(upstream);
          const response: UpgradeResponse = { statusCode: 101, headers: res.headers };
          // Synchronous, and before the 101 is written: the app may still change the response's fields.
          if (hooks.onUpgrade(upstream, response) === false) return;
          socket.write(`HTTP/1.1 101 Switching Protocols\r\n${headerBlock(response.headers)}\r\n`, 'latin1');
          // The hook's owner (ws-pairs) moves the bytes from the next tick on, after this 101.
          if (upstreamHead.length) upstream.unshift(upstreamHead);
        });
        out.end();
      }
    },
    close() {
      upgradeAgent.destroy();
    },
  };
}

export type Forwarder = ReturnType<typeof createForwarder>;
