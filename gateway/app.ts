// Builds one gateway from its parts: the public listener (raw node:http, the request path), the
// admin listener (fastify), the workspace coordinator, activity, metrics and the in-process reaper.
// Implementations (store, provisioner) are chosen by the entry point and passed in; every resource
// made here registers its own close, and close() undoes them in reverse order.
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger as PinoLogger } from 'pino';
import type { Provisioner } from '../provisioner/contract.js';
import { createReaper, type Reaper } from '../reaper/reaper.js';
import { createActivityRecorder } from './activity-recorder.js';
import { createAdminServer } from './admin.js';
import { createAuth } from './auth.js';
import { systemClock, type Clock } from './clock.js';
import { REQUEST_GRACE_MS, type Config } from './config.js';
import { clientErrorCode, renderErrorOnSocket } from './errors.js';
import type { Metrics } from './metrics.js';
import { createHttp1Front } from './http1.js';
import { createForwarder } from './proxy.js';
import { canReconcile, createReconciler, reconcileFromList } from './reconcile.js';
import { createRequestPath } from './request-path.js';
import { createRevocations, type RevocationSource } from './revocations.js';
import type { StateStore } from './store/contract.js';
import { createUpstreamPool } from './upstream-pool.js';
import { createWorkspaces } from './workspaces.js';
import { identityKeysOf } from './workspace-proof.js';
import { createWsPairs } from './ws-pairs.js';
import { connectionIdentity, createWsActivityTap, negotiateExtensions, type WsActivityTap } from './activity/index.js';

/** Resolves when p does or after ms, whichever is first (the timer never outlives it). */
async function within(ms: number, p: Promise<unknown>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p, new Promise((r) => { timer = setTimeout(r, ms); })]);
  clearTimeout(timer);
}

/** The log event for each way a replica learns a revocation epoch (gateway/revocations.ts). */
const REVOCATION_EVENTS: Record<RevocationSource, [event: string, message: string]> = {
  made: ['sessions.revoked', 'sessions revoked'],
  announced: ['sessions.revoked_elsewhere', 'sessions revoked on another replica'],
  read: ['sessions.cutoff_learned', 'revocation cutoff read from the store'],
};

/**
 * A VS Code connection within one workspace. A workspace id is a DNS label (host.ts), never holding a
 * space, so no two (workspace, token) pairs make the same key.
 */
function connectionKey(workspaceId: string, reconnectionToken: string): string {
  return `${workspaceId} ${reconnectionToken}`;
}

/** Idle upstream connections close after this, below code-server's own keep-alive (5 s). */
const UPSTREAM_IDLE_MS = 4000;

/** Accept queue of the public listener (see listen()). */
export const LISTEN_BACKLOG = 4096;

export interface GatewayDeps {
  config: Config;
  store: StateStore;
  provisioner: Provisioner;
  metrics: Metrics;
  logger: PinoLogger;
  clock?: Clock;
  instanceId?: string;
}

export async function createGateway(deps: GatewayDeps) {
  const { config, store, provisioner, metrics, logger } = deps;
  const clock = deps.clock ?? systemClock;
  const instanceId = deps.instanceId ?? `gw-${randomUUID().slice(0, 8)}`;
  const log = logger.child({ instance: instanceId });
  const closers: Array<() => Promise<void> | void> = [];
  let draining = false;
  let ready = false;

  const auth = createAuth({ secret: config.gatewaySecret, acceptedSecret: config.gatewaySecretAccepted, sessionTtlMs: config.sessionTtlMs, loginTokenMaxTtlMs: config.loginTokenMaxTtlMs, clock });
  const activity = createActivityRecorder({ store, clock, metrics, instanceId, flushIntervalMs: config.activityFlushIntervalMs, enabled: config.activityTracking });
  closers.push(() => activity.close());
  const workspaces = createWorkspaces({
    store, provisioner, clock, metrics, log, instanceId, startDeadlineMs: config.startDeadlineMs, routeCacheTtlMs: config.routeCacheTtlMs,
    ...identityKeysOf(config),
  });
  closers.push(() => workspaces.close());
  // Keep-alive connections to workspaces, for both the warm lane and node:http's side of the path.
  const upstreamPool = createUpstreamPool({
    connectTimeoutMs: config.upstreamConnectTimeoutMs, responseTimeoutMs: config.upstreamTimeoutMs, maxSockets: config.upstreamMaxSockets,
    idleMs: UPSTREAM_IDLE_MS,
  }, config.maxHeaderSize);
  closers.push(() => upstreamPool.close());
  const forwarder = createForwarder({ connectTimeoutMs: config.upstreamConnectTimeoutMs, pool: upstreamPool });
  closers.push(() => forwarder.close());

  // ---------------------------------------------------------------- WebSocket pairs
  // The activity signal reads what the browser sends (issue 5). Runs before the 101 reaches the
  // browser, so the permessage-deflate answer can still ask for a small window (RFC 7692 7.1.2.2).
  // VS Code sends its window-focus flag only on change: a reconnected socket inherits the last one.
  // Keyed by workspace and VS Code's reconnectionToken (connectionKey): the token is the client's to
  // choose, so by the token alone a socket of one workspace took another's flag (the same token, or a
  // forged one), and an inactive window elsewhere could hide a student's edits or a forged active one
  // keep an idle workspace up.
  const focusByConnection = new Map<string, boolean | null>();
  // The newest open socket of each VS Code connection. A dropped network's browser reconnects while
  // the old socket is still open here (until the ping timeout or the load balancer cuts it), so its
  // flag was not in focusByConnection yet: the new socket started "active", and an inactive window's
  // file rewritten on disk counted as typing again, keeping an idle tab's workspace up.
  const liveByConnection = new Map<string, WsActivityTap>();
  // One function for every tap: a closure per WebSocket was part of its idle memory (bench/).
  const touchFromSocket = (at: number, workspaceId: string) => activity.touch(workspaceId, at);
  const wsPairs = createWsPairs<WsActivityTap>({
    clock, idleTimeoutMs: config.wsIdleTimeoutMs,
    hooks: {
      opened: (pair, req, response) => {
        metrics.wsOpened();
        activity.connectionOpened(pair.workspaceId);
        if (!config.activityTracking) return;
        const negotiated = negotiateExtensions(req.headers['sec-websocket-extensions'] as string | undefined, response.headers['sec-websocket-extensions'] as string | undefined, config.activity.clientWindowBits);
        if (negotiated.responseHeader === undefined) delete response.headers['sec-websocket-extensions'];
        else response.headers['sec-websocket-extensions'] = negotiated.responseHeader;
        const identity = connectionIdentity(req.url);
        const key = identity ? connectionKey(pair.workspaceId, identity.token) : undefined;
        const live = key ? liveByConnection.get(key) : undefined;
        const tap = pair.observer = createWsActivityTap({
          inflate: negotiated.inflate, config: config.activity, now: clock.now,
          initialFocus: key && identity?.reconnection ? (live ? live.status().focus : focusByConnection.get(key) ?? null) : null,
          workspaceId: pair.workspaceId, connection: identity?.token, onActivity: touchFromSocket,
        });
        if (key) liveByConnection.set(key, tap);
      },
      closed: (pair) => {
        metrics.wsClosed();
        activity.connectionClosed(pair.workspaceId);
        const tap = pair.observer;
        if (!tap) return;
        const { connection, focus } = tap.status();
        const key = connection ? connectionKey(pair.workspaceId, connection) : undefined;
        // Only the connection's newest socket speaks for it: an older one cut late has a stale flag.
        if (key && liveByConnection.get(key) === tap) {
          liveByConnection.delete(key);
          if (focusByConnection.size >= 10_000) focusByConnection.delete(focusByConnection.keys().next().value!);
          focusByConnection.set(key, focus);
        }
        tap.close();
      },
      // Not a recheck yet: the process may not have been reaped. VS Code's reconnect meets the refusal,
      // and that failure re-checks the route (request-path forwardWs).
      upstreamLost: (pair) => { workspaces.forget(pair.workspaceId); },
    },
  });
  closers.push(() => wsPairs.close());

  // Revoked sessions (admin API): refused from the revocation on, and their open WebSockets closed.
  const revocations = createRevocations({
    store, clock, metrics, refreshMs: config.routeCacheTtlMs,
    // A voided session lasts at most SESSION_TTL past the revocation; a sign-in link less.
    keepMs: Math.max(config.sessionTtlMs, config.loginTokenMaxTtlMs) + 60_000,
    // One `sessions.revoked` per revocation, on the replica it was made on; the others say how they
    // learnt the cutoff, at debug unless it closed something (a read finds old cutoffs, often).
    onRevoked: (id, epoch, source) => {
      const closed = wsPairs.closeRevoked(id, epoch);
      const [event, message] = REVOCATION_EVENTS[source];
      log[source === 'made' || closed > 0 ? 'info' : 'debug']({ event, workspaceId: id, cutoff: epoch, websocketsClosed: closed }, message);
    },
  });
  closers.push(() => revocations.close());

  // ---------------------------------------------------------------- public listener
  const path = createRequestPath({
    config, clock, store, workspaces, forwarder, auth, revocations, activity, metrics, log,
    onWebSocket: wsPairs.track, isDraining: () => draining,
  });
  const publicServer = http.createServer({
    keepAliveTimeout: config.keepAliveTimeoutMs,
    headersTimeout: config.headersTimeoutMs,
    requestTimeout: config.requestTimeoutMs,
    // Node enforces the two timeouts above on a sweep (30 s by default); a shorter one cuts slowloris
    // and slow bodies close to their limits.
    connectionsCheckingInterval: 2000,
    maxHeaderSize: config.maxHeaderSize,
    // Node's parser already refuses most smuggling; keep it strict (no lenient header parsing).
    insecureHTTPParser: false,
    joinDuplicateHeaders: false,
  }, (req, res) => {
    // One request per handed-over connection, then the client comes back on the warm lane (http1.ts).
    if (front.releasesAfter(req.socket)) res.shouldKeepAlive = false;
    void path.handleRequest(req, res);
  });
  publicServer.on('upgrade', (req, socket, head) => { void path.handleUpgrade(req, socket, head); });
  function clientError(err: Error & { code?: string }, socket: Duplex) {
    if (!socket.writable || (err.code === 'ECONNRESET')) { socket.destroy(); return; }
    const code = clientErrorCode(err.code);
    metrics.rejectedRequest(code);
    socket.end(renderErrorOnSocket(code));
  }
  publicServer.on('clientError', clientError);
  // Every connection starts on the warm lane, which hands it to publicServer when it cannot decide.
  const front = createHttp1Front({
    server: publicServer, pool: upstreamPool, plan: path.planWarm, clientError,
    keepAliveTimeoutMs: config.keepAliveTimeoutMs, headersTimeoutMs: config.headersTimeoutMs, requestTimeoutMs: config.requestTimeoutMs,
    maxHeaderSize: config.maxHeaderSize,
  });

  // ---------------------------------------------------------------- admin listener
  function workspaceOrigin(id: string): string {
    const bound = (publicServer.address() as AddressInfo | null)?.port;
    const port = config.publicPort ?? (config.development ? bound : undefined);
    const standard = config.publicScheme === 'https' ? 443 : 80;
    return `${config.publicScheme}://ws-${id}.${config.baseDomain}${port && port !== standard ? `:${port}` : ''}`;
  }
  const admin = await createAdminServer({
    config, clock, store, workspaces, auth, revocations, metrics, logger: log as PinoLogger,
    isReady: () => ready && !draining, workspaceOrigin, openConnections: (id) => activity.openConnections(id),
    prepare: provisioner.prepare ? (id, signal) => provisioner.prepare!(id, signal) : undefined,
  });
  // Scrape-time store ping and running count (issue 6), never a round trip on a proxied request.
  metrics.watchStore(store, Math.min(2000, config.redisCommandTimeoutMs));

  // ---------------------------------------------------------------- reconcile
  let reconcileNow: () => Promise<void> = async () => undefined;
  // ECS compares tasks with Cloud Map and the store; other provisioners adopt what they list.
  {
    const reconcilable = canReconcile(provisioner) ? provisioner : reconcileFromList(provisioner);
    const reconcileMs = (provisioner as { reconcileIntervalMs?: number }).reconcileIntervalMs ?? 60_000;
    const reconciler = createReconciler({ provisioner: reconcilable, store, workspaces, log, intervalMs: reconcileMs });
    // At start: adopt what runs before the first request needs it (issue 4).
    void reconciler.run();
    closers.push(() => reconciler.close());
    reconcileNow = () => reconciler.run();
  }

  // ---------------------------------------------------------------- reaper
  let reaper: Reaper | undefined;
  if (config.reaperEnabled) {
    reaper = createReaper({ store, workspaces, clock, metrics, log, instanceId, idleTimeoutMs: config.idleTimeoutMs, maxSessionMs: config.maxSessionMs, intervalMs: config.reapIntervalMs, activityFlushIntervalMs: config.activityFlushIntervalMs });
    closers.push(() => reaper!.close());
  }

  async function listen(): Promise<{ gatewayPort: number; adminPort: number }> {
    await new Promise<void>((resolve, reject) => {
      publicServer.once('error', reject);
      // A class opening its workspaces at 09:00 connects all at once: Node's default accept queue
      // (511) dropped SYNs of a 1,000-connection burst, and each dropped client waited a second to
      // retry (bench/, cold herd). The kernel still caps it at net.core.somaxconn.
      publicServer.listen({ port: config.gatewayPort, host: config.listenHost, backlog: LISTEN_BACKLOG }, () => { publicServer.off('error', reject); resolve(); });
    });
    await admin.listen({ port: config.adminPort, host: config.listenHost });
    ready = true;
    return { gatewayPort: (publicServer.address() as AddressInfo).port, adminPort: (admin.server.address() as AddressInfo).port };
  }

  let closing: Promise<void> | undefined;
  /**
   * Graceful drain (issue 8): readiness turns false at once; connections keep being served while the
   * load balancer deregisters us, for at most the drain period: on ECS the ALB deregisters and waits
   * its deregistration delay before SIGTERM, so we leave as soon as the last WebSocket is gone. Then
   * WebSockets are closed with 1001 (going away) so VS Code reconnects to another replica, in-flight
   * requests get a short grace, activity is flushed and leases released.
   */
  function close(drainPeriodMs = 0): Promise<void> {
    return (closing ??= (async () => {
      draining = true;
      if (drainPeriodMs > 0) await within(drainPeriodMs, wsPairs.whenEmpty());
      const serverClosed = new Promise<void>((resolve) => publicServer.close(() => resolve()));
      publicServer.closeIdleConnections();
      front.closeIdle();
      // Held status long-polls answer now with the state as it is, and their connections close: the
      // page polls again through the load balancer, to a replica that stays (else each held one kept
      // this replica up for the whole grace).
      workspaces.wakeAll();
      await wsPairs.closeAll();
      await within(REQUEST_GRACE_MS, serverClosed);
      for (const fn of closers.reverse()) await Promise.resolve(fn()).catch((err) => log.warn({ err }, 'close step failed'));
      publicServer.closeAllConnections();
      front.closeAll();
      await admin.close();
      ready = false;
    })());
  }

  return {
    instanceId,
    publicServer,
    admin,
    workspaces,
    activity,
    auth,
    revocations,
    reaper,
    forwarder,
    /** Upstream connections held open to workspaces (for leak checks). */
    upstreamConnections: () => upstreamPool.size(),
    /** Client connections on the warm lane now (the rest are node:http's). */
    laneConnections: () => front.size(),
    /** Closes the upstream connections (tests: nothing may be left behind). */
    closeUpstreams: () => { forwarder.close(); upstreamPool.close(); },
    listen,
    close,
    isDraining: () => draining,
    openWebSockets: () => wsPairs.size(),
    /** One reconcile pass now (tests; it also runs at start and every RECONCILE_INTERVAL). */
    reconcile: () => reconcileNow(),
    workspaceOrigin,
  };
}

export type Gateway = Awaited<ReturnType<typeof createGateway>>;
