// The web forwarder against upstreams that misbehave in the ways real ones do (issues 2 and 8):
// connection-specific response fields, Expect: 100-continue, a response that never comes, a client
// that leaves mid-download, a client that asks to close. Plus the forwarder's pure helpers as tables.
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import t from 'tap';
import { hasRequestBody, responseFields } from '../gateway/proxy.js';
import { request, startTestGateway, until } from './helpers/gateway.js';
import { registerRunning, startEarlyAnsweringUpstream } from './helpers/upstream.js';

t.test('hasRequestBody table (RFC 9112 6.3)', async (t) => {
  const rows: Array<[http.IncomingHttpHeaders, boolean]> = [
    [{}, false],
    [{ 'content-length': '0' }, false],
    [{ 'content-length': '12' }, true],
    [{ 'transfer-encoding': 'chunked' }, true],
  ];
  for (const [headers, expected] of rows) t.equal(hasRequestBody(headers), expected, JSON.stringify(headers));
});

t.test('responseFields table: hop-by-hop fields and those named in Connection go', async (t) => {
  const rows: Array<[string, string[], Record<string, string | string[]>]> = [
    ['plain', ['Content-Type', 'text/plain', 'Content-Length', '2'], { 'Content-Type': 'text/plain', 'Content-Length': '2' }],
    ['keep-alive fields', ['Connection', 'keep-alive', 'Keep-Alive', 'timeout=5', 'X-A', '1'], { 'X-A': '1' }],
    ['named in Connection', ['Connection', 'close, X-Up-Hop', 'X-Up-Hop', 'secret', 'X-A', '1'], { 'X-A': '1' }],
    ['chunked framing is ours to choose', ['Transfer-Encoding', 'chunked', 'X-A', '1'], { 'X-A': '1' }],
    ['repeated names kept in order', ['Set-Cookie', 'a=1', 'set-cookie', 'b=2', 'Set-Cookie', 'c=3'], { 'Set-Cookie': ['a=1', 'b=2', 'c=3'] }],
    ['case of names kept', ['x-MiXeD', 'v'], { 'x-MiXeD': 'v' }],
  ];
  for (const [name, raw, expected] of rows) t.same(responseFields(raw), expected, name);
});

t.test('through the gateway', async (t) => {
  let downloadClosed: () => void = () => undefined;
  const downloadGone = new Promise<void>((r) => { downloadClosed = r; });
  const upstream = http.createServer((req, res) => {
    if (req.url === '/hop') {
      res.writeHead(200, [['Connection', 'keep-alive, X-Up-Hop'], ['X-Up-Hop', 'secret'], ['Set-Cookie', 'a=1'], ['Set-Cookie', 'b=2'], ['X-Kept', 'yes']].flat());
      res.end('ok');
    } else if (req.url === '/echo') {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => res.end(JSON.stringify({ expect: req.headers.expect ?? null, body: Buffer.concat(chunks).toString() })));
    } else if (req.url === '/never') {
      // Headers never come: the gateway's response timeout decides.
    } else if (req.url === '/endless') {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const chunk = Buffer.alloc(64 * 1024);
      const pump = () => { while (res.write(chunk)); };
      res.on('drain', pump);
      res.on('close', () => downloadClosed());
      pump();
    } else {
      res.end('hello');
    }
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { upstream.closeAllConnections(); upstream.close(() => r()); }));
  const gw = await startTestGateway({ env: { UPSTREAM_TIMEOUT: '500ms' } });
  t.teardown(() => gw.close());
  await registerRunning(gw.store, 'up', (upstream.address() as AddressInfo).port);
  const cookie = await gw.cookie('up');
  const host = 'ws-up.localhost';

  t.test('connection-specific response fields stay with the upstream connection', async (t) => {
    const r = await request(gw.port, { host, path: '/hop', headers: { cookie } });
    t.equal(r.status, 200);
    t.equal(r.headers['x-up-hop'], undefined);
    t.same(r.headers['set-cookie'], ['a=1', 'b=2']);
    t.equal(r.headers['x-kept'], 'yes');
    t.equal(r.body, 'ok');
  });

  t.test('Expect: 100-continue is answered here and the body reaches the workspace', async (t) => {
    const r = await new Promise<{ status: number; body: string; continued: boolean }>((resolve, reject) => {
      let continued = false;
      const req = http.request({ host: '127.0.0.1', port: gw.port, method: 'POST', path: '/echo', agent: false, setHost: false, headers: { host, cookie, expect: '100-continue', 'content-length': '5' } }, (res) => {
        let body = '';
        res.on('data', (c) => { body += c; });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, continued }));
      });
      req.on('continue', () => { continued = true; req.end('hello'); });
      req.on('error', reject);
    });
    t.ok(r.continued, '100 Continue');
    t.equal(r.status, 200);
    t.same(JSON.parse(r.body), { expect: null, body: 'hello' });
  });

  t.test('no response headers within UPSTREAM_TIMEOUT: 504 UPSTREAM_TIMEOUT', async (t) => {
    const r = await request(gw.port, { host, path: '/never', headers: { cookie, accept: 'application/json' } });
    t.equal(r.status, 504);
    t.equal(r.headers['x-gateway-error'], 'UPSTREAM_TIMEOUT');
    t.equal(JSON.parse(r.body).error.code, 'UPSTREAM_TIMEOUT');
  });

  t.test('a client that leaves mid-download releases the upstream request', async (t) => {
    await new Promise<void>((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port: gw.port, path: '/endless', agent: false, setHost: false, headers: { host, cookie } }, (res) => {
        res.once('data', () => { req.destroy(); resolve(); });
      });
      req.on('error', (e) => { if (!req.destroyed) reject(e); });
    });
    await downloadGone;
    t.pass('the upstream saw its response closed');
  });

  t.test('a client asking to close gets Connection: close, and the gateway closes', async (t) => {
    const r = await request(gw.port, { host, path: '/', headers: { cookie, connection: 'close' } });
    t.equal(r.status, 200);
    t.equal(r.headers.connection, 'close');
    t.equal(r.body, 'hello');
  });
});

t.test('a workspace answering an upload before reading it: the rest is read and dropped, the connection goes on (RFC 9110 10.1.1)', async (t) => {
  const early = await startEarlyAnsweringUpstream();
  const gw = await startTestGateway();
  t.teardown(async () => { await gw.close(); await early.close(); });
  await registerRunning(gw.store, 'early', early.port);
  const cookie = await gw.cookie('early');
  const client = net.connect(gw.port, '127.0.0.1');
  t.teardown(() => client.destroy());
  client.on('error', () => undefined);
  let text = '';
  client.on('data', (d) => { text += d.toString('latin1'); });
  const head = `host: ws-early.localhost\r\ncookie: ${cookie}\r\n`;
  // Expect keeps the upload on node:http's path; more than the socket buffers on the way hold.
  const size = 8 * 1024 * 1024;
  client.write(`POST /upload HTTP/1.1\r\n${head}expect: 100-continue\r\ncontent-length: ${size}\r\n\r\n`);
  client.write(Buffer.alloc(size, 'a'));
  await until(() => /\r\n\r\nbig$/.test(text), 3000);
  t.match(text, /^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 413 [^]*connection: keep-alive/i, "the workspace's answer, the connection kept");
  client.write(`GET /after HTTP/1.1\r\n${head}\r\n`);
  await until(() => text.endsWith('\r\n\r\nnext'), 3000);
  t.pass('the rest of the upload was read, and the next request answered on the same connection');
});

t.test("node:http's side: a client not reading a response of many chunks holds one drain listener, not one per chunk", async (t) => {
  const { createForwarder } = await import('../gateway/proxy.js');
  const { createUpstreamPool } = await import('../gateway/upstream-pool.js');
  const { forwardedFields } = await import('../gateway/http-fields.js');
  // 40 chunks of 4 KB in one write: one read, one body callback per chunk.
  const chunk = `1000\r\n${'x'.repeat(4096)}\r\n`;
  const upstream = net.createServer((s) => { s.on('error', () => undefined); s.once('data', () => s.write(`HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n${chunk.repeat(40)}0\r\n\r\n`)); });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  const pool = createUpstreamPool({ connectTimeoutMs: 1000, responseTimeoutMs: 1000, maxSockets: 1, idleMs: 4000 });
  const forwarder = createForwarder({ connectTimeoutMs: 1000, pool });
  let response: http.ServerResponse | undefined;
  const front = http.createServer((req, res) => {
    response = res;
    forwarder.web(req, res, { host: '127.0.0.1', port: (upstream.address() as AddressInfo).port }, 'x', forwardedFields('127.0.0.1', 'http', 'x'), undefined, { onFailure() { res.destroy(); } });
  });
  await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
  const client = net.connect((front.address() as AddressInfo).port, '127.0.0.1');
  client.on('error', () => undefined);
  client.write('GET /many HTTP/1.1\r\nhost: x\r\n\r\n');
  client.pause();
  t.teardown(async () => {
    client.destroy(); pool.close(); forwarder.close();
    front.closeAllConnections();
    await Promise.all([new Promise<void>((r) => { front.close(() => r()); }), new Promise<void>((r) => { upstream.close(() => r()); })]);
  });
  await until(() => response !== undefined && response.listenerCount('drain') > 0, 2000);
  await new Promise((r) => setTimeout(r, 100));
  t.equal(response!.listenerCount('drain'), 1);
  client.resume();
});
