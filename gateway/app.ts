// Builds one gateway from its parts: the public listener (raw node:http, the request path), the
// admin listener (fastify), the workspace coordinator, activity, metrics and the in-process reaper.
// Implementations (store, provisioner) are chosen by the entry point and passed in; every resource
// made here registers its own close, and close() undoes them in reverse order.
import { randomUUID } from 'node:crypto';
import http, { type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger as PinoLogger } from 'pino';
import type { Provisioner } from '../provisioner/contract.js';
import { createReaper, type Reaper } from '../reaper/reaper.js';
import { createActivityRecorder } from './activity-recorder.js';
import { createAdminServer } from './admin.js';
import { createAuth } from './auth.js';
import { systemClock, type Clock } from './clock.js';
import type { Config } from './config.js';
import { renderErrorOnSocket } from './errors.js';
import type { Metrics } from './metrics.js';
import { createForwarder } from './proxy.js';
import { createRequestPath } from './request-path.js';
import type { StateStore } from './store/contract.js';
import { createWorkspaces } from './workspaces.js';

export interface GatewayDeps {
  config: Config;
  store: StateStore;
  provisioner: Provisioner;
  metrics: Metrics;
  logger: PinoLogger;
  clock?: Clock;
  instanceId?: string;
}

interface WsPair { workspaceId: string; client: Duplex; upstream: Duplex; lastUpstream: number; lastClient: number }

export async function createGateway(deps: GatewayDeps) {
  const { config, store, provisioner, metrics, logger } = deps;
  const clock = deps.clock ?? systemClock;
  const instanceId = deps.instanceId ?? `gw-${randomUUID().slice(0, 8)}`;
  const log = logger.child({ instance: instanceId });
  const closers: Array<() => Promise<void> | void> = [];
  let draining = false;
  let ready = false;

  const auth = createAuth({ secret: config.gatewaySecret, sessionTtlMs: config.sessionTtlMs, loginTokenMaxTtlMs: config.loginTokenMaxTtlMs, clock });
  const activity = createActivityRecorder({ store, clock, metrics, instanceId, flushIntervalMs: config.activityFlushIntervalMs });
  closers.push(() => activity.close());
  const workspaces = createWorkspaces({ store, provisioner, clock, metrics, log, instanceId, startDeadlineMs: config.startDeadlineMs, routeCacheTtlMs: config.routeCacheTtlMs });
  closers.push(() => workspaces.close());
  const forwarder = createForwarder({
    connectTimeoutMs: config.upstreamConnectTimeoutMs, responseTimeoutMs: config.upstreamTimeoutMs, maxSockets: config.upstreamMaxSockets,
  });
  closers.push(() => forwarder.close());

  // ---------------------------------------------------------------- WebSocket pairs
  const pairs = new Set<WsPair>();
  function trackWebSocket(p: { workspaceId: string; client: Duplex; upstream: Duplex; req: IncomingMessage }) {
    const pair: WsPair = { workspaceId: p.workspaceId, client: p.client, upstream: p.upstream, lastUpstream: clock.now(), lastClient: clock.now() };
    pairs.add(pair);
    metrics.wsOpened();
    activity.connectionOpened(p.workspaceId);
    p.upstream.on('data', () => { pair.lastUpstream = clock.now(); });
    p.client.on('data', () => { pair.lastClient = clock.now(); });
    let closed = false;
    const close = () => {
      if (closed) return;
      closed = true;
      pairs.delete(pair);
      metrics.wsClosed();
      activity.connectionClosed(p.workspaceId);
      // An upstream that died must not leave the browser waiting: close its socket promptly (issue 8).
      p.client.destroy();
      p.upstream.destroy();
    };
    p.upstream.once('close', close);
    p.client.once('close', close);
    p.upstream.once('error', close);
    p.client.once('error', close);
  }
  // A frozen peer (SIGSTOP'd workspace, vanished laptop) is cut after the no-traffic limit, not the
  // operating system's two hours (issue 8).
  const sweep = setInterval(() => {
    const now = clock.now();
    const limit = config.wsIdleTimeoutMs * 2;
    for (const pair of pairs) {
      if (now - pair.lastUpstream > limit && now - pair.lastClient > limit) { pair.client.destroy(); pair.upstream.destroy(); }
    }
  }, Math.max(1000, Math.floor(config.wsIdleTimeoutMs / 2)));
  sweep.unref();
  closers.push(() => clearInterval(sweep));

  // ---------------------------------------------------------------- public listener
  const path = createRequestPath({
    config, clock, store, workspaces, forwarder, auth, activity, metrics, log,
    onWebSocket: trackWebSocket, isDraining: () => draining,
  });
  const publicServer = http.createServer({
    keepAliveTimeout: config.keepAliveTimeoutMs,
    headersTimeout: config.headersTimeoutMs,
    requestTimeout: config.requestTimeoutMs,
    maxHeaderSize: config.maxHeaderSize,
    // Node's parser already refuses most smuggling; keep it strict (no lenient header parsing).
    insecureHTTPParser: false,
    joinDuplicateHeaders: false,
  }, (req, res) => { void path.handleRequest(req, res); });
  publicServer.on('upgrade', (req, socket, head) => { void path.handleUpgrade(req, socket, head); });
  publicServer.on('clientError', (err: Error & { code?: string }, socket: Duplex) => {
    if (!socket.writable || (err.code === 'ECONNRESET')) { socket.destroy(); return; }
    const code = err.code === 'HPE_HEADER_OVERFLOW' ? 'HEADERS_TOO_LARGE' : 'BAD_REQUEST';
    metrics.rejectedRequest(code);
    socket.end(renderErrorOnSocket(code));
  });

  // ---------------------------------------------------------------- admin listener
  const admin = await createAdminServer({
    config, clock, store, workspaces, auth, metrics, logger: log as PinoLogger,
    isReady: () => ready && !draining, openConnections: (id) => activity.openConnections(id),
  });
  metrics.onCollect(async () => { metrics.running(await store.countRunning()); });

  // ---------------------------------------------------------------- reaper
  let reaper: Reaper | undefined;
  if (config.reaperEnabled) {
    reaper = createReaper({ store, workspaces, clock, metrics, log, instanceId, idleTimeoutMs: config.idleTimeoutMs, maxSessionMs: config.maxSessionMs, intervalMs: config.reapIntervalMs });
    closers.push(() => reaper!.close());
  }

  async function listen(): Promise<{ gatewayPort: number; adminPort: number }> {
    await new Promise<void>((resolve, reject) => {
      publicServer.once('error', reject);
      publicServer.listen(config.gatewayPort, config.listenHost, () => { publicServer.off('error', reject); resolve(); });
    });
    await admin.listen({ port: config.adminPort, host: config.listenHost });
    ready = true;
    return { gatewayPort: (publicServer.address() as AddressInfo).port, adminPort: (admin.server.address() as AddressInfo).port };
  }

  let closing: Promise<void> | undefined;
  /**
   * Graceful drain (issue 8): readiness turns false at once; connections keep being served for the
   * drain period while the load balancer deregisters us; then WebSockets are closed so browsers
   * reconnect to another replica, activity is flushed and leases released.
   */
  function close(drainPeriodMs = 0): Promise<void> {
    return (closing ??= (async () => {
      draining = true;
      if (drainPeriodMs > 0) await new Promise((r) => setTimeout(r, drainPeriodMs));
      publicServer.close();
      for (const pair of pairs) { pair.client.destroy(); pair.upstream.destroy(); }
      publicServer.closeIdleConnections();
      for (const fn of closers.reverse()) await Promise.resolve(fn()).catch((err) => log.warn({ err }, 'close step failed'));
      publicServer.closeAllConnections();
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
    reaper,
    forwarder,
    listen,
    close,
    isDraining: () => draining,
    openWebSockets: () => pairs.size,
  };
}

export type Gateway = Awaited<ReturnType<typeof createGateway>>;
