// The request path on the public port, one direction, one small named function per step:
//
//   parseHostStep -> gatewayOwnPaths -> authorize -> guardWorkspacePath -> resolve -> startIfNeeded
//     -> forwardWeb | forwardWs -> recordActivity
//
// Workspace hosts are routed here before any framework router runs (issue 2): a warm request costs
// host parsing, a cached session check, a Map lookup and the proxy itself.
import { randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Endpoint } from '../provisioner/contract.js';
import type { ActivityRecorder } from './activity-recorder.js';
import {
  clearedSessionCookie, clientAddress, safeNext, sameOrigin, sessionCookie, sessionCookieName, sessionCookieParts,
  type Auth, type Session,
} from './auth.js';
import type { Clock } from './clock.js';
import type { Config } from './config.js';
import { GatewayError, renderError, renderErrorOnSocket, type ErrorCode } from './errors.js';
import { checkRequestTarget, hostHeaderValues, originForm, parseHost, proxyRouteAllowed, type HostVerdict } from './host.js';
import type { Logger } from './log.js';
import type { Metrics } from './metrics.js';
import { startingPage, type StatusView } from './pages.js';
import { httpDate, type AnswerPlan, type ForwardPlan, type LaneRequest, type WarmPlan } from './http1.js';
import { forwardedFields, upstreamRequestHead, type ForwardedFor, type RequestBody } from './http-fields.js';
import type { BodyMode, UpstreamFailure } from './upstream-pool.js';
import { hasRequestBody, type Forwarder, type UpgradeResponse } from './proxy.js';
import { createRequestIds } from './request-id.js';
import { predatesStore, revokedBy, type Revocations } from './revocations.js';
import { Departure } from './departure.js';
import { isNavigation, siteAllowed, wantsHtml, type RequestSite } from './request-kind.js';
import type { StateStore, WorkspaceRecord } from './store/contract.js';
import { StoreUnavailable } from './store/contract.js';
import type { Workspaces } from './workspaces.js';
import { answeredUnproven, identityReason } from './workspace-proof.js';

/** The named fields of a raw field list, as node:http's req.headers would give them (first wins). */
function fieldsOf(fields: readonly string[], ...names: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < fields.length; i += 2) {
    const lower = fields[i].toLowerCase();
    if (names.includes(lower) && out[lower] === undefined) out[lower] = fields[i + 1];
  }
  return out;
}

/** Whether a request on the warm lane (raw fields) wants an HTML error page, as wantsHtml decides for node:http's. */
function laneWantsHtml(fields: readonly string[]): boolean {
  return wantsHtml(fieldsOf(fields, 'sec-fetch-dest', 'accept'));
}

export interface RequestPathDeps {
  config: Config;
  clock: Clock;
  store: StateStore;
  workspaces: Workspaces;
  forwarder: Forwarder;
  auth: Auth;
  revocations: Revocations;
  activity: ActivityRecorder;
  metrics: Metrics;
  log: Logger;
  /** Called for each proxied WebSocket pair, so the app can track, tap and drain them. */
  onWebSocket(ws: { workspaceId: string; sessionEpoch: number; client: Duplex; upstream: Duplex; req: IncomingMessage; response: UpgradeResponse }): void;
  isDraining(): boolean;
}

interface Ctx {
  req: IncomingMessage;
  requestId: string;
  workspaceId: string;
  html: boolean;
  started: bigint;
}

const PREFIX = '/__gateway/';

type HostStep = { ok: true; workspaceId: string; url: string } | { ok: false; code: ErrorCode; detail?: string };

/**
 * What a connection's last warm request decided from its Host, Cookie and X-Forwarded-For fields. A
 * browser sends the same ones on every request of a connection, and deciding them afresh (host
 * parsing, splitting the cookie, the verified-session lookup, the client's address) was a tenth of a
 * warm request's instructions (bench/instructions.ts). Kept on the connection (LaneMemo); a noted
 * session's expiry is still checked on every request.
 */
interface WarmNotes {
  peer: string | undefined;
  host: string | undefined;
  verdict: HostVerdict | undefined;
  cookie: string | undefined;
  cookieWorkspace: string | undefined;
  cookieRest: string | undefined;
  session: Session | undefined;
  xff: string | undefined;
  fwd: ForwardedFor | undefined;
}

function newNotes(peer: string | undefined): WarmNotes {
  return { peer, host: undefined, verdict: undefined, cookie: undefined, cookieWorkspace: undefined, cookieRest: undefined, session: undefined, xff: undefined, fwd: undefined };
}

/** Shared by every upgraded socket: a closure here stayed on each WebSocket for its life (bench/ws-heap.ts). */
function destroyOnError(this: Duplex) { this.destroy(); }

export function createRequestPath(deps: RequestPathDeps) {
  const { config, auth, revocations, workspaces, metrics, log, activity, forwarder } = deps;
  const cookieName = sessionCookieName(config.publicScheme);
  const nextRequestId = createRequestIds();

  // ---------------------------------------------------------------- responses
  function fail(res: ServerResponse, ctx: { requestId: string; html: boolean }, code: ErrorCode, detail?: string) {
    const r = renderError(code, { html: ctx.html, detail, requestId: ctx.requestId });
    metrics.rejectedRequest(code);
    if (res.headersSent) { res.destroy(); return; }
    res.writeHead(r.status, { ...r.headers, 'content-length': Buffer.byteLength(r.body) });
    res.end(r.body);
  }
  function failSocket(socket: Duplex, requestId: string, code: ErrorCode) {
    metrics.rejectedRequest(code);
    if (!socket.writable) { socket.destroy(); return; }
    socket.end(renderErrorOnSocket(code, requestId));
  }

  // ---------------------------------------------------------------- steps
  /** Step 1: the request target and the Host, strictly, before any state lookup. */
  function parseHostStep(method: string, target: string, rawHeaders: readonly string[]): HostStep {
    const hosts = hostHeaderValues(rawHeaders);
    if (checkRequestTarget(method, target, hosts[0]) === 'bad') return { ok: false, code: 'BAD_REQUEST', detail: 'request target must be a path on this host' };
    // Absolute-form naming this host: route it as the path it names (else `http://h/__gateway/login` would skip our routes).
    return hostStepOf(parseHost(hosts, config.baseDomain), originForm(target));
  }

  function hostStepOf(verdict: HostVerdict, url: string): HostStep {
    if (verdict.kind === 'workspace') return { ok: true, workspaceId: verdict.id, url };
    if (verdict.kind === 'unknown') return { ok: false, code: 'HOST_UNKNOWN' };
    return { ok: false, code: 'HOST_MALFORMED', detail: verdict.why };
  }

  /**
   * Step 2, first half: a request from a sibling workspace's page carries this host's cookie too, so
   * where it comes from is judged before the cookie is (request-kind.ts siteAllowed).
   */
  function fromAllowedSite(method: string, from: RequestSite, host: string | undefined): boolean {
    return siteAllowed(method, from, host, isOwnOrigin);
  }
  const isOwnOrigin = (origin: string, host: string | undefined) => sameOrigin(origin, host, config.publicScheme);

  /**
   * Step 2: only the workspace's owner, proven by a session cookie for exactly this host, signed
   * after any revocation of the workspace's sessions (gateway/revocations.ts).
   */
  async function authorize(req: IncomingMessage, workspaceId: string): Promise<Session | undefined> {
    const session = await auth.sessionFor(sessionCookieParts(req.headers.cookie, cookieName).values, workspaceId);
    if (!session) { metrics.signInFailure('no_session'); return undefined; }
    if (await revocations.voids(workspaceId, session.epoch)) { metrics.signInFailure('revoked'); return undefined; }
    return session;
  }

  /** code-server's /proxy/<port> must not reach other hosts (`/proxy/80@evil/`, encoded variants). */
  function guardWorkspacePath(url: string): boolean {
    return proxyRouteAllowed(url);
  }

  function statusView(record: WorkspaceRecord | undefined): StatusView {
    if (!record) return { state: 'stopped', generation: 0 };
    const starting = record.state === 'starting';
    return {
      state: record.state, generation: record.generation, stage: record.stage, queuePosition: record.queuePosition,
      elapsedMs: record.requestedAt !== undefined && (starting || record.state === 'failed') ? deps.clock.now() - record.requestedAt : undefined,
      reasonCode: record.state === 'failed' ? record.reasonCode : undefined,
      reason: record.state === 'failed' ? record.reason : undefined,
      previousStop: starting ? record.reasonCode : record.state === 'stopped' ? record.reasonCode : undefined,
    };
  }

  /**
   * Step 4: a workspace that is not running. Only a top-level page load may start it; everything
   * else gets 503 with Retry-After, so an open tab's reconnect loop never brings it back (issue 2).
   */
  async function startIfNeeded(req: IncomingMessage, res: ServerResponse, ctx: Ctx, record: WorkspaceRecord | undefined) {
    const navigation = isNavigation(req.method, req.headers);
    if (!navigation) {
      const code: ErrorCode = record?.state === 'starting' ? 'WORKSPACE_STARTING' : record?.state === 'stopping' ? 'WORKSPACE_STOPPING'
        : record?.state === 'failed' ? 'WORKSPACE_START_FAILED' : 'WORKSPACE_STOPPED';
      fail(res, ctx, code);
      return;
    }
    let current = record;
    // 'stopping' too: a stop whose replica died midway is finished, then started (a live stop is left).
    if (!record || record.state === 'stopped' || record.state === 'stopping') {
      current = await workspaces.requestStart(ctx.workspaceId, { retryFailed: false, requestId: ctx.requestId, admit: () => admitStart(ctx.workspaceId) });
      // Rediscovered running (the store had lost it): serve it now, nothing was started.
      if (current?.state === 'running' && current.endpoint) return forwardWeb(req, res, ctx, workspaces.upstream(current)!, false);
      if (record?.state !== 'stopping') res.setHeader('x-gateway-cold-start', '1');
    }
    activity.touch(ctx.workspaceId);
    sendStartingPage(res, ctx, current);
  }

  function sendStartingPage(res: ServerResponse, ctx: Ctx, record: WorkspaceRecord | undefined) {
    const nonce = randomBytes(12).toString('base64');
    const { html, csp } = startingPage(statusView(record), nonce);
    // 200, not 503: it is a real page a person reads; programs get 503 + Retry-After instead.
    res.writeHead(200, {
      'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', 'content-security-policy': csp,
      'x-request-id': ctx.requestId, 'x-gateway-state': record?.state ?? 'stopped', 'content-length': Buffer.byteLength(html),
    });
    res.end(html);
  }

  const admitStart = async (id: string) => !(await overLimit(`start:${id}`, config.rateLimits.startsPerMinute));

  async function overLimit(key: string, perMinute: number): Promise<boolean> {
    try { return (await deps.store.countHit(key, 60_000)) > perMinute; } catch { return false; }
  }

  /** Step 5 (web): forward, record activity, map upstream failures. */
  function forwardWeb(req: IncomingMessage, res: ServerResponse, ctx: Ctx, endpoint: Endpoint, warm: boolean) {
    res.setHeader('x-request-id', ctx.requestId);
    forwarder.web(req, res, endpoint, ctx.workspaceId, forwardedForRequest(req), sessionCookieParts(req.headers.cookie, cookieName).rest, {
      onResponse: (status) => webResponded(status, ctx.started, warm),
      onFailure: ({ code, error }) => { webFailed(ctx.workspaceId, ctx.requestId, code, error, endpoint); fail(res, ctx, code); },
    });
    recordActivity(ctx.workspaceId, req.url!);
  }

  /** What a forwarded request's answer means for metrics, whichever lane took it. */
  function webResponded(status: number, started: bigint, warm: boolean) {
    metrics.proxied('web', status);
    if (warm) metrics.warmLatency(Number(process.hrtime.bigint() - started) / 1e9);
  }

  /**
   * The server at the route's address is not the workspace (a stale route to a reused address): its
   * own counter and line, apart from workspaces that did not answer at all.
   */
  function identityFailed(workspaceId: string, requestId: string, error: Error, kind: 'web' | 'ws') {
    const reason = identityReason(error);
    if (reason === undefined) return;
    metrics.identityFailure(reason);
    log.warn({ event: 'workspace.identity_failed', workspaceId, requestId, reason, kind }, 'the server at the route\'s address is not this workspace');
  }

  /**
   * The route's re-check after an upstream failure: told where a server answered in full without a
   * proof, so that the workspace's own start, if it was that server, is stopped (workspaces.ts).
   */
  function recheckAfter(workspaceId: string, error: Error, endpoint: Endpoint) {
    workspaces.recheck(workspaceId, answeredUnproven(error) ? endpoint : undefined);
  }

  /** What a forwarded request's failure means for metrics, logs and the route, whichever lane took it. */
  function webFailed(workspaceId: string, requestId: string, code: ErrorCode, error: Error, endpoint: Endpoint) {
    metrics.upstreamError(code);
    metrics.proxied('web', code === 'UPSTREAM_TIMEOUT' ? 504 : 502);
    log.warn({ event: 'upstream.error', workspaceId, requestId, code, err: error.message }, 'upstream failed');
    identityFailed(workspaceId, requestId, error, 'web');
    if (code === 'UPSTREAM_UNREACHABLE') recheckAfter(workspaceId, error, endpoint);
  }

  /**
   * A warm request's plan: one object, its outcomes shared methods. A plan object, an outcome object
   * and three closures per request were a fifth of what planWarm allocated (bench/allocations.ts).
   */
  class WarmForward implements ForwardPlan {
    readonly kind = 'forward';
    constructor(
      readonly endpoint: Endpoint, readonly upstreamHead: string, readonly body: BodyMode, readonly responseFields: string,
      readonly workspaceId: string, readonly requestId: string, readonly started: bigint, readonly fields: readonly string[],
      readonly head: boolean,
    ) {}
    responded(status: number) { webResponded(status, this.started, true); }
    failed(code: UpstreamFailure, error: Error): string {
      webFailed(this.workspaceId, this.requestId, code, error, this.endpoint);
      metrics.rejectedRequest(code);
      return renderErrorOnSocket(code, this.requestId, laneWantsHtml(this.fields), this.head);
    }
  }

  /** Step 6: a person's request for content counts; health checks and our own polling do not. */
  function recordActivity(workspaceId: string, url: string) {
    if (url === '/healthz') return;
    activity.touch(workspaceId);
  }

  function forwardedFor(peer: string | undefined, xff: string | string[] | undefined, host: string | undefined): ForwardedFor {
    return forwardedFields(clientAddress(peer, xff, config.trustedProxies), config.publicScheme, host ?? '');
  }
  const forwardedForRequest = (req: IncomingMessage) => forwardedFor(req.socket.remoteAddress, req.headers['x-forwarded-for'], req.headers.host);

  // ---------------------------------------------------------------- the warm lane (gateway/http1.ts)
  /**
   * The same steps for a request that can be decided without waiting: a workspace host, a session
   * verified before, a cached route, a plain body. Anything else is undefined, and node:http brings
   * the request to handleRequest, which decides it in full.
   */
  function planWarm(req: LaneRequest): WarmPlan | undefined {
    const notes = notesOf(req);
    const host = warmHostStep(req, notes);
    if (!host.ok || deps.isDraining()) return undefined;
    const { scan } = req;
    // node:http's path answers (and counts) a request from a site not allowed.
    if (!fromAllowedSite(req.method, scan, scan.host)) return undefined;
    const caller = warmCaller(notes, scan.cookie, host.workspaceId);
    if (host.url.startsWith(PREFIX)) return statusOnLane(req, host.workspaceId, host.url, scan.body, caller.authorized);
    if (scan.body === undefined || !caller.authorized || !guardWorkspacePath(host.url)) return undefined;
    const route = workspaces.resolveCached(host.workspaceId);
    if (route?.kind !== 'running') return undefined;
    const requestId = nextRequestId();
    recordActivity(host.workspaceId, host.url);
    return new WarmForward(
      route.endpoint, upstreamRequestHead(req.method, host.url, req.fields, warmForwardedFor(notes, scan.forwardedFor, scan.host), caller.cookieRest, host.workspaceId),
      scan.body, `x-request-id: ${requestId}\r\n`, host.workspaceId, requestId, process.hrtime.bigint(), req.fields, req.method === 'HEAD',
    );
  }

  function notesOf(req: LaneRequest): WarmNotes {
    return (req.memo.notes ??= newNotes(req.socket.remoteAddress)) as WarmNotes;
  }

  /** Step 1 on the warm lane: a path with one Host (nearly every request) is decided by that Host alone. */
  function warmHostStep(req: LaneRequest, notes: WarmNotes): HostStep {
    const { scan, url } = req;
    if (scan.hosts !== 1 || url[0] !== '/' || req.method === 'CONNECT') return parseHostStep(req.method, url, req.fields);
    if (notes.host !== scan.host) { notes.verdict = parseHost([scan.host!], config.baseDomain); notes.host = scan.host; }
    return hostStepOf(notes.verdict!, originForm(url));
  }

  /**
   * Step 2 on the warm lane: a cookie verified before, of a workspace whose revocation cutoff this
   * replica knows (node:http's path verifies the others, and asks the store).
   */
  function warmCaller(notes: WarmNotes, cookie: string | undefined, workspaceId: string): { authorized: boolean; cookieRest: string | undefined } {
    if (notes.session && notes.cookie === cookie && notes.cookieWorkspace === workspaceId && auth.isCurrent(notes.session)) {
      return { authorized: revocations.voidsNow(workspaceId, notes.session.epoch) === false, cookieRest: notes.cookieRest };
    }
    const parts = sessionCookieParts(cookie, cookieName);
    const session = auth.verifiedSessionFor(parts.values, workspaceId);
    // Only a verified session is noted: a cookie not verified yet may be by the next request.
    notes.session = session;
    notes.cookie = cookie;
    notes.cookieWorkspace = workspaceId;
    notes.cookieRest = parts.rest;
    return { authorized: session !== undefined && revocations.voidsNow(workspaceId, session.epoch) === false, cookieRest: parts.rest };
  }

  function warmForwardedFor(notes: WarmNotes, xff: string | undefined, host: string | undefined): ForwardedFor {
    if (!notes.fwd || notes.xff !== xff || notes.fwd.host !== (host ?? '')) { notes.fwd = forwardedFor(notes.peer, xff, host); notes.xff = xff; }
    return notes.fwd;
  }

  /**
   * The starting page's long-poll, answered on the lane when its session was verified before: the
   * connection stays open, so the reload that follows "running" comes on it and is forwarded warm.
   * node:http answered each poll with Connection: close, and a class's 1,000 reloads then each
   * cost a new connection (bench/, cold herd).
   */
  function statusOnLane(req: LaneRequest, workspaceId: string, url: string, body: RequestBody | undefined, authorized: boolean): AnswerPlan | undefined {
    if (req.method !== 'GET' || body !== 'none' || !authorized) return undefined;
    const query = url.indexOf('?');
    if ((query === -1 ? url : url.slice(0, query)) !== `${PREFIX}status`) return undefined;
    const params = new URLSearchParams(query === -1 ? '' : url.slice(query + 1));
    const requestId = nextRequestId();
    return {
      kind: 'answer',
      answer: (departure) => statusAnswer(workspaceId, requestId, params, departure).then(
        (view) => ({ message: jsonMessage(view, requestId), close: false }),
        (err: unknown) => {
          const code = errorCode(err, workspaceId, requestId);
          metrics.rejectedRequest(code);
          return { message: renderErrorOnSocket(code, requestId, laneWantsHtml(req.fields)), close: true };
        },
      ),
    };
  }

  /** A 200 JSON response as node:http's json() below writes it, for the lane. */
  function jsonMessage(body: unknown, requestId: string): string {
    const s = JSON.stringify(body);
    return `HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\ncache-control: no-store\r\nx-request-id: ${requestId}\r\n`
      + `date: ${httpDate()}\r\ncontent-length: ${Buffer.byteLength(s)}\r\n\r\n${s}`;
  }

  // ---------------------------------------------------------------- /__gateway/ on workspace hosts
  async function gatewayOwnPaths(req: IncomingMessage, res: ServerResponse, ctx: Ctx): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    const path = url.pathname.slice(PREFIX.length);
    res.setHeader('x-request-id', ctx.requestId);
    if (path === 'login' && req.method === 'GET') return login(req, res, ctx, url);
    if (path === 'logout' && req.method === 'POST') {
      res.writeHead(303, { location: '/__gateway/signed-out', 'set-cookie': clearedSessionCookie(cookieName), 'cache-control': 'no-store' });
      res.end();
      return;
    }
    if (path === 'signed-out' && req.method === 'GET') {
      const body = '<!doctype html><title>Signed out</title><p>You are signed out of this workspace.</p>';
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(body);
      return;
    }
    if (!(await authorize(req, ctx.workspaceId))) return fail(res, { ...ctx, html: false }, 'NOT_SIGNED_IN');
    if (path === 'status' && req.method === 'GET') return status(req, res, ctx, url);
    if (path === 'start' && req.method === 'POST') {
      // A simple-request POST from another site cannot set this header (CORS), so it cannot start us.
      if (req.headers['x-requested-with'] !== 'gateway') return fail(res, { ...ctx, html: false }, 'BAD_REQUEST', 'missing x-requested-with');
      const record = await workspaces.requestStart(ctx.workspaceId, { retryFailed: true, requestId: ctx.requestId, admit: () => admitStart(ctx.workspaceId) });
      return json(res, 202, statusView(record));
    }
    return fail(res, ctx, 'NOT_FOUND');
  }

  async function login(req: IncomingMessage, res: ServerResponse, ctx: Ctx, url: URL) {
    const address = clientAddress(req.socket.remoteAddress, req.headers['x-forwarded-for'], config.trustedProxies);
    if (await overLimit(`signin:${address}`, config.rateLimits.signInPerMinute)) { metrics.signInFailure('rate_limited'); return fail(res, ctx, 'RATE_LIMITED'); }
    const token = url.searchParams.get('token') ?? '';
    const check = await auth.checkLoginToken(token, ctx.workspaceId);
    if (!check.ok) { metrics.signInFailure(check.reason); return fail(res, ctx, check.code); }
    // A link handed out before a revocation would otherwise mint a fresh session after it: checked
    // against the store's epoch now, since the session is signed under it.
    const { inForce, signAs, dataSince } = await revocations.forSigning(ctx.workspaceId);
    if (revokedBy(check.epoch, inForce)) { metrics.signInFailure('revoked'); return fail(res, ctx, 'LOGIN_TOKEN_INVALID'); }
    // Signed before the store's data began (Redis restarted empty): its jti's record, if it was
    // used, is gone, so consumeOnce would take it as new. Used or not cannot be told: expired, and
    // the student asks for a new link.
    if (predatesStore(check.latestEpoch, dataSince)) { metrics.signInFailure('store_reset'); return fail(res, ctx, 'LOGIN_TOKEN_EXPIRED'); }
    if (!(await deps.store.consumeOnce(`jti:${check.jti}`, Math.max(1000, check.expiresAt - deps.clock.now() + 60_000)))) {
      metrics.signInFailure('replayed');
      return fail(res, ctx, 'LOGIN_TOKEN_USED');
    }
    const session = await auth.createSession(ctx.workspaceId, signAs);
    // 303 to a same-host path: the token leaves the address bar and never reaches the workspace.
    res.writeHead(303, {
      location: safeNext(url.searchParams.get('next')), 'set-cookie': sessionCookie(cookieName, session.value, config.sessionTtlMs),
      'cache-control': 'no-store', 'referrer-policy': 'no-referrer',
    });
    res.end();
    log.info({ event: 'signin', workspaceId: ctx.workspaceId, requestId: ctx.requestId }, 'signed in');
  }

  async function status(req: IncomingMessage, res: ServerResponse, ctx: Ctx, url: URL) {
    const departure = new Departure();
    res.once('close', () => departure.leave());
    const view = await statusAnswer(ctx.workspaceId, ctx.requestId, url.searchParams, departure);
    if (res.destroyed) return;
    json(res, 200, view);
  }

  /** Long-poll: the view at once if the state differs from what the page knows, else at the next change. */
  async function statusAnswer(workspaceId: string, requestId: string, query: URLSearchParams, departure: Departure): Promise<StatusView> {
    let record = await workspaces.read(workspaceId);
    const known = `${query.get('state')}/${query.get('generation')}/${query.get('stage')}`;
    const key = (r: WorkspaceRecord | undefined) => `${r?.state ?? 'stopped'}/${r?.generation ?? 0}/${r?.stage ?? ''}`;
    if (query.get('wait') === '1' && key(record) === known && (!record || record.state === 'starting' || record.state === 'stopping')) {
      const changed = await workspaces.nextChange(workspaceId, 20_000, departure);
      if (departure.left) return statusView(record); // the client left: nobody reads the answer
      record = changed ?? (await workspaces.read(workspaceId));
      // Nobody drives this start or stop any more (its replica died): take it over, resuming the start
      // or finishing the stop and then starting; a live one holds its lock and is left alone (not while
      // this replica is leaving: a poll it lets go re-polls on one that stays).
      if ((record?.state === 'starting' || record?.state === 'stopping') && !workspaces.isStarting(workspaceId) && !deps.isDraining()) {
        record = (await workspaces.requestStart(workspaceId, { retryFailed: false, requestId, admit: () => admitStart(workspaceId) })) ?? record;
      }
    }
    return statusView(record);
  }

  function json(res: ServerResponse, status: number, body: unknown) {
    const s = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(s) });
    res.end(s);
  }

  // ---------------------------------------------------------------- entry points
  async function handleRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const requestId = nextRequestId();
    const started = process.hrtime.bigint();
    const html = wantsHtml(req.headers);
    const host = parseHostStep(req.method ?? '', req.url ?? '', req.rawHeaders);
    if (!host.ok) return fail(res, { requestId, html }, host.code, host.detail);
    req.url = host.url;
    const ctx: Ctx = { req, requestId, workspaceId: host.workspaceId, html, started };
    // Leaving: every answer closes its connection, so the client's next request finds a replica that stays.
    if (deps.isDraining()) res.setHeader('connection', 'close');
    const { headers } = req;
    if (!fromAllowedSite(req.method!, { site: headers['sec-fetch-site'], mode: headers['sec-fetch-mode'], dest: headers['sec-fetch-dest'], origin: headers.origin }, headers.host)) {
      metrics.signInFailure('origin');
      return fail(res, ctx, 'ORIGIN_FORBIDDEN');
    }
    try {
      if (req.url!.startsWith(PREFIX)) return await gatewayOwnPaths(req, res, ctx);
      if (!(await authorize(req, ctx.workspaceId))) return notSignedIn(req, res, ctx);
      if (!guardWorkspacePath(req.url!)) return fail(res, ctx, 'PROXY_TARGET_FORBIDDEN');
      const route = await workspaces.resolve(ctx.workspaceId);
      if (route.kind === 'running') return forwardWeb(req, res, ctx, route.endpoint, true);
      return await startIfNeeded(req, res, ctx, route.record);
    } catch (err) {
      return fail(res, ctx, errorCode(err, ctx.workspaceId, requestId), err instanceof GatewayError ? err.detail : undefined);
    }
  }

  /** What a request that threw is answered with; a fault of ours is logged. */
  function errorCode(err: unknown, workspaceId: string, requestId: string): ErrorCode {
    if (err instanceof StoreUnavailable) return 'STORE_UNAVAILABLE';
    if (err instanceof GatewayError) return err.code;
    log.error({ event: 'request.error', workspaceId, requestId, err }, 'request failed');
    return 'INTERNAL';
  }

  function notSignedIn(req: IncomingMessage, res: ServerResponse, ctx: Ctx) {
    if (isNavigation(req.method, req.headers) && config.platformLoginUrl) {
      const back = `${config.publicScheme}://${req.headers.host}${req.url}`;
      const to = new URL(config.platformLoginUrl);
      to.searchParams.set('return_to', back);
      res.writeHead(303, { location: to.toString(), 'cache-control': 'no-store', 'x-request-id': ctx.requestId, 'x-gateway-error': 'NOT_SIGNED_IN' });
      res.end();
      return;
    }
    fail(res, ctx, 'NOT_SIGNED_IN');
  }

  async function handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const requestId = nextRequestId();
    socket.on('error', destroyOnError);
    const host = parseHostStep(req.method ?? '', req.url ?? '', req.rawHeaders);
    if (!host.ok) return failSocket(socket, requestId, host.code);
    req.url = host.url;
    const workspaceId = host.workspaceId;
    // RFC 6455 4.1: GET, Upgrade: websocket, a key and version 13. h2c and others are not ours.
    if (req.method !== 'GET' || (req.headers.upgrade ?? '').toLowerCase() !== 'websocket'
      || !req.headers['sec-websocket-key'] || req.headers['sec-websocket-version'] !== '13') return failSocket(socket, requestId, 'BAD_REQUEST');
    // A handshake with content (RFC 9112 6.3): node:http upgrades at its head, so the body would be
    // relayed to the workspace as WebSocket bytes, or a workspace waiting for it would hold the
    // upgrade until its timeout. Parsers disagree on where such a request ends: refused at once.
    if (hasRequestBody(req.headers)) return failSocket(socket, requestId, 'BAD_REQUEST');
    try {
      const session = await authorize(req, workspaceId);
      if (!session) return failSocket(socket, requestId, 'NOT_SIGNED_IN');
      // Cross-site WebSocket hijacking: only the workspace's own origin may open its sockets.
      if (!sameOrigin(req.headers.origin, req.headers.host, config.publicScheme)) { metrics.signInFailure('origin'); return failSocket(socket, requestId, 'ORIGIN_FORBIDDEN'); }
      if (req.url!.startsWith(PREFIX) || !guardWorkspacePath(req.url!)) return failSocket(socket, requestId, 'PROXY_TARGET_FORBIDDEN');
      if (deps.isDraining()) return failSocket(socket, requestId, 'SHUTTING_DOWN');
      const route = await workspaces.resolve(workspaceId);
      if (route.kind !== 'running') {
        const state = route.record?.state;
        return failSocket(socket, requestId, state === 'starting' ? 'WORKSPACE_STARTING' : state === 'failed' ? 'WORKSPACE_START_FAILED' : 'WORKSPACE_STOPPED');
      }
      forwardWs(req, socket, head, workspaceId, session.epoch, requestId, route.endpoint);
    } catch (err) {
      if (err instanceof StoreUnavailable) return failSocket(socket, requestId, 'STORE_UNAVAILABLE');
      log.error({ event: 'upgrade.error', workspaceId, requestId, err }, 'upgrade failed');
      return failSocket(socket, requestId, 'INTERNAL');
    }
  }

  /** Step 5 (ws): forward the upgrade, then hand the socket pair to the app for tracking and taps. */
  function forwardWs(req: IncomingMessage, socket: Duplex, head: Buffer, workspaceId: string, sessionEpoch: number, requestId: string, endpoint: Endpoint) {
    let upgraded = false;
    forwarder.ws(req, socket, head, endpoint, workspaceId, forwardedForRequest(req), sessionCookieParts(req.headers.cookie, cookieName).rest, {
      onUpgrade: (upstream, response) => {
        // Revoked while the workspace was answering: the pair would not be tracked yet when the
        // revocation closed this session's WebSockets, so it is refused here instead.
        if (revocations.voidsNow(workspaceId, sessionEpoch) === true) {
          upstream.destroy();
          metrics.signInFailure('revoked');
          failSocket(socket, requestId, 'NOT_SIGNED_IN');
          return false;
        }
        upgraded = true;
        metrics.proxied('ws', 101);
        // Opening (or re-opening) a socket is not evidence of a person; its messages may be (issue 5).
        deps.onWebSocket({ workspaceId, sessionEpoch, client: socket, upstream, req, response });
      },
      onFailure: ({ code, error }) => {
        // After the 101 an error is the end of an established pair, most often the browser going away
        // (a closed tab resets the client socket and the upstream side fails with it): neither an
        // upstream failure to count nor a reason to doubt the route (bench/ found a client reset making
        // the gateway recheck, and with a provisioner that did not know the task, mark it gone).
        if (upgraded) { socket.destroy(); return; }
        metrics.upstreamError(code);
        metrics.proxied('ws', code === 'UPSTREAM_TIMEOUT' ? 504 : 502);
        log.warn({ event: 'upstream.error', workspaceId, requestId, code, err: error.message, kind: 'ws' }, 'upstream failed');
        identityFailed(workspaceId, requestId, error, 'ws');
        if (code === 'UPSTREAM_UNREACHABLE') recheckAfter(workspaceId, error, endpoint);
        if (socket.writable) failSocket(socket, requestId, code);
        else socket.destroy();
      },
    });
  }

  return { handleRequest, handleUpgrade, planWarm, statusView };
}

export type RequestPath = ReturnType<typeof createRequestPath>;
