// Forwarding (the last step of the request path) with http-proxy-3, the maintained rewrite of
// http-proxy (1.18.1 crashes on an upgrade followed by a client reset and leaks sockets when an
// upstream answers an upgrade with plain HTTP; issue 2). Everything here is per-request mechanics:
// header hygiene, timeouts, the retry of an idempotent request on a stale keep-alive socket, and
// mapping upstream failures to the error catalogue.
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { Readable } from 'node:stream';
import { createProxyServer } from 'http-proxy-3';
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

/** RFC 9110 7.6.1: connection-specific fields, never forwarded. */
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'proxy-authorization', 'proxy-authenticate'];
/** Client-supplied forwarding claims are replaced, never trusted (issue 3). */
const FORWARDING = ['forwarded', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port', 'x-real-ip', 'x-client-ip', 'true-client-ip'];
const IDEMPOTENT_NO_BODY = new Set(['GET', 'HEAD', 'OPTIONS', 'DELETE']);

const kState = Symbol('forward-state');
interface ForwardState {
  endpoint: Endpoint;
  attempt: number;
  timedOut?: 'connect' | 'response';
  reused?: boolean;
  onFailure(f: ForwardFailure): void;
  onResponse?(status: number): void;
  onUpgrade?(upstream: Duplex, response: IncomingMessage): void;
}
type WithState = IncomingMessage & { [kState]?: ForwardState };

function connectionTokens(value: string | string[] | undefined): string[] {
  if (!value) return [];
  return (Array.isArray(value) ? value.join(',') : value).split(',').map((s) => s.trim().toLowerCase()).filter(Boolean);
}

/** Removes hop-by-hop fields and those named in Connection (RFC 9110 7.6.1) from a header map. */
export function stripHopByHop(headers: http.IncomingHttpHeaders | http.OutgoingHttpHeaders, keepUpgrade: boolean): void {
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
export function prepareHeaders(req: IncomingMessage, fwd: ForwardedFor, cookie: string | undefined, isUpgrade: boolean): void {
  const h = req.headers;
  stripHopByHop(h, isUpgrade);
  for (const name of FORWARDING) delete h[name];
  if (cookie === undefined) delete h.cookie; else h.cookie = cookie;
  h['x-forwarded-for'] = fwd.clientAddress;
  h['x-forwarded-proto'] = isUpgrade ? (fwd.proto === 'https' ? 'wss' : 'ws') : fwd.proto;
  h['x-forwarded-host'] = fwd.host;
}

export function createForwarder(opts: ProxyOptions) {
  const agent = new http.Agent({
    keepAlive: true,
    maxSockets: opts.maxSockets,
    // As many idle sockets as may be busy: with fewer, a burst wider than the free limit closes the
    // surplus on release and reconnects on the next burst (bench/: ~1 new upstream connection per
    // 11 requests at 50 concurrent clients). Idle ones still age out after `timeout` below.
    maxFreeSockets: opts.maxSockets,
    // Most recently used first, so idle sockets age out instead of all staying barely warm.
    scheduling: 'lifo',
    timeout: opts.freeSocketTimeoutMs ?? 4000,
  });
  const proxy = createProxyServer({ agent, xfwd: false, ws: true, changeOrigin: false, preserveHeaderKeyCase: false });

  proxy.on('proxyReq', (proxyReq, req) => {
    const state = (req as WithState)[kState];
    if (!state) return;
    state.reused = proxyReq.reusedSocket;
    const socket = proxyReq.socket;
    if (socket && (socket as unknown as { connecting?: boolean }).connecting) {
      const timer = setTimeout(() => { state.timedOut = 'connect'; proxyReq.destroy(new Error('upstream connect timeout')); }, opts.connectTimeoutMs);
      socket.once('connect', () => clearTimeout(timer));
      proxyReq.once('close', () => clearTimeout(timer));
    }
    const timer = setTimeout(() => { state.timedOut = 'response'; proxyReq.destroy(new Error('upstream response timeout')); }, opts.responseTimeoutMs);
    proxyReq.once('response', () => clearTimeout(timer));
    proxyReq.once('close', () => clearTimeout(timer));
  });

  // Our 'upgrade' listener is added before http-proxy-3's own, so it runs before the 101 is written to
  // the client: the app may still adjust the response headers (permessage-deflate parameters).
  proxy.on('proxyReqWs', (proxyReq: http.ClientRequest, req: IncomingMessage) => {
    const state = (req as WithState)[kState];
    if (!state) return;
    const timer = setTimeout(() => { state.timedOut = 'connect'; proxyReq.destroy(new Error('upstream upgrade timeout')); }, opts.connectTimeoutMs);
    proxyReq.once('upgrade', (response: IncomingMessage, upstream: Duplex) => { clearTimeout(timer); state.onUpgrade?.(upstream, response); });
    proxyReq.once('response', () => clearTimeout(timer));
    proxyReq.once('close', () => clearTimeout(timer));
  });

  proxy.on('proxyRes', (proxyRes, req, res) => {
    stripHopByHop(proxyRes.headers, false);
    // Node decided per client whether this connection stays open (a client's `Connection: close`,
    // HTTP/1.0) and the request path asks for close while draining; http-proxy-3 would otherwise put
    // keep-alive back on every response (RFC 9112 9.6).
    const keepAlive = (res as ServerResponse & { shouldKeepAlive?: boolean }).shouldKeepAlive !== false && res.getHeader('connection') !== 'close';
    proxyRes.headers.connection = keepAlive ? 'keep-alive' : 'close';
    // An upstream that dies mid-body must not leave the client waiting on a response that will never
    // end: a pipe does not end its destination when the source errors.
    proxyRes.once('close', () => { if (!proxyRes.complete) res.destroy(); });
    (req as WithState)[kState]?.onResponse?.(proxyRes.statusCode ?? 502);
  });

  proxy.on('error', (err: Error & { code?: string }, req: IncomingMessage, res: ServerResponse | Duplex) => {
    const state = (req as WithState)[kState];
    if (!state) { destroy(res); return; }
    // A keep-alive socket the upstream closed at the same moment we reused it: retry once, only for
    // requests without a body that are safe to repeat (RFC 9110 9.2.2; issue 8).
    if (res instanceof http.ServerResponse && !res.headersSent && state.reused && state.attempt === 0
      && IDEMPOTENT_NO_BODY.has(req.method ?? '') && !state.timedOut && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) {
      state.attempt = 1;
      state.reused = false;
      const empty = Readable.from([]);
      // On a new connection: another pooled socket may have idled just as long and be closing too.
      proxy.web(req, res, { target: target(state.endpoint), buffer: empty, agent: false });
      return;
    }
    const code: ErrorCode = state.timedOut ? 'UPSTREAM_TIMEOUT' : 'UPSTREAM_UNREACHABLE';
    state.onFailure({ code, error: err });
  });

  const target = (e: Endpoint) => ({ protocol: 'http:', host: e.host, port: e.port });
  const destroy = (res: ServerResponse | Duplex) => { if (res instanceof http.ServerResponse) res.destroy(); else res.destroy(); };

  return {
    web(req: IncomingMessage, res: ServerResponse, endpoint: Endpoint, hooks: { onFailure(f: ForwardFailure): void; onResponse?(status: number): void }) {
      (req as WithState)[kState] = { endpoint, attempt: 0, ...hooks };
      proxy.web(req, res, { target: target(endpoint) });
    },
    ws(req: IncomingMessage, socket: Duplex, head: Buffer, endpoint: Endpoint, hooks: { onFailure(f: ForwardFailure): void; onUpgrade(upstream: Duplex, response: IncomingMessage): void }) {
      (req as WithState)[kState] = { endpoint, attempt: 0, onFailure: hooks.onFailure, onUpgrade: hooks.onUpgrade };
      proxy.ws(req, socket, head, { target: target(endpoint) });
    },
    /** Sockets held by the upstream keep-alive pool (for leak checks). */
    poolSize(): number {
      let n = 0;
      for (const list of Object.values(agent.sockets)) n += list?.length ?? 0;
      for (const list of Object.values(agent.freeSockets)) n += list?.length ?? 0;
      return n;
    },
    close() {
      proxy.close?.();
      agent.destroy();
    },
  };
}

export type Forwarder = ReturnType<typeof createForwarder>;
