// Which workspace a request is for (cross-tenant misrouting): the gateway names it in
// x-gateway-workspace on every request it forwards, on both lanes and on WebSocket upgrades, and a
// client can never set that field itself. The workspace side refuses a request meant for another.
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { spawn } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { MISDIRECTED_FIELD, WORKSPACE_FIELD } from '../gateway/http-fields.js';
import { startDemoWorkspace } from '../provisioner/demo-workspace.js';
import { decide, forgetPreload } from '../codeserver/workspace-identity.cjs';
import { fileURLToPath } from 'node:url';
import { XHR, request } from './helpers/gateway.js';
import { gatewayWithRecordedWorkspaces, type Recorded } from './helpers/upstream.js';
import { connected, openWs } from './helpers/ws.js';

/** Every x-gateway-workspace value the workspace received, in order. */
const named = (r: Recorded) => {
  const out: string[] = [];
  for (let i = 0; i < r.rawHeaders.length; i += 2) if (r.rawHeaders[i].toLowerCase() === 'x-gateway-workspace') out.push(r.rawHeaders[i + 1]);
  return out;
};

t.test('the gateway names the workspace a request is for, and only the gateway does', async (t) => {
  const { gw, ups, cookies } = await gatewayWithRecordedWorkspaces(t, ['alpha']);
  const host = 'ws-alpha.localhost';
  // Two fields of its own, as a client may send them.
  const spoof = { 'x-gateway-workspace': ['beta', 'gamma'] };

  // node:http's path: a connection that closes after its one request.
  const byNode = await request(gw.port, { host, path: '/node', headers: { cookie: cookies.alpha, ...XHR, ...spoof } });
  t.equal(byNode.status, 200);
  // The warm lane: the same request again on a kept-alive connection, once the route is cached.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  for (const path of ['/warm-1', '/warm-2']) {
    const r = await request(gw.port, { host, path, agent, headers: { cookie: cookies.alpha, ...XHR, ...spoof } });
    t.equal(r.status, 200, path);
  }
  // A WebSocket upgrade (node:http's client makes the handshake).
  const ws = await connected(openWs(gw.port, '/socket', { cookie: cookies.alpha, host, headers: { 'X-Gateway-Workspace': 'beta' } }));
  ws.terminate();

  const seen = ups.alpha.requests;
  t.same(seen.map((r) => r.url), ['/node', '/warm-1', '/warm-2', '/socket']);
  for (const r of seen) t.same(named(r), ['alpha'], `${r.url}: exactly one, the workspace's own id, the client's dropped`);
});

t.test('decide: whom a request is for, against the workspace that received it', async (t) => {
  const rows: Array<[string, string | string[] | undefined, string | undefined, 'allow' | 'misdirected']> = [
    ['meant for this workspace', 'alpha', '/', 'allow'],
    ['meant for this workspace, any path', 'alpha', '/proxy/3000/x?y=1', 'allow'],
    ['meant for another workspace', 'beta', '/', 'misdirected'],
    ['meant for another, on /healthz too (a probe for the workspace that had this address)', 'beta', '/healthz', 'misdirected'],
    ['a prefix of this id', 'alph', '/', 'misdirected'],
    ['this id and more', 'alpha2', '/', 'misdirected'],
    ['another case', 'Alpha', '/', 'misdirected'],
    ['empty', '', '/', 'misdirected'],
    ['repeated fields, joined', 'alpha, alpha', '/', 'misdirected'],
    ['repeated fields, as a list', ['alpha', 'alpha'], '/', 'misdirected'],
    ['absent: the image HEALTHCHECK', undefined, '/healthz', 'allow'],
    ['absent: /healthz with a query', undefined, '/healthz?x=1', 'allow'],
    ['absent: anything else', undefined, '/', 'misdirected'],
    ['absent: a path that only starts like /healthz', undefined, '/healthz/../', 'misdirected'],
    ['absent: /healthz in absolute form', undefined, 'http://h/healthz', 'misdirected'],
    ['absent: no target', undefined, undefined, 'misdirected'],
  ];
  for (const [name, claimed, url, expected] of rows) t.equal(decide(claimed, 'alpha', url), expected, name);
  t.equal(decide('', '', '/'), 'misdirected', 'a workspace with no id of its own serves no one by name');
});

t.test('the demo workspace refuses a request meant for another workspace: 421 with the marker, on HTTP and upgrades', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-identity-'));
  const demo = startDemoWorkspace({ host: '127.0.0.1', port: 0, dataDir: dir, id: 'alpha', readyDelayMs: 0 });
  const port = await demo.listen();
  t.teardown(async () => { await demo.close(); rmSync(dir, { recursive: true, force: true }); });
  const get = (path: string, headers: Record<string, string>) => request(port, { host: 'ws-alpha.localhost', path, headers });

  const own = await get('/', { [WORKSPACE_FIELD]: 'alpha' });
  t.equal(own.status, 200, 'its own');
  t.match(own.body, /Demo workspace <code>alpha<\/code>/);
  for (const [name, headers] of [['another workspace', { [WORKSPACE_FIELD]: 'beta' }], ['no name', {}]] as const) {
    const r = await get('/', headers);
    t.same([r.status, r.headers[MISDIRECTED_FIELD]], [421, '1'], `${name}: 421 with the marker`);
    t.notMatch(r.body, /alpha/, `${name}: the answer does not name the workspace`);
  }
  t.equal((await get('/healthz', {})).status, 200, 'its own health check needs no name');
  t.equal((await get('/healthz', { [WORKSPACE_FIELD]: 'beta' })).status, 421, "another workspace's probe is refused");

  const refused = await rawUpgrade(port, 'beta');
  t.match(refused, /^HTTP\/1\.1 421 [^]*\r\nx-gateway-misdirected: 1\r\n/i, 'an upgrade meant for another: 421 on the socket, then closed');
  t.match(await rawUpgrade(port, 'alpha'), /^HTTP\/1\.1 101 /, 'its own upgrade');
});

/** A WebSocket handshake on a raw socket: what came back before the socket closed (or 1 s passed). */
function rawUpgrade(port: number, workspace: string): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(`GET /echo HTTP/1.1\r\nHost: ws-alpha.localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${WORKSPACE_FIELD}: ${workspace}\r\n\r\n`));
    let text = '';
    const done = () => { clearTimeout(timer); s.destroy(); resolve(text); };
    const timer = setTimeout(done, 1000);
    s.on('data', (d) => { text += d.toString('latin1'); if (text.startsWith('HTTP/1.1 101')) done(); });
    s.on('close', done);
    s.on('error', () => undefined);
  });
}

t.test("forgetPreload: the preload leaves NODE_OPTIONS once its server listens, the rest of it kept", async (t) => {
  const me = fileURLToPath(new URL('../codeserver/workspace-identity.cjs', import.meta.url));
  const rows: Array<[string, string, string | undefined]> = [
    ['as the entrypoint writes it', `--require="${me}"`, undefined],
    ['unquoted', `--require=${me}`, undefined],
    ['as two words', `-r ${me}`, undefined],
    ['the whole word quoted (as a test runner rewrites it)', `"--import=file:///x.mjs" "--require=${me}"`, '--import=file:///x.mjs'],
    ['after options of its own', `--max-old-space-size=512 --require="${me}"`, '--max-old-space-size=512'],
    ['another preload kept, quoted again when it needs it', `--require="/a b/other.cjs" --require=${me}`, '"--require=/a b/other.cjs"'],
    ['another file of the same name elsewhere kept', '--require=/elsewhere/workspace-identity.cjs', '--require=/elsewhere/workspace-identity.cjs'],
  ];
  // An image that links the preload in from elsewhere: Node loads (and names) it by its real path.
  const linkDir = mkdtempSync(join(tmpdir(), 'wsgw-preload-link-'));
  t.teardown(() => rmSync(linkDir, { recursive: true, force: true }));
  const link = join(linkDir, 'identity.cjs');
  symlinkSync(me, link);
  rows.push(['by a symbolic link to it', `--max-old-space-size=512 --require="${link}"`, '--max-old-space-size=512']);
  rows.push(['a path that does not exist kept', '--require=/nowhere/x.cjs', '--require=/nowhere/x.cjs']);
  for (const [name, options, expected] of rows) {
    const env: Record<string, string> = { NODE_OPTIONS: options };
    forgetPreload(env);
    t.equal(env.NODE_OPTIONS, expected, name);
  }
});

t.test("the preload drops the marker from answers it lets through, in every form node:http writes them", async (t) => {
  // A program under the preload, as code-server is: its own answers (a student's app behind
  // code-server's /proxy) are 421s with the marker; only the preload's refusal may keep it.
  const me = fileURLToPath(new URL('../codeserver/workspace-identity.cjs', import.meta.url));
  const port = await new Promise<number>((resolve) => { const s = net.createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as net.AddressInfo).port; s.close(() => resolve(p)); }); });
  const program = `
const http = require('node:http');
const M = 'X-Gateway-Misdirected';
const forms = {
  '/object': (res) => res.writeHead(421, { [M]: '1', 'content-length': 0 }),
  '/reason': (res) => res.writeHead(421, 'Nope', { [M]: '1', 'content-length': 0 }),
  '/flat': (res) => res.writeHead(421, [M, '1', 'content-length', '0']),
  '/set': (res) => { res.setHeader(M, '1'); res.writeHead(421, { 'content-length': 0 }); },
  '/implicit': (res) => { res.statusCode = 421; res.setHeader(M, '1'); },
  '/ok': (res) => res.writeHead(200, { [M]: '1', 'content-length': 0 }),
};
http.createServer((req, res) => { forms[req.url](res); res.end(); }).listen(${port}, '127.0.0.1', () => console.log('listening'));
`;
  const child = spawn(process.execPath, ['-e', program], {
    env: { PATH: process.env.PATH, WORKSPACE_ID: 'alpha', WORKSPACE_PORT: String(port), NODE_OPTIONS: `--require="${me}"` }, stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.teardown(() => { child.kill(); });
  await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
  for (const path of ['/object', '/reason', '/flat', '/set', '/implicit']) {
    const r = await request(port, { host: 'x', path, headers: { [WORKSPACE_FIELD]: 'alpha' } });
    t.same([r.status, r.headers[MISDIRECTED_FIELD]], [421, undefined], `${path}: the 421, without the marker`);
  }
  const other = await request(port, { host: 'x', path: '/ok', headers: { [WORKSPACE_FIELD]: 'alpha' } });
  t.same([other.status, other.headers[MISDIRECTED_FIELD]], [200, '1'], 'another status is left as it is (the gateway reads the marker on a 421 only)');
  const refused = await request(port, { host: 'x', path: '/ok', headers: { [WORKSPACE_FIELD]: 'beta' } });
  t.same([refused.status, refused.headers[MISDIRECTED_FIELD]], [421, '1'], "the preload's own refusal keeps it");
});
