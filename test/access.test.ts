// Access control (issue 3): only the owner of a workspace gets in, and nothing unauthenticated
// reaches the provisioner (starts cost money). Real gateway, real demo workspace, real `ws` client.
import { createHmac } from 'node:crypto';
import http from 'node:http';
import t from 'tap';
import { SignJWT } from 'jose';
import { PLAIN_SESSION_COOKIE, SESSION_COOKIE, createAuth, sameOrigin, sessionCookieName, sessionCookieParts } from '../gateway/auth.js';
import { createManualClock } from '../gateway/clock.js';
import { NAVIGATE, TEST_SECRET, XHR, request, startTestGateway, waitRunning, type RawResponse, type TestGateway } from './helpers/gateway.js';
import { gatewayWithRecordedWorkspaces, registerRunning, startRecordingUpstream } from './helpers/upstream.js';
import { closed, connected, openWs, type WsOptions } from './helpers/ws.js';

const HOUR = 3_600_000;

/** Opens a WebSocket; resolves with 101 or the refusal's status and error code. */
async function wsAttempt(port: number, path: string, o: WsOptions): Promise<{ status: number; code?: string }> {
  const ws = openWs(port, path, o);
  try {
    await connected(ws);
    // terminate, not close: the recording upstream does not answer close frames.
    const c = closed(ws);
    ws.terminate();
    await c;
    return { status: 101 };
  } catch (err) {
    const e = err as { status?: number; headers?: Record<string, string> };
    return { status: e.status ?? 0, code: e.headers?.['x-gateway-error'] };
  }
}

const code = (r: RawResponse) => r.headers['x-gateway-error'];

/** Session cookies that must not open ws-demo, and ones that must. */
async function cookieSet(gw: TestGateway) {
  const name = sessionCookieName(gw.config.publicScheme);
  const valid = await gw.cookie('demo');
  // Signed with the right key but expired an hour ago.
  const past = createAuth({ secret: TEST_SECRET, sessionTtlMs: 12 * HOUR, loginTokenMaxTtlMs: 300_000, clock: createManualClock(Date.now() - 13 * HOUR) });
  const expired = `${name}=${(await past.createSession('demo')).value}`;
  const bare = (c: string) => c.slice(`${name}=`.length);
  // One signature character changed (the middle one: the last may only carry padding bits).
  const [h, p, s] = bare(valid).split('.');
  const mid = Math.floor(s.length / 2);
  const tampered = `${name}=${h}.${p}.${s.slice(0, mid)}${s[mid] === 'A' ? 'B' : 'A'}${s.slice(mid + 1)}`;
  // The payload of another workspace's cookie with this one's signature.
  const other = await gw.cookie('other');
  const swapped = `${name}=${h}.${bare(other).split('.')[1]}.${s}`;
  // A sign-in token is not a session (separate keys per purpose).
  const loginToken = `${name}=${await gw.gateway.auth.createLoginToken('demo', 'j-as-cookie')}`;
  const rejected: Array<[string, string | undefined]> = [
    ['no cookie', undefined],
    ['expired', expired],
    ['tampered signature', tampered],
    ['payload swapped', swapped],
    ["other workspace's cookie", other],
    ['a sign-in token as cookie', loginToken],
    ['duplicates, none valid', `${other}; ${expired}; ${tampered}`],
    // The other scheme's name too: one gateway reads one name (auth.ts sessionCookieName).
    ['valid value under another name', `${name === SESSION_COOKIE ? PLAIN_SESSION_COOKIE : SESSION_COOKIE}=${bare(valid)}; __Secure-wsgw-session=${bare(valid)}`],
  ];
  const accepted: Array<[string, string]> = [
    ['valid', valid],
    ['duplicates, valid first', `${valid}; ${other}; ${expired}`],
    ['duplicates, valid last', `${other}; ${tampered}; ${valid}`],
    ['quoted value', `${name}="${bare(valid)}"`],
  ];
  return { valid, rejected, accepted };
}

t.test("the session cookie's values, and the Cookie header the workspace gets without them", async (t) => {
  const N = SESSION_COOKIE;
  const rows: Array<[header: string | undefined, values: string[], rest: string | undefined]> = [
    [undefined, [], undefined],
    ['', [], ''],
    ['a=1; b=2', [], 'a=1; b=2'],
    [`${N}=s1`, ['s1'], undefined],
    [`a=1; ${N}=s1; b=2`, ['s1'], 'a=1; b=2'],
    [` ${N} = "s1" ;a=1`, ['s1'], 'a=1'],
    [`${N}=s1; ${N}=s2`, ['s1', 's2'], undefined],
    [`x${N}=other; a=1`, [], `x${N}=other; a=1`],
    [`${N}; a=1;;`, [], 'a=1'],
    [`a=1;${N}=s1;`, ['s1'], 'a=1'],
    // The gateway's other name is read by no one here, and still never reaches the workspace.
    [`a=1; ${PLAIN_SESSION_COOKIE}=s2; b=2`, [], 'a=1; b=2'],
    [`${PLAIN_SESSION_COOKIE}=s2`, [], undefined],
    [`x${PLAIN_SESSION_COOKIE}=s2; a=1`, [], `x${PLAIN_SESSION_COOKIE}=s2; a=1`],
  ];
  for (const [header, values, rest] of rows) t.same(sessionCookieParts(header, N), { values, rest }, JSON.stringify(header));
  // Read under the plain name (http, development), the `__Host-` one is dropped the same way.
  const P = PLAIN_SESSION_COOKIE;
  const plainRows: Array<[header: string, values: string[], rest: string | undefined]> = [
    [`a=1; ${P}=s1; ${N}=s2; b=2`, ['s1'], 'a=1; b=2'],
    [`${N}=s2`, [], undefined],
    [`__Secure-${P}=s3; a=1`, [], `__Secure-${P}=s3; a=1`],
  ];
  for (const [header, values, rest] of plainRows) t.same(sessionCookieParts(header, P), { values, rest }, JSON.stringify(header));
});

t.test('access matrix: page load, XHR and WebSocket x cookies, no platform login URL', async (t) => {
  const gw = await startTestGateway();
  t.teardown(() => gw.close());
  const { valid, rejected, accepted } = await cookieSet(gw);

  for (const [name, cookie] of rejected) {
    const headers: Record<string, string> = cookie ? { cookie } : {};
    const page = await request(gw.port, { headers: { ...NAVIGATE, ...headers } });
    t.equal(page.status, 401, `${name}: page load 401`);
    t.equal(code(page), 'NOT_SIGNED_IN');
    t.match(page.headers['content-type'], /text\/html/, `${name}: a page for a person`);
    const xhr = await request(gw.port, { path: '/headers', headers: { ...XHR, ...headers } });
    t.equal(xhr.status, 401, `${name}: XHR 401`);
    t.equal(JSON.parse(xhr.body).error.code, 'NOT_SIGNED_IN');
    const ws = await wsAttempt(gw.port, '/echo', { cookie });
    t.same(ws, { status: 401, code: 'NOT_SIGNED_IN' }, `${name}: WebSocket 401`);
    // The gateway's own endpoints that could start or reveal state need the session too.
    const start = await request(gw.port, { method: 'POST', path: '/__gateway/start', headers: { ...headers, 'x-requested-with': 'gateway' } });
    t.equal(start.status, 401, `${name}: /__gateway/start 401`);
    const status = await request(gw.port, { path: '/__gateway/status', headers });
    t.equal(status.status, 401, `${name}: /__gateway/status 401`);
  }
  t.equal(gw.provisioner.starts.length, 0, 'no rejected request reached the provisioner');
  t.equal(await gw.store.getWorkspace('demo'), undefined, 'nor left a record in the store');

  // The one valid page load starts the workspace; everything after it is proxied.
  const first = await request(gw.port, { headers: { ...NAVIGATE, cookie: valid } });
  t.equal(first.status, 200);
  t.equal(first.headers['x-gateway-cold-start'], '1');
  t.equal((await waitRunning(gw.port, valid)).state, 'running');
  for (const [name, cookie] of accepted) {
    const page = await request(gw.port, { headers: { ...NAVIGATE, cookie } });
    t.equal(page.status, 200, `${name}: page load 200`);
    t.equal(code(page), undefined);
    const xhr = await request(gw.port, { path: '/headers', headers: { ...XHR, cookie: `${cookie}; theirs=1` } });
    t.equal(xhr.status, 200, `${name}: XHR 200`);
    t.equal(JSON.parse(xhr.body).headers.cookie, 'theirs=1', `${name}: the workspace never sees the gateway cookie`);
    t.same(await wsAttempt(gw.port, '/echo', { cookie }), { status: 101 }, `${name}: WebSocket opens`);
  }
  t.equal(gw.provisioner.starts.length, 1, 'exactly one start, from the one valid page load');
});

t.test('with a platform login URL, a page load without a session is sent there', async (t) => {
  const gw = await startTestGateway({ env: { PLATFORM_LOGIN_URL: 'https://learn.example/login?course=7' } });
  t.teardown(() => gw.close());
  const { rejected } = await cookieSet(gw);
  for (const [name, cookie] of rejected) {
    const headers: Record<string, string> = cookie ? { cookie } : {};
    const page = await request(gw.port, { path: '/lab/?file=a.py', headers: { ...NAVIGATE, ...headers } });
    t.equal(page.status, 303, `${name}: page load redirected`);
    t.equal(code(page), 'NOT_SIGNED_IN');
    const to = new URL(page.headers.location!);
    t.equal(to.origin + to.pathname, 'https://learn.example/login');
    t.equal(to.searchParams.get('course'), '7', 'the configured query is kept');
    t.equal(to.searchParams.get('return_to'), 'http://ws-demo.localhost/lab/?file=a.py', 'with a return address');
    const xhr = await request(gw.port, { path: '/headers', headers: { ...XHR, ...headers } });
    t.equal(xhr.status, 401, `${name}: programs still get 401`);
    t.equal(JSON.parse(xhr.body).error.code, 'NOT_SIGNED_IN');
    t.same(await wsAttempt(gw.port, '/echo', { cookie }), { status: 401, code: 'NOT_SIGNED_IN' });
  }
  t.equal(gw.provisioner.starts.length, 0);
});

t.test('sameOrigin table: an Origin against the Host it was sent to', async (t) => {
  const rows: Array<[string, string | undefined, string | undefined, 'http' | 'https', boolean]> = [
    ['own origin, port in both', 'http://ws-a.localhost:8080', 'ws-a.localhost:8080', 'http', true],
    ['default port only in the Host', 'https://ws-a.example.com', 'ws-a.example.com:443', 'https', true],
    ['default port only in the Origin', 'http://ws-a.example.com:80', 'ws-a.example.com', 'http', true],
    ['trailing dot and case', 'HTTPS://WS-A.Example.COM.', 'ws-a.example.com', 'https', true],
    ['other port', 'http://ws-a.localhost:8081', 'ws-a.localhost:8080', 'http', false],
    ['other scheme', 'http://ws-a.example.com', 'ws-a.example.com', 'https', false],
    // The default port was once removed wherever it stood, so ":8080" and "80" compared equal.
    ['http default port inside another port', 'http://ws-a.localhost80', 'ws-a.localhost:8080', 'http', false],
    ['https default port inside another port', 'https://ws-a.example.com0', 'ws-a.example.com:4430', 'https', false],
    ['a path', 'https://ws-a.example.com/x', 'ws-a.example.com', 'https', false],
    ['userinfo', 'https://u@ws-a.example.com', 'ws-a.example.com', 'https', false],
    ['null', 'null', 'ws-a.example.com', 'https', false],
    ['no Origin', undefined, 'ws-a.example.com', 'https', false],
    ['no Host', 'https://ws-a.example.com', undefined, 'https', false],
    ['not a URL', 'ws-a.example.com', 'ws-a.example.com', 'https', false],
  ];
  for (const [name, origin, host, scheme, want] of rows) t.equal(sameOrigin(origin, host, scheme), want, name);
  t.end();
});

t.test('WebSocket Origin must be the workspace itself', async (t) => {
  const { gw, ups: { rec: up }, cookies: { rec: cookie } } = await gatewayWithRecordedWorkspaces(t, ['rec']);
  const host = 'ws-rec.localhost';
  const own = `http://${host}:${gw.port}`;
  const refused: Array<[string, string | null]> = [
    ['sibling workspace', `http://ws-other.localhost:${gw.port}`],
    ['apex domain', `http://localhost:${gw.port}`],
    ['null', 'null'],
    ['foreign', 'https://evil.example'],
    ['missing', null],
    ['other scheme', `https://${host}:${gw.port}`],
    ['other port', `http://${host}:1`],
    ['suffix trick', `http://${host}.evil.example:${gw.port}`],
    ['userinfo', `http://x@${host}:${gw.port}`],
  ];
  for (const [name, origin] of refused) {
    t.same(await wsAttempt(gw.port, '/socket', { cookie, host, origin }), { status: 403, code: 'ORIGIN_FORBIDDEN' }, name);
  }
  t.equal(up.requests.length, 0, 'no refused upgrade reached the workspace');
  t.same(await wsAttempt(gw.port, '/socket', { cookie, host, origin: own }), { status: 101 }, 'own origin');
  t.same(await wsAttempt(gw.port, '/socket', { cookie, host, origin: `HTTP://WS-REC.localhost:${gw.port}` }), { status: 101 }, 'origin compared case-insensitively');
  t.equal(up.requests.length, 2);
  t.equal(up.requests[0].headers.cookie, undefined, 'the upgrade reaches the workspace without the gateway cookie');
  t.equal(gw.provisioner.starts.length, 0);
});

t.test("a sibling workspace's page cannot use this workspace's cookie: Fetch Metadata, then Origin", async (t) => {
  const { gw, ups: { rec: up }, cookies: { rec: cookie } } = await gatewayWithRecordedWorkspaces(t, ['rec']);
  const host = `ws-rec.localhost:${gw.port}`;
  const own = `http://${host}`;
  const sibling = `http://ws-other.localhost:${gw.port}`;
  const fetchFrom = (site: string, mode: string, dest: string, origin?: string) => ({
    'sec-fetch-site': site, 'sec-fetch-mode': mode, 'sec-fetch-dest': dest, ...(origin ? { origin } : {}),
  });
  const refused: Array<[string, string, string, Record<string, string>]> = [
    ['a form posted from a sibling', 'POST', '/delete-everything', fetchFrom('same-site', 'navigate', 'document', sibling)],
    ['a sibling\'s fetch with credentials', 'GET', '/delete-everything', fetchFrom('same-site', 'cors', 'empty', sibling)],
    ['a sibling\'s <img>', 'GET', '/delete-everything', fetchFrom('same-site', 'no-cors', 'image')],
    ['another site\'s <script>', 'GET', '/delete-everything', fetchFrom('cross-site', 'no-cors', 'script')],
    ['a sibling\'s sign-out', 'POST', '/__gateway/logout', fetchFrom('same-site', 'no-cors', 'empty', sibling)],
    ['a sibling\'s status poll', 'GET', '/__gateway/status', fetchFrom('same-site', 'cors', 'empty', sibling)],
    ['an older browser posting from a sibling (Origin only)', 'DELETE', '/delete-everything', { origin: sibling }],
    ['Origin: null (a sandboxed page)', 'PUT', '/delete-everything', { origin: 'null' }],
  ];
  const allowed: Array<[string, string, Record<string, string>]> = [
    ['its own page posting', 'POST', fetchFrom('same-origin', 'cors', 'empty', own)],
    ['its own page loading a script', 'GET', fetchFrom('same-origin', 'no-cors', 'script')],
    ['a link from the platform', 'GET', fetchFrom('cross-site', 'navigate', 'document')],
    ['a link from a sibling (a page load)', 'GET', fetchFrom('same-site', 'navigate', 'document')],
    ['typed in the address bar', 'GET', fetchFrom('none', 'navigate', 'document')],
    ['a program without Fetch Metadata or Origin', 'POST', {}],
    ['an older browser posting from its own origin', 'POST', { origin: own }],
  ];
  // Twice each: a new connection per request (Connection: close goes to node:http's path) and one kept
  // alive after a request that warmed the session and the route (the warm lane).
  const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => keepAlive.destroy());
  t.equal((await request(gw.port, { host, path: '/warm', headers: { cookie }, agent: keepAlive })).status, 200);
  const before = up.requests.length;
  for (const [lane, agent, extra] of [['node:http', false, { connection: 'close' }], ['warm lane', keepAlive, {}]] as const) {
    const reached = up.requests.length;
    for (const [name, method, path, headers] of refused) {
      const r = await request(gw.port, { host, method, path, headers: { cookie, ...headers, ...extra }, agent });
      t.equal(r.status, 403, `${lane}: ${name}`);
      t.equal(code(r), 'ORIGIN_FORBIDDEN', `${lane}: ${name}`);
      t.equal(r.headers['set-cookie'], undefined, `${lane}: ${name}: the session stays`);
    }
    t.equal(up.requests.length, reached, `${lane}: no refused request reached the workspace`);
    for (const [name, method, headers] of allowed) {
      const r = await request(gw.port, { host, method, path: '/ok', headers: { cookie, ...headers, ...extra }, agent });
      t.equal(r.status, 200, `${lane}: ${name}`);
    }
  }
  t.equal(up.requests.length, before + 2 * allowed.length, 'every allowed request reached the workspace once');
  t.equal(gw.provisioner.starts.length, 0);
});

t.test('a sibling\'s page cannot start a stopped workspace; a link from elsewhere can', async (t) => {
  const gw = await startTestGateway();
  t.teardown(() => gw.close());
  const cookie = await gw.cookie('demo');
  const fromSibling = { 'sec-fetch-site': 'same-site', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'iframe' };
  const r = await request(gw.port, { headers: { cookie, ...NAVIGATE, ...fromSibling } });
  t.equal(r.status, 403);
  t.match(r.headers['content-type'], /text\/html/, 'a page for a person');
  t.equal(gw.provisioner.starts.length, 0);
  const link = await request(gw.port, { headers: { cookie, ...NAVIGATE, 'sec-fetch-site': 'cross-site' } });
  t.equal(link.status, 200, 'the starting page');
  t.equal(gw.provisioner.starts.length, 1);
});

t.test('sign-in handoff', async (t) => {
  // Many sign-ins from one address here; the limit itself is tested in edge.test.ts.
  const gw = await startTestGateway({ env: { RATE_SIGNIN_PER_MINUTE: '1000' } });
  const up = await startRecordingUpstream();
  t.teardown(async () => { await gw.close(); await up.close(); });
  await registerRunning(gw.store, 'rec', up.port);
  const host = 'ws-rec.localhost';
  const auth = gw.gateway.auth;
  const login = (token: string, next?: string, extra: { host?: string; headers?: Record<string, string> } = {}) => request(gw.port, {
    host: extra.host ?? host, headers: { ...NAVIGATE, ...extra.headers },
    path: `/__gateway/login?token=${encodeURIComponent(token)}${next === undefined ? '' : `&next=${encodeURIComponent(next)}`}`,
  });
  const sessionOf = (r: RawResponse) => (Array.isArray(r.headers['set-cookie']) ? r.headers['set-cookie'][0] : '').split(';')[0];

  t.test('a valid token: 303 to next, a host-only cookie (not Secure over http), token gone', async (t) => {
    const token = await auth.createLoginToken('rec', 'jti-ok');
    const r = await login(token, '/lab/?file=a.py#L3');
    t.equal(r.status, 303);
    t.equal(r.headers.location, '/lab/?file=a.py#L3');
    t.notMatch(r.headers.location, token, 'the token is not in Location');
    t.notMatch(r.headers.location, /token=/);
    t.equal(r.headers['referrer-policy'], 'no-referrer');
    t.equal(r.headers['cache-control'], 'no-store');
    const setCookie = r.headers['set-cookie'] ?? [];
    t.equal(setCookie.length, 1);
    const [pair, ...attrs] = setCookie[0].split(';').map((s) => s.trim());
    t.match(pair, /^wsgw-session=[\w-]+\.[\w-]+\.[\w-]+$/);
    const lower = attrs.map((a) => a.toLowerCase());
    // WebKit keeps no Secure cookie from an http page (test/webkit.test.ts); https is tested below.
    t.notOk(lower.includes('secure'), 'not Secure: this gateway is reached over http');
    t.ok(lower.includes('httponly'), 'HttpOnly');
    t.ok(lower.includes('samesite=lax'), 'SameSite=Lax');
    t.ok(lower.includes('path=/'), 'Path=/');
    t.notOk(lower.some((a) => a.startsWith('domain')), 'no Domain: host-only');
    t.ok(lower.includes(`max-age=${12 * 3600}`), 'lasts the configured session length (12 h)');
    // The cookie opens this workspace and no other.
    const session = sessionOf(r);
    const ok = await request(gw.port, { host, path: '/after', headers: { ...XHR, cookie: session } });
    t.equal(ok.status, 200);
    const elsewhere = await request(gw.port, { host: 'ws-demo.localhost', path: '/', headers: { ...XHR, cookie: session } });
    t.equal(elsewhere.status, 401);
  });

  t.test('rejected tokens', async (t) => {
    const past = createAuth({ secret: TEST_SECRET, sessionTtlMs: HOUR, loginTokenMaxTtlMs: 300_000, clock: createManualClock(Date.now() - HOUR) });
    const wrongSecret = createAuth({ secret: 'another-secret-0123456789-0123456789-xyz', sessionTtlMs: HOUR, loginTokenMaxTtlMs: 300_000, clock: createManualClock(Date.now()) });
    const longLived = createAuth({ secret: TEST_SECRET, sessionTtlMs: HOUR, loginTokenMaxTtlMs: 24 * HOUR, clock: createManualClock(Date.now()) });
    // The login key as the gateway derives it (a test of the exact derivation, so `alg` tricks are signed correctly).
    const loginKey = new Uint8Array(createHmac('sha256', TEST_SECRET).update('workspace-gateway/login-token').digest());
    const now = Math.floor(Date.now() / 1000);
    const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const claims = { sub: 'rec', jti: 'jti-crafted', iat: now, exp: now + 120 };
    const rows: Array<[string, string, string]> = [
      ['expired', await past.createLoginToken('rec', 'jti-expired'), 'LOGIN_TOKEN_EXPIRED'],
      ['wrong host (another workspace)', await auth.createLoginToken('other', 'jti-other'), 'LOGIN_TOKEN_INVALID'],
      ['wrong signature', await wrongSecret.createLoginToken('rec', 'jti-wrong'), 'LOGIN_TOKEN_INVALID'],
      ['signed with the raw secret', await new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode(TEST_SECRET)), 'LOGIN_TOKEN_INVALID'],
      ['alg none', `${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.`, 'LOGIN_TOKEN_INVALID'],
      ['alg HS512 with the right key', await new SignJWT(claims).setProtectedHeader({ alg: 'HS512' }).sign(loginKey), 'LOGIN_TOKEN_INVALID'],
      ['lifetime too long', await longLived.createLoginToken('rec', 'jti-long', 2 * HOUR), 'LOGIN_TOKEN_INVALID'],
      ['no jti', await new SignJWT({ sub: 'rec', exp: now + 60 }).setProtectedHeader({ alg: 'HS256' }).sign(loginKey), 'LOGIN_TOKEN_INVALID'],
      ['a session cookie value', (await auth.createSession('rec')).value, 'LOGIN_TOKEN_INVALID'],
      ['garbage', 'not-a-jwt', 'LOGIN_TOKEN_INVALID'],
      ['empty', '', 'LOGIN_TOKEN_INVALID'],
    ];
    for (const [name, token, expected] of rows) {
      const r = await login(token, '/');
      t.equal(r.status, 401, `${name}: 401`);
      t.equal(code(r), expected, `${name}: ${expected}`);
      t.equal(r.headers['set-cookie'], undefined, `${name}: no cookie`);
    }
    const good = await new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).sign(loginKey);
    t.equal((await login(good, '/')).status, 303, 'the same claims, correctly signed, are accepted (the rows fail for their stated reason)');
  });

  t.test('replay: a token works once, on any replica sharing the store', async (t) => {
    const token = await auth.createLoginToken('rec', 'jti-once');
    t.equal((await login(token, '/')).status, 303);
    const again = await login(token, '/');
    t.equal(again.status, 401);
    t.equal(code(again), 'LOGIN_TOKEN_USED');
    t.ok(await gw.store.consumeOnce('jti:jti-once', 1000) === false, 'the jti is remembered in the store');
  });

  t.test('the token is bound to its host: presenting it on another host fails', async (t) => {
    const token = await auth.createLoginToken('rec', 'jti-host');
    const r = await login(token, '/', { host: 'ws-demo.localhost' });
    t.equal(r.status, 401);
    t.equal(code(r), 'LOGIN_TOKEN_INVALID');
    t.equal((await login(token, '/')).status, 303, 'and was not consumed by the failed attempt');
  });

  t.test('open-redirect attempts in next land on /', async (t) => {
    const attempts = [
      '//evil.example', '/\\evil.example', '\\\\evil.example', 'https://evil.example', 'http:evil.example', 'javascript:alert(1)',
      '//evil.example/%2F..', '/%2F/evil.example'.replace('/%2F/', '//'), '///evil.example', '/\t/evil.example', ' //evil.example',
      '/.//evil.example', '/..//evil.example', '/a/..//evil.example', '/%2e//evil.example', '/%2e%2e//evil.example', '/./\\evil.example',
      'evil.example', '', '/\r\nSet-Cookie: x=1',
    ];
    let n = 0;
    for (const next of attempts) {
      const r = await login(await auth.createLoginToken('rec', `jti-next-${n++}`), next);
      t.equal(r.status, 303, JSON.stringify(next));
      const loc = r.headers.location ?? '';
      t.ok(loc.startsWith('/') && !loc.startsWith('//') && !loc.startsWith('/\\'), `${JSON.stringify(next)} -> ${loc}`);
      t.equal(new URL(loc, 'http://ws-rec.localhost').host, 'ws-rec.localhost', `${JSON.stringify(next)} stays on the host`);
    }
    // Encoded variants stay encoded paths on this host (the browser does not decode %2F into a slash).
    for (const next of ['/%2F%2Fevil.example', '/%5Cevil.example', '%2F%2Fevil.example']) {
      const r = await login(await auth.createLoginToken('rec', `jti-next-${n++}`), next);
      const loc = r.headers.location ?? '';
      t.equal(new URL(loc, 'http://ws-rec.localhost').host, 'ws-rec.localhost', `${JSON.stringify(next)} -> ${loc}`);
    }
    // A missing next goes to the root.
    t.equal((await login(await auth.createLoginToken('rec', `jti-next-${n++}`))).headers.location, '/');
  });

  t.test('sign-out clears the cookie', async (t) => {
    const r = await request(gw.port, { host, method: 'POST', path: '/__gateway/logout', headers: { cookie: await gw.cookie('rec') } });
    t.equal(r.status, 303);
    const c = (r.headers['set-cookie'] ?? [])[0] ?? '';
    t.match(c, /^wsgw-session=;/);
    t.match(c, /Max-Age=0/i);
    t.match(c, /Path=\//);
    t.notMatch(c, /Domain/i);
    // A page on a sibling workspace (same site, so SameSite=Lax lets its form post through) cannot sign us out.
    for (const origin of [`http://ws-other.localhost:${gw.port}`, 'https://evil.example', 'null']) {
      const forged = await request(gw.port, { host, method: 'POST', path: '/__gateway/logout', headers: { origin } });
      t.equal(forged.status, 403, `logout posted from ${origin}`);
      t.equal(forged.headers['set-cookie'], undefined);
    }
    const own = await request(gw.port, { host, method: 'POST', path: '/__gateway/logout', headers: { origin: `http://${host}` } }); // Host is sent without a port here
    t.equal(own.status, 303, 'from its own page it works');
  });

  t.test('the workspace never saw the token or the gateway cookie', async (t) => {
    t.ok(up.requests.length > 0);
    for (const req of up.requests) {
      t.notMatch(req.url, /__gateway|token=/, `upstream saw ${req.url}`);
      t.notMatch(JSON.stringify(req.rawHeaders), /wsgw-session|eyJ/, 'no gateway cookie or JWT in any header');
    }
  });
  t.equal(gw.provisioner.starts.length, 0);
});

t.test('over https the session cookie is `__Host-` and Secure, set and cleared so (RFC 6265bis 4.1.3.2)', async (t) => {
  const gw = await startTestGateway({ env: { BASE_DOMAIN: 'ws.example.test', PUBLIC_SCHEME: 'https' } });
  t.teardown(() => gw.close());
  const host = 'ws-demo.ws.example.test';
  const token = await gw.gateway.auth.createLoginToken('demo', 'jti-https');
  const r = await request(gw.port, { host, path: `/__gateway/login?token=${encodeURIComponent(token)}`, headers: NAVIGATE });
  t.equal(r.status, 303);
  const [pair, ...attrs] = (r.headers['set-cookie'] ?? [''])[0].split(';').map((a) => a.trim().toLowerCase());
  t.match(pair, /^__host-wsgw-session=[\w-]+\.[\w-]+\.[\w-]+$/);
  t.ok(attrs.includes('secure'), 'Secure');
  t.ok(attrs.includes('path=/'), 'Path=/');
  t.notOk(attrs.some((a) => a.startsWith('domain')), 'no Domain');
  const session = (r.headers['set-cookie'] ?? [''])[0].split(';')[0];
  const status = await request(gw.port, { host, path: '/__gateway/status', headers: { ...XHR, cookie: session } });
  t.equal(status.status, 200, 'the cookie opens the workspace');
  const plain = await request(gw.port, { host, path: '/__gateway/status', headers: { ...XHR, cookie: `${PLAIN_SESSION_COOKIE}=${session.split('=')[1]}` } });
  t.equal(plain.headers['x-gateway-error'], 'NOT_SIGNED_IN', 'the same session under the plain name does not');
  const out = await request(gw.port, { host, method: 'POST', path: '/__gateway/logout', headers: { cookie: session, origin: `https://${host}` } });
  t.equal(out.status, 303);
  t.match((out.headers['set-cookie'] ?? [''])[0], /^__Host-wsgw-session=; Path=\/; Max-Age=0; HttpOnly; SameSite=Lax; Secure$/);
});

t.test("code-server's proxy routes cannot reach other hosts", async (t) => {
  const { gw, ups: { rec: up }, cookies: { rec: cookie } } = await gatewayWithRecordedWorkspaces(t, ['rec']);
  const host = 'ws-rec.localhost';
  const blocked = [
    '/proxy/8080@evil.example/', '/absproxy/8080@evil.example/', '/proxy/user:pw@evil.example/', '/absproxy/user@127.0.0.1:22/',
    '/proxy/8080%40evil.example/', '/absproxy/8080%2540evil.example/', '/proxy/8080%252540evil.example/', '/%70roxy/8080@evil.example/',
    '/PROXY/8080@evil.example/', '/AbsProxy/8080@evil.example/x', '/proxy/evil.example:80/', '/proxy/8080:80@evil/',
    '/proxy/8080%2F@evil.example/', '/proxy/80%ZZ/', '/proxy/123456/', '/proxy/8080@evil.example',
    '/./proxy/8080@evil.example/', '//proxy/8080@evil.example/', '/x/../proxy/8080@evil.example/', '/proxy/./8080@evil.example/',
    // Spellings a WHATWG URL parser on the way would turn into the above (dot segments resolved, a backslash read as `/`).
    '/proxy\\8080@evil.example/', '/x/..\\proxy/8080@evil.example/', '/%2e%2e/proxy/8080@evil.example/', '/x/%2E%2E/absproxy/8080@evil.example/',
    // Resolved, these read `/proxy/8080/`; code-server's router reads them as sent, port `8080@evil.example`.
    '/proxy/8080@evil.example/../8080/', '/absproxy/8080@evil.example/../8080/', '/proxy/8080@evil.example\\..\\8080/',
  ];
  for (const path of blocked) {
    const r = await request(gw.port, { host, path, headers: { ...XHR, cookie } });
    t.equal(r.status, 400, `${path} -> 400`);
    t.equal(code(r), 'PROXY_TARGET_FORBIDDEN', path);
  }
  t.same(await wsAttempt(gw.port, '/proxy/8080@evil.example/', { cookie, host }), { status: 400, code: 'PROXY_TARGET_FORBIDDEN' }, 'WebSocket too');
  t.equal(up.requests.length, 0, 'none reached the workspace');
  for (const path of ['/proxy/8080/', '/absproxy/3000/app?x=@evil', '/proxy/8080/@evil.example', '/proxyx/@evil']) {
    const r = await request(gw.port, { host, path, headers: { ...XHR, cookie } });
    t.equal(r.status, 200, `${path} is the workspace's own port`);
  }
  t.same(up.requests.map((r) => r.url), ['/proxy/8080/', '/absproxy/3000/app?x=@evil', '/proxy/8080/@evil.example', '/proxyx/@evil']);
  // Unauthenticated: the session check comes first.
  t.equal((await request(gw.port, { host, path: '/proxy/8080@evil.example/', headers: XHR })).status, 401);
});
