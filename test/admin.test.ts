// The admin API on ADMIN_PORT (issue 3): bearer token, validated JSON in and out, an OpenAPI
// document, and the routes the platform's backend uses (sign-in link, start, stop, get, list).
import net from 'node:net';
import t from 'tap';
import { NAVIGATE, TEST_ADMIN_TOKEN, XHR, request, startTestGateway, waitRunning } from './helpers/gateway.js';

interface Reply { status: number; headers: Headers; body: any } // eslint-disable-line @typescript-eslint/no-explicit-any

t.test('admin API', async (t) => {
  const gw = await startTestGateway();
  t.teardown(() => gw.close());
  const base = `http://127.0.0.1:${gw.adminPort}`;
  async function call(method: string, path: string, o: { auth?: string | null; body?: unknown; raw?: string; type?: string } = {}): Promise<Reply> {
    const headers: Record<string, string> = {};
    const auth = o.auth === undefined ? `Bearer ${TEST_ADMIN_TOKEN}` : o.auth;
    if (auth !== null) headers.authorization = auth;
    let body: string | undefined;
    if (o.raw !== undefined) { body = o.raw; headers['content-type'] = o.type ?? 'application/json'; }
    else if (o.body !== undefined) { body = JSON.stringify(o.body); headers['content-type'] = 'application/json'; }
    const res = await fetch(base + path, { method, headers, body });
    const text = await res.text();
    let parsed: unknown = text;
    try { parsed = JSON.parse(text); } catch { /* not JSON */ }
    return { status: res.status, headers: res.headers, body: parsed };
  }
  const routes: Array<[string, string, unknown?]> = [
    ['POST', '/api/workspaces/demo/login-url', {}],
    ['POST', '/api/workspaces/demo/start'],
    ['POST', '/api/workspaces/demo/prepare'],
    ['POST', '/api/workspaces/demo/stop'],
    ['POST', '/api/workspaces/demo/revoke-sessions'],
    ['GET', '/api/workspaces/demo'],
    ['GET', '/api/workspaces'],
  ];

  t.test('every route needs the bearer token', async (t) => {
    const wrong: Array<[string, string | null]> = [
      ['no Authorization', null],
      ['wrong token', 'Bearer not-the-admin-token-000000'],
      ['token prefix', `Bearer ${TEST_ADMIN_TOKEN.slice(0, -1)}`],
      ['token plus a byte', `Bearer ${TEST_ADMIN_TOKEN}x`],
      ['another scheme', `Basic ${Buffer.from(`admin:${TEST_ADMIN_TOKEN}`).toString('base64')}`],
      ['bare token', TEST_ADMIN_TOKEN],
      ['empty bearer', 'Bearer '],
    ];
    for (const [method, path, body] of routes) {
      for (const [name, auth] of wrong) {
        const r = await call(method, path, { auth, body });
        t.equal(r.status, 401, `${method} ${path}, ${name}: 401`);
        t.equal(r.body.error?.code, 'ADMIN_UNAUTHORIZED');
        t.equal(r.headers.get('x-gateway-error'), 'ADMIN_UNAUTHORIZED');
      }
    }
    t.equal(gw.provisioner.starts.length, 0, 'an unauthorized start started nothing');
    t.equal(gw.provisioner.stops.length, 0);
    t.equal((await call('GET', '/api/workspaces/demo', { auth: `bearer ${TEST_ADMIN_TOKEN}` })).status, 200, 'the scheme is case-insensitive (RFC 9110 11.1)');
    // Not on the public port: there it is just a path on a workspace host, behind the session check.
    const pub = await request(gw.port, { path: '/api/workspaces', headers: { ...XHR, authorization: `Bearer ${TEST_ADMIN_TOKEN}` } });
    t.equal(pub.status, 401);
    t.equal(pub.headers['x-gateway-error'], 'NOT_SIGNED_IN');
    const apex = await request(gw.port, { host: 'localhost', path: '/api/workspaces', headers: { ...XHR, authorization: `Bearer ${TEST_ADMIN_TOKEN}` } });
    t.equal(apex.status, 404);
  });

  t.test('bad ids, bodies and queries: 400 BAD_REQUEST with a clear message', async (t) => {
    const badIds = ['UPPER', 'a_b', 'a'.repeat(61), '-a', 'a-', 'a.b', '%20', 'ws-%00', 'a%2Fb'];
    for (const id of badIds) {
      for (const [method, path, body] of routes.filter(([, p]) => p.includes('/demo'))) {
        const r = await call(method, path.replace('/demo', `/${id}`), { body });
        t.equal(r.status, 400, `${method} ${path} with id ${JSON.stringify(id)}: 400`);
        t.equal(r.body.error?.code, 'BAD_REQUEST');
        t.match(r.body.error?.detail, /id/, 'the detail names the field');
      }
    }
    const bad: Array<[string, string, { body?: unknown; raw?: string; type?: string }, RegExp]> = [
      ['POST', '/api/workspaces/demo/login-url', { body: { next: 'https://evil.example/' } }, /next/],
      ['POST', '/api/workspaces/demo/login-url', { body: { next: '//evil.example/' } }, /next/],
      ['POST', '/api/workspaces/demo/login-url', { body: { next: '/\\evil.example/' } }, /next/],
      ['POST', '/api/workspaces/demo/login-url', { body: { next: 5 } }, /next/],
      ['POST', '/api/workspaces/demo/login-url', { body: { ttlSeconds: 5 } }, /ttlSeconds/],
      ['POST', '/api/workspaces/demo/login-url', { body: { ttlSeconds: 601 } }, /ttlSeconds/],
      ['POST', '/api/workspaces/demo/login-url', { body: { ttlSeconds: 'soon' } }, /ttlSeconds/],
      ['POST', '/api/workspaces/demo/login-url', { body: { admin: true } }, /additional/],
      ['POST', '/api/workspaces/demo/login-url', { body: [] }, /body/],
      ['POST', '/api/workspaces/demo/login-url', { raw: '{"next":' }, /JSON/i],
      ['POST', '/api/workspaces/demo/stop', { body: { reason: 'x'.repeat(201) } }, /reason/],
      ['POST', '/api/workspaces/demo/stop', { body: { reason: { a: 1 } } }, /reason/],
      ['GET', '/api/workspaces?state=sleeping', {}, /state/],
      ['GET', '/api/workspaces?limit=0', {}, /limit/],
      ['GET', '/api/workspaces?limit=501', {}, /limit/],
      ['GET', '/api/workspaces?limit=lots', {}, /limit/],
      ['GET', '/api/workspaces?cursor=NOT_AN_ID', {}, /cursor/],
      ['GET', '/api/workspaces?sort=asc', {}, /additional/],
    ];
    for (const [method, path, o, detail] of bad) {
      const r = await call(method, path, o);
      t.equal(r.status, 400, `${method} ${path} ${JSON.stringify(o)}: 400`);
      t.equal(r.body.error?.code, 'BAD_REQUEST');
      t.equal(r.headers.get('x-gateway-error'), 'BAD_REQUEST');
      t.match(r.body.error?.detail, detail, `detail says what is wrong: ${r.body.error?.detail}`);
    }
    t.equal(gw.provisioner.stops.length, 0);
  });

  t.test('a body over the limit: 413 BODY_TOO_LARGE; a body of another type: 415 UNSUPPORTED_MEDIA_TYPE', async (t) => {
    // Both were 400 BAD_REQUEST: a client could not tell "shorten it" or "send JSON" from a bad field.
    const over = JSON.stringify({ reason: 'x'.repeat(1024 * 1024) });
    const cases: Array<[string, string, { raw: string; type?: string }, number, string]> = [
      ['POST', '/api/workspaces/demo/stop', { raw: over }, 413, 'BODY_TOO_LARGE'],
      ['POST', '/api/workspaces/demo/login-url', { raw: over }, 413, 'BODY_TOO_LARGE'],
      ['POST', '/api/workspaces/demo/login-url', { raw: 'next=/', type: 'application/x-www-form-urlencoded' }, 415, 'UNSUPPORTED_MEDIA_TYPE'],
      ['POST', '/api/workspaces/demo/stop', { raw: 'reason', type: 'text/plain' }, 415, 'UNSUPPORTED_MEDIA_TYPE'],
      ['POST', '/api/workspaces/demo/stop', { raw: '{}', type: 'application/xml' }, 415, 'UNSUPPORTED_MEDIA_TYPE'],
    ];
    for (const [method, path, o, status, code] of cases) {
      const r = await call(method, path, o);
      t.equal(r.status, status, `${method} ${path} (${o.type ?? 'application/json'}, ${o.raw.length} bytes): ${status}`);
      t.equal(r.body.error?.code, code);
      t.equal(r.headers.get('x-gateway-error'), code);
      t.equal(r.body.error?.requestId, r.headers.get('x-request-id'), 'with the request id');
      if (status === 415) t.equal(r.headers.get('accept'), 'application/json', 'Accept names what would do (RFC 9110 15.5.16)');
    }
    t.equal(gw.provisioner.stops.length, 0, 'nothing was stopped');
  });

  t.test('an empty id segment: 404 NOT_FOUND, as any path naming no resource, not 400', async (t) => {
    // `/api/workspaces/` came from `${base}/api/workspaces/${id}` with no id far more often than from
    // someone wanting the list: the list's 200 would be read as one workspace, so it is a 404.
    const empty: Array<[string, string]> = [
      ['GET', '/api/workspaces/'],
      ['HEAD', '/api/workspaces/'],
      ['POST', '/api/workspaces//login-url'],
      ['POST', '/api/workspaces//start'],
      ['POST', '/api/workspaces//prepare'],
      ['POST', '/api/workspaces//stop'],
      ['POST', '/api/workspaces//revoke-sessions'],
    ];
    for (const [method, path] of empty) {
      for (const auth of [undefined, null]) {
        const r = await call(method, path, { auth });
        t.equal(r.status, 404, `${method} ${path}${auth === null ? ' without the token' : ''}: 404`);
        t.equal(r.headers.get('x-gateway-error'), 'NOT_FOUND');
        if (method !== 'HEAD') t.equal(r.body.error?.code, 'NOT_FOUND');
      }
    }
    t.equal((await call('GET', '/api/workspaces')).status, 200, 'the list keeps its one spelling');
    t.equal(gw.provisioner.starts.length + gw.provisioner.stops.length, 0, 'nothing started or stopped');
  });

  t.test('a known route with the wrong method: 405 METHOD_NOT_ALLOWED naming the allowed ones (RFC 9110 15.5.6)', async (t) => {
    const wrong: Array<[string, string, string[]]> = [
      ['DELETE', '/api/workspaces/demo', ['GET', 'HEAD']],
      ['PUT', '/api/workspaces/demo/start', ['POST']],
      ['GET', '/api/workspaces/demo/stop', ['POST']],
      ['PATCH', '/api/workspaces', ['GET', 'HEAD']],
      ['POST', '/api/workspaces/demo/login-url/', []],
      ['POST', '/metrics', ['GET', 'HEAD']],
      ['POST', '/healthz', ['GET', 'HEAD']],
    ];
    for (const [method, path, allow] of wrong) {
      const r = await call(method, path);
      if (!allow.length) { t.equal(r.status, 404, `${method} ${path}: not a route at all`); continue; }
      t.equal(r.status, 405, `${method} ${path}: 405`);
      t.equal(r.body.error?.code, 'METHOD_NOT_ALLOWED');
      t.equal(r.headers.get('x-gateway-error'), 'METHOD_NOT_ALLOWED');
      t.same((r.headers.get('allow') ?? '').split(/, */).sort(), allow, `Allow: ${allow.join(', ')}`);
    }
    t.equal((await call('GET', '/api/nothing')).body.error?.code, 'NOT_FOUND', 'an unknown path is still 404');
    t.equal(gw.provisioner.stops.length, 0);
  });

  t.test('every error body carries the request id its x-request-id header names', async (t) => {
    const errors: Array<[string, string, { auth?: string | null; body?: unknown }]> = [
      ...routes.map(([method, path, body]): [string, string, { auth?: string | null; body?: unknown }] => [method, path, { auth: null, body }]),
      ['POST', '/api/workspaces/demo/login-url', { body: { ttlSeconds: 1 } }],
      ['POST', '/api/workspaces/demo/stop', { body: { reason: { a: 1 } } }],
      ['GET', '/api/workspaces/UPPER', {}],
      ['GET', '/api/workspaces?limit=0', {}],
      ['GET', '/api/nothing', {}],
    ];
    for (const [method, path, o] of errors) {
      const r = await call(method, path, o);
      t.ok(r.status >= 400 && r.body.error?.code, `${method} ${path}: an error (${r.body.error?.code})`);
      t.ok(r.headers.get('x-request-id'), 'x-request-id set');
      t.equal(r.body.error?.requestId, r.headers.get('x-request-id'), 'the same id in the body');
    }
  });

  t.test("a request node's parser refuses: the catalogue's error, as on the public port", async (t) => {
    const raw = (payload: string) => new Promise<string>((resolve) => {
      const s = net.connect(gw.adminPort, '127.0.0.1', () => s.write(payload));
      let text = '';
      s.on('data', (d) => { text += d.toString('latin1'); });
      s.on('close', () => resolve(text));
      s.on('error', () => undefined);
    });
    const cases: Array<[string, string, string]> = [
      ['an unknown method', 'FOO /api/workspaces HTTP/1.1\r\nHost: x\r\n\r\n', 'BAD_REQUEST'],
      ['a malformed field', 'GET /healthz HTTP/1.1\r\nHost: x\r\nbad field\r\n\r\n', 'BAD_REQUEST'],
      ['headers over the limit', `GET /healthz HTTP/1.1\r\nHost: x\r\nx-big: ${'a'.repeat(20_000)}\r\n\r\n`, 'HEADERS_TOO_LARGE'],
    ];
    for (const [name, payload, code] of cases) {
      const text = await raw(payload);
      t.match(text, new RegExp(`\\r\\nx-gateway-error: ${code}\\r\\n`), `${name}: ${code}`);
      t.match(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)), { error: { code } }, 'with the JSON body of the catalogue');
    }
  });

  t.test('the OpenAPI document', async (t) => {
    const r = await call('GET', '/api/openapi.json', { auth: null });
    t.equal(r.status, 200);
    const doc = r.body;
    t.match(doc.openapi, /^3\.\d+\.\d+$/);
    t.ok(doc.info?.title && doc.info?.version);
    t.ok(doc.components?.securitySchemes?.bearer, 'bearer scheme declared');
    t.same(doc.security, [{ bearer: [] }]);
    const expected: Array<[string, string, string]> = [
      ['/api/workspaces/{id}/login-url', 'post', '200'],
      ['/api/workspaces/{id}/start', 'post', '202'],
      ['/api/workspaces/{id}/prepare', 'post', '200'],
      ['/api/workspaces/{id}/stop', 'post', '200'],
      ['/api/workspaces/{id}/revoke-sessions', 'post', '200'],
      ['/api/workspaces/{id}', 'get', '200'],
      ['/api/workspaces', 'get', '200'],
    ];
    t.same(Object.keys(doc.paths).sort(), expected.map(([p]) => p).sort(), 'exactly the admin routes (health and metrics hidden)');
    for (const [path, method, ok] of expected) {
      const op = doc.paths[path]?.[method];
      t.ok(op, `${method} ${path} documented`);
      t.ok(op.summary, 'with a summary');
      t.ok(op.responses?.[ok]?.content?.['application/json']?.schema, `${ok} response has a JSON schema`);
      t.ok(op.responses?.['400'] && op.responses?.['401'], '400 and 401 documented');
      // Every route that reads the store answers 503 STORE_UNAVAILABLE while it is away; a sign-in link needs none.
      if (!path.endsWith('/login-url')) t.ok(op.responses?.['503'], `${method} ${path}: 503 documented`);
      if (path.includes('{id}')) {
        const id = (op.parameters ?? []).find((p: { name: string; in: string }) => p.name === 'id' && p.in === 'path');
        t.ok(id?.required, 'id is a required path parameter');
        t.equal(id?.schema?.type, 'string');
        t.ok(id?.schema?.pattern, 'with its pattern');
      }
      if (method === 'post') t.ok(op.responses?.['413'] && op.responses?.['415'], `${method} ${path}: 413 and 415 documented`);
      if (method === 'post' && path.endsWith('login-url')) t.ok(op.requestBody?.content?.['application/json']?.schema?.properties?.next, 'login-url body documented');
    }
    const list = doc.paths['/api/workspaces'].get;
    t.same((list.parameters ?? []).filter((p: { in: string }) => p.in === 'query').map((p: { name: string }) => p.name).sort(), ['cursor', 'limit', 'state']);
    // Every $ref points at something that exists.
    const refs = [...JSON.stringify(doc).matchAll(/"\$ref":"#\/([^"]+)"/g)].map((m) => m[1]);
    for (const ref of refs) t.ok(ref.split('/').reduce((o: any, k) => o?.[k], doc), `$ref ${ref} resolves`); // eslint-disable-line @typescript-eslint/no-explicit-any
  });

  t.test('login-url round trip: the link signs in, once, and starts nothing', async (t) => {
    const before = Date.now();
    const r = await call('POST', '/api/workspaces/demo/login-url', { body: { next: '/lab/?folder=/home', ttlSeconds: 60 } });
    t.equal(r.status, 200);
    const url = new URL(r.body.url);
    t.equal(url.hostname, 'ws-demo.localhost');
    t.equal(url.pathname, '/__gateway/login');
    t.equal(url.searchParams.get('next'), '/lab/?folder=/home');
    t.ok(r.body.expiresAt >= before + 59_000 && r.body.expiresAt <= Date.now() + 61_000, 'expires as asked');
    const signIn = await request(gw.port, { host: url.host, path: url.pathname + url.search, headers: NAVIGATE });
    t.equal(signIn.status, 303);
    t.equal(signIn.headers.location, '/lab/?folder=/home');
    const cookie = (signIn.headers['set-cookie'] ?? [])[0]?.split(';')[0] ?? '';
    const xhr = await request(gw.port, { path: '/x', headers: { ...XHR, cookie } });
    t.equal(xhr.status, 503, 'signed in: the stopped workspace answers 503, not 401');
    t.equal(xhr.headers['x-gateway-error'], 'WORKSPACE_STOPPED');
    const again = await request(gw.port, { host: url.host, path: url.pathname + url.search, headers: NAVIGATE });
    t.equal(again.headers['x-gateway-error'], 'LOGIN_TOKEN_USED', 'the link works once');
    const noBody = await fetch(`${base}/api/workspaces/demo/login-url`, { method: 'POST', headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}` } });
    t.equal(noBody.status, 200, 'no body at all: the defaults');
    t.equal(new URL(((await noBody.json()) as { url: string }).url).searchParams.get('next'), '/');
    t.equal(gw.provisioner.starts.length, 0);
  });

  t.test('start, get, list with paging and a state filter, stop', async (t) => {
    const fresh = await call('GET', '/api/workspaces/demo');
    t.equal(fresh.status, 200);
    t.match(fresh.body, { id: 'demo', state: 'stopped', generation: 0 });
    const started = await call('POST', '/api/workspaces/demo/start');
    t.equal(started.status, 202, 'answers at once');
    t.match(started.body, { id: 'demo' });
    t.ok(started.body.generation > fresh.body.generation, 'a new generation');
    t.ok(['starting', 'running'].includes(started.body.state));
    t.equal((await call('POST', '/api/workspaces/demo/start')).status, 202, 'a second start is harmless');
    await waitRunning(gw.port, await gw.cookie('demo'));
    t.equal(gw.provisioner.starts.length, 1, 'started once');
    const running = await call('GET', '/api/workspaces/demo');
    t.match(running.body, { id: 'demo', state: 'running', generation: started.body.generation, openConnections: 0 });
    t.type(running.body.startedAt, 'number');

    const now = Date.now();
    for (const id of ['p1', 'p2', 'p3', 'p4', 'p5']) await gw.store.putWorkspace({ id, state: 'stopped', generation: 2, since: now, reasonCode: 'idle', reason: 'idle for 15 minutes' });
    await gw.store.putWorkspace({ id: 'f1', state: 'failed', generation: 1, since: now, reasonCode: 'TASK_STOPPED', reason: 'essential container exited' });
    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const page = await call('GET', `/api/workspaces?limit=2${cursor ? `&cursor=${cursor}` : ''}`);
      t.equal(page.status, 200);
      t.ok(page.body.items.length <= 2, 'at most limit items');
      seen.push(...page.body.items.map((i: { id: string }) => i.id));
      cursor = page.body.cursor;
      pages++;
    } while (cursor && pages < 10);
    t.same([...seen].sort(), ['demo', 'f1', 'p1', 'p2', 'p3', 'p4', 'p5'], 'paging visits each workspace once');
    t.ok(pages >= 4, `${pages} pages of 2`);
    const failed = await call('GET', '/api/workspaces?state=failed');
    t.same(failed.body.items.map((i: { id: string }) => i.id), ['f1']);
    t.match(failed.body.items[0], { state: 'failed', reasonCode: 'TASK_STOPPED', reason: 'essential container exited' });
    t.same((await call('GET', '/api/workspaces?state=running')).body.items.map((i: { id: string }) => i.id), ['demo']);

    const stopped = await call('POST', '/api/workspaces/demo/stop', { body: { reason: 'course ended' } });
    t.equal(stopped.status, 200);
    t.match(stopped.body, { id: 'demo', state: 'stopped', reasonCode: 'admin', reason: 'course ended' });
    t.equal(gw.provisioner.stops.length, 1);
    t.match((await call('GET', '/api/workspaces/demo')).body, { state: 'stopped', reasonCode: 'admin' });
    const stopAgain = await call('POST', '/api/workspaces/demo/stop');
    t.equal(stopAgain.status, 200, 'stopping a stopped workspace is harmless');
    t.equal(gw.provisioner.stops.length, 1);
    const prepared = await call('POST', '/api/workspaces/demo/prepare');
    t.equal(prepared.status, 200);
    t.same(prepared.body, { id: 'demo', prepared: false }, 'a provisioner with nothing to prepare says so');
  });
});
