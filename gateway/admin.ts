// The internal listener (ADMIN_PORT): health, readiness, metrics and the admin API for the
// platform's backend. fastify lives here only; workspace traffic never reaches it (issue 2).
import { randomUUID, timingSafeEqual, createHash } from 'node:crypto';
import Fastify, { LogController, type FastifyInstance } from 'fastify';
import swagger from '@fastify/swagger';
import type { Auth } from './auth.js';
import type { Clock } from './clock.js';
import type { Config } from './config.js';
import { GatewayError, clientErrorCode, renderError, renderErrorOnSocket, type ErrorCode } from './errors.js';
import { WORKSPACE_ID } from './host.js';
import type { Metrics } from './metrics.js';
import type { Revocations } from './revocations.js';
import { WORKSPACE_STATES, type StateStore, type WorkspaceRecord } from './store/contract.js';
import { StoreUnavailable } from './store/contract.js';
import { StartFailure } from '../provisioner/contract.js';
import type { Workspaces } from './workspaces.js';
import type { Logger as PinoLogger } from 'pino';

export interface AdminDeps {
  config: Config;
  clock: Clock;
  store: StateStore;
  workspaces: Workspaces;
  auth: Auth;
  revocations: Revocations;
  metrics: Metrics;
  logger: PinoLogger;
  isReady(): boolean;
  /** Origin of a workspace host as browsers reach it (for sign-in links). */
  workspaceOrigin(id: string): string;
  openConnections(id: string): number;
  /** The provisioner's preparation of a first start, where it has one. */
  prepare?(id: string, signal: AbortSignal): Promise<void>;
}

const idParam = { type: 'object', required: ['id'], properties: { id: { type: 'string', pattern: WORKSPACE_ID.source, maxLength: 60 } } } as const;
const workspaceSchema = {
  type: 'object',
  properties: {
    id: { type: 'string' }, state: { type: 'string', enum: [...WORKSPACE_STATES] }, generation: { type: 'integer' },
    stage: { type: 'string' }, queuePosition: { type: 'integer' }, since: { type: 'integer' }, startedAt: { type: 'integer' },
    lastActivity: { type: 'integer' }, openConnections: { type: 'integer' }, reasonCode: { type: 'string' }, reason: { type: 'string' },
  },
  required: ['id', 'state', 'generation'],
} as const;
const errorSchema = {
  type: 'object',
  properties: { error: { type: 'object', properties: { code: { type: 'string' }, message: { type: 'string' }, detail: { type: 'string' }, requestId: { type: 'string' } }, required: ['code', 'message'] } },
} as const;

/** What every POST route may also answer, whatever its own body: fastify reads any body sent. */
const bodyErrors = { 413: errorSchema, 415: errorSchema } as const;

/** fastify's refusals of a request body, by its error code, as the catalogue's codes. */
const BODY_REFUSALS: Readonly<Record<string, ErrorCode>> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'BODY_TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
};

/** A path on the workspace host: `/`, not `//host` or `/\\host` (the gateway also sanitizes on redemption). */
const NEXT_PATH = '^/(?![/\\\\])';

function sameSecret(given: string, expected: string): boolean {
  // Hash both first so the comparison is constant-time whatever the lengths.
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

export async function createAdminServer(deps: AdminDeps): Promise<FastifyInstance> {
  const { config, store, workspaces } = deps;
  const app = Fastify({
    loggerInstance: deps.logger as unknown as import("fastify").FastifyBaseLogger,
    genReqId: () => randomUUID(),
    // One line per finished request (issue 6) instead of fastify's two; see the onResponse hook.
    logController: new LogController({ disableRequestLogging: true }),
    ajv: { customOptions: { removeAdditional: false, allErrors: false } },
    // A request Node's parser refuses gets the catalogue's answer, not fastify's own JSON shape.
    clientErrorHandler: (err: Error & { code?: string }, socket) => {
      if (!socket.writable || err.code === 'ECONNRESET') { socket.destroy(); return; }
      socket.end(renderErrorOnSocket(clientErrorCode(err.code)));
    },
  });
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'Workspace Gateway admin API', version: '1' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });

  // JSON in, nothing else: fastify also reads text/plain by default, which only reached the schema's 400.
  app.removeContentTypeParser('text/plain');

  const send = (reply: import('fastify').FastifyReply, code: ErrorCode, detail?: string) => {
    const r = renderError(code, { html: false, detail, requestId: String(reply.request.id) });
    return reply.code(r.status).headers(r.headers).send(JSON.parse(r.body));
  };

  app.setErrorHandler((err: Error & { validation?: unknown; statusCode?: number; code?: string }, _req, reply) => {
    if (err.validation) return send(reply, 'BAD_REQUEST', err.message);
    const refusal = err.code === undefined ? undefined : BODY_REFUSALS[err.code];
    if (refusal === 'UNSUPPORTED_MEDIA_TYPE') reply.header('accept', 'application/json'); // RFC 9110 15.5.16
    if (refusal) return send(reply, refusal, err.message);
    if (err instanceof StoreUnavailable) return send(reply, 'STORE_UNAVAILABLE');
    if (err instanceof GatewayError) return send(reply, err.code, err.detail);
    if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) return send(reply, 'BAD_REQUEST', err.message);
    reply.log.error({ err }, 'admin request failed');
    return send(reply, 'INTERNAL');
  });
  app.addHook('onResponse', async (req, reply) => {
    // The route pattern, not the raw URL: no query string reaches the log. Probes log at debug.
    const route = req.routeOptions.url ?? 'unmatched';
    const probe = route === '/metrics' || route === '/healthz' || route === '/readyz';
    reply.log[probe ? 'debug' : 'info']({ event: 'admin.request', method: req.method, route, status: reply.statusCode, ms: Math.round(reply.elapsedTime * 10) / 10 }, 'admin request');
  });
  // A known path asked with another method is 405 with Allow (RFC 9110 15.5.6), not 404: a client
  // sending PUT for POST was told the workspace does not exist.
  const known: Array<{ path: RegExp; methods: Set<string> }> = [];
  app.addHook('onRoute', (route) => {
    const path = new RegExp(`^${route.url.split('/').map((seg) => (seg.startsWith(':') ? '[^/]+' : seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))).join('/')}$`);
    const methods = [route.method].flat().map((m) => m.toUpperCase());
    if (methods.includes('GET')) methods.push('HEAD');
    const entry = known.find((k) => k.path.source === path.source);
    if (entry) for (const m of methods) entry.methods.add(m);
    else known.push({ path, methods: new Set(methods) });
  });
  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split('?')[0];
    const allow = new Set(known.filter((k) => k.path.test(path)).flatMap((k) => [...k.methods]));
    if (allow.size === 0) return send(reply, 'NOT_FOUND');
    reply.header('allow', [...allow].sort().join(', '));
    return send(reply, 'METHOD_NOT_ALLOWED');
  });

  app.get('/healthz', { schema: { hide: true } }, async () => ({ status: 'ok' }));
  app.get('/readyz', { schema: { hide: true } }, async (_req, reply) => {
    const ready = deps.isReady();
    return reply.code(ready ? 200 : 503).send({ ready });
  });
  app.get('/metrics', { schema: { hide: true } }, async (_req, reply) => {
    reply.header('content-type', deps.metrics.registry.contentType);
    return deps.metrics.registry.metrics();
  });

  await app.register(async (api) => {
    // `/api/workspaces/` and `/api/workspaces//stop` match `:id` with an empty id, which was a 400 about the
    // id's pattern. No workspace has an empty id, so no resource is named: 404, as for any unknown path
    // (before the token check, as those are). Not the list: a client that built `/api/workspaces/${id}`
    // with no id would read a list as one workspace, and the list keeps its one spelling.
    api.addHook('onRequest', async (req, reply) => {
      if ((req.params as { id?: string }).id === '') return send(reply, 'NOT_FOUND');
    });
    api.addHook('onRequest', async (req, reply) => {
      if (req.url === '/api/openapi.json') return;
      // RFC 9110 11.1: the auth scheme is case-insensitive.
      const m = /^bearer +(\S+)$/i.exec(req.headers.authorization ?? '');
      const token = m ? m[1] : '';
      if (!token || !sameSecret(token, config.adminToken)) return send(reply, 'ADMIN_UNAUTHORIZED');
    });

    const view = async (id: string, r: WorkspaceRecord | undefined) => {
      const base = r ?? { id, state: 'stopped' as const, generation: 0, since: 0 };
      const lastActivity = await store.getActivity(id);
      const connections = await store.getConnections(id).catch(() => deps.openConnections(id));
      return {
        id, state: base.state, generation: base.generation, stage: base.stage, queuePosition: base.queuePosition,
        since: base.since || undefined, startedAt: base.startedAt, lastActivity, openConnections: Math.max(connections, deps.openConnections(id)),
        reasonCode: base.reasonCode, reason: base.reason,
      };
    };
    const link = deps.workspaceOrigin;

    api.get('/api/openapi.json', { schema: { hide: true } }, async () => app.swagger());

    api.post<{ Params: { id: string }; Body: { next?: string; ttlSeconds?: number } | undefined }>('/api/workspaces/:id/login-url', {
      schema: {
        summary: 'A one-time sign-in link for the workspace owner',
        params: idParam,
        body: { type: ['object', 'null'], additionalProperties: false, properties: { next: { type: 'string', pattern: NEXT_PATH, maxLength: 2048 }, ttlSeconds: { type: 'integer', minimum: 10, maximum: 600 } } },
        response: { 200: { type: 'object', properties: { url: { type: 'string' }, expiresAt: { type: 'integer' } }, required: ['url', 'expiresAt'] }, 400: errorSchema, 401: errorSchema, ...bodyErrors, 503: errorSchema },
      },
    }, async (req) => {
      const ttl = Math.min((req.body?.ttlSeconds ?? config.loginTokenMaxTtlMs / 1000) * 1000, config.loginTokenMaxTtlMs);
      // Signed under the store's revocation epoch: a link asked for after a revocation works at once.
      const { signAs } = await deps.revocations.forSigning(req.params.id);
      const token = await deps.auth.createLoginToken(req.params.id, randomUUID(), ttl, signAs);
      const url = new URL(`${link(req.params.id)}/__gateway/login`);
      url.searchParams.set('token', token);
      url.searchParams.set('next', req.body?.next ?? '/');
      return { url: url.toString(), expiresAt: deps.clock.now() + ttl };
    });

    api.post<{ Params: { id: string } }>('/api/workspaces/:id/start', {
      schema: { summary: 'Start a workspace ahead of the student (answers at once)', params: idParam, response: { 202: workspaceSchema, 400: errorSchema, 401: errorSchema, ...bodyErrors, 503: errorSchema } },
    }, async (req, reply) => {
      const record = await workspaces.requestStart(req.params.id, { retryFailed: true, requestId: String(req.id) });
      return reply.code(202).send(await view(req.params.id, record));
    });

    api.post<{ Params: { id: string } }>('/api/workspaces/:id/prepare', {
      schema: {
        summary: 'Register what the first start needs (ECS: access point, task definition) ahead of it; answers when done',
        params: idParam,
        response: { 200: { type: 'object', properties: { id: { type: 'string' }, prepared: { type: 'boolean' } }, required: ['id', 'prepared'] }, 400: errorSchema, 401: errorSchema, ...bodyErrors, 503: errorSchema },
      },
    }, async (req, reply) => {
      if (!deps.prepare) return { id: req.params.id, prepared: false };
      // Waits its turn in the RegisterTaskDefinition line (1 a second): a client that gives up cancels it.
      // On the response, not the socket: a keep-alive connection would gather one listener per call.
      const gone = new AbortController();
      const onClose = () => { if (!reply.raw.writableFinished) gone.abort(new Error('client gone')); };
      reply.raw.once('close', onClose);
      try {
        await deps.prepare(req.params.id, gone.signal);
      } catch (err) {
        if (err instanceof StartFailure) return send(reply, 'PREPARE_FAILED', `${err.code}: ${err.message}`);
        throw err;
      } finally {
        reply.raw.off('close', onClose);
      }
      return { id: req.params.id, prepared: true };
    });

    api.post<{ Params: { id: string }; Body: { reason?: string } | undefined }>('/api/workspaces/:id/stop', {
      schema: {
        summary: 'Stop a workspace now (files are kept)', params: idParam,
        body: { type: ['object', 'null'], additionalProperties: false, properties: { reason: { type: 'string', maxLength: 200 } } },
        response: { 200: workspaceSchema, 400: errorSchema, 401: errorSchema, 409: errorSchema, ...bodyErrors, 503: errorSchema },
      },
    }, async (req, reply) => {
      const result = await workspaces.stop(req.params.id, async () => ({ reasonCode: 'admin', reason: req.body?.reason ?? 'stopped by the platform' }));
      if (result === 'busy') return send(reply, 'WORKSPACE_BUSY');
      return view(req.params.id, await store.getWorkspace(req.params.id));
    });

    api.post<{ Params: { id: string } }>('/api/workspaces/:id/revoke-sessions', {
      schema: {
        summary: "Void every session and sign-in link of the workspace issued before now (a workspace handed to another student, a cookie left on a shared machine); its open WebSockets are closed",
        params: idParam,
        response: { 200: { type: 'object', properties: { id: { type: 'string' }, revokedBefore: { type: 'integer' } }, required: ['id', 'revokedBefore'] }, 400: errorSchema, 401: errorSchema, ...bodyErrors, 503: errorSchema },
      },
    }, async (req) => ({ id: req.params.id, revokedBefore: await deps.revocations.revoke(req.params.id) }));

    api.get<{ Params: { id: string } }>('/api/workspaces/:id', {
      schema: { summary: 'One workspace', params: idParam, response: { 200: workspaceSchema, 400: errorSchema, 401: errorSchema, 503: errorSchema } },
    }, async (req) => view(req.params.id, await store.getWorkspace(req.params.id)));

    api.get<{ Querystring: { state?: WorkspaceRecord['state']; cursor?: string; limit?: number } }>('/api/workspaces', {
      schema: {
        summary: 'Workspaces known to the store, paged',
        querystring: {
          type: 'object', additionalProperties: false,
          properties: { state: { type: 'string', enum: [...WORKSPACE_STATES] }, cursor: { type: 'string', pattern: WORKSPACE_ID.source }, limit: { type: 'integer', minimum: 1, maximum: 500, default: 100 } },
        },
        response: { 200: { type: 'object', properties: { items: { type: 'array', items: workspaceSchema }, cursor: { type: 'string' } }, required: ['items'] }, 400: errorSchema, 401: errorSchema, 503: errorSchema },
      },
    }, async (req) => {
      const page = await store.listWorkspaces({ state: req.query.state, cursor: req.query.cursor, limit: req.query.limit ?? 100 });
      return { items: await Promise.all(page.items.map((r) => view(r.id, r))), cursor: page.cursor };
    });
  });

  return app;
}
