// The warm lane (gateway/http1.ts, gateway/upstream-pool.ts; issue 7): requests on kept-alive
// connections to a running workspace with a known session, forwarded without node:http. Each row
// is what a real upstream does (close-delimited bodies, 1xx, HEAD, dying mid-body, closing a kept
// connection as it is reused) and what the client must see; then the lane's own seams: pipelining,
// a connection moving to node:http mid-stream, a client's half-close, a client leaving mid-download.
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import t from 'tap';
import { NAVIGATE, XHR, request, startTestGateway, until } from './helpers/gateway.js';
import { onRequests, registerRunning, startEarlyAnsweringUpstream } from './helpers/upstream.js';
import { StoreUnavailable } from '../gateway/store/contract.js';
import { createManualClock } from '../gateway/clock.js';

/** A workspace speaking raw HTTP/1.1, so each row controls the exact bytes of its answer. */
async function rawUpstream() {
  const seen: string[] = [];
  let openNow = 0;
  let staleNext = false;
  const server = net.createServer((socket) => {
    openNow++;
    socket.on('close', () => { openNow--; });
    socket.on('error', () => undefined);
    onRequests(socket, (method, path, head) => {
      seen.push(`${method} ${path}`);
      answer(socket, method, path, head);
    });
  });
  function answer(socket: net.Socket, method: string, path: string, head: string) {
    // A kept connection the workspace closes just as the gateway reuses it (keep-alive race).
    if (staleNext) { staleNext = false; socket.destroy(); return; }
    switch (path) {
      case '/close': socket.end('HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nbody until the close'); return;
      case '/hints': socket.write('HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal'); return;
      case '/nodate': socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-up: 1\r\n\r\nok'); return;
      // Hop-by-hop fields in a head the lane passes on as its bytes (response-head.ts), and in one it leaves to llhttp.
      case '/hop': socket.write('HTTP/1.1 200 OK\r\nConnection:  Keep-Alive\r\nkeep-alive: timeout=5\r\nUpgrade: h2c\r\nx-kept:  spaced  \r\nContent-Length: 3\r\n\r\nhop'); return;
      // A workspace naming its own framing field in Connection (RFC 9110 7.6.1 forbids it): the body still has that length.
      case '/hop-names-length': socket.write('HTTP/1.1 200 OK\r\nConnection: keep-alive, Content-Length\r\nContent-Length: 2\r\n\r\nok'); return;
      case '/hop-named': socket.write('HTTP/1.1 200 OK\r\nConnection: keep-alive, x-private\r\nx-private: 1\r\nx-public: 2\r\nContent-Length: 2\r\n\r\nok'); return;
      case '/chunked': socket.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ndate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n'); return;
      case '/trailers': socket.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-trailer\r\n\r\n3\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n'); return;
      // A transfer coding the gateway cannot undo: a body until the close, and one gzipped under chunks.
      case '/te-gzip': socket.end('HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nnot really gzip'); return;
      case '/te-gzip-chunked': socket.write('HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n'); return;
      case '/empty': socket.write('HTTP/1.1 204 No Content\r\n\r\n'); return;
      case '/head': socket.write(`HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n${method === 'HEAD' ? '' : 'x'.repeat(1000)}`); return;
      case '/die': socket.write('HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial'); setTimeout(() => socket.destroy(), 20); return;
      case '/reset': socket.destroy(); return;
      case '/then-stale': socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok'); staleNext = true; return;
      case '/many': {
        // More than 32 fields each way: node's parser hands those over in parts.
        const last = /\r\nx-r39: ([^\r]*)/i.exec(head)?.[1] ?? 'missing';
        let fields = '';
        for (let i = 0; i < 40; i++) fields += `x-h${i}: ${i}\r\n`;
        socket.write(`HTTP/1.1 200 OK\r\n${fields}content-length: ${last.length}\r\n\r\n${last}`);
        return;
      }
      case '/obs-text': {
        // Echoes the request's x-name field back, as a field and as the hex of its bytes.
        const value = /\r\nx-name: ([^\r]*)/i.exec(head)?.[1] ?? '';
        const hex = Buffer.from(value, 'latin1').toString('hex');
        socket.write(Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\nx-echo: ', 'latin1'), Buffer.from(value, 'latin1'), Buffer.from(`\r\ncontent-length: ${hex.length}\r\n\r\n${hex}`, 'latin1')]));
        return;
      }
      // A Content-Length body the gateway counts itself (upstream-pool.ts, bodyLeft): in parts, empty, or overrun.
      case '/split': socket.write('HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfirst'); setTimeout(() => socket.write('-last'), 30); return;
      case '/head-only': socket.write('HTTP/1.1 200 OK\r\ncontent-length: 4\r\n'); setTimeout(() => socket.write('\r\n'), 30); setTimeout(() => socket.write('body'), 60); return;
      case '/zero': socket.write('HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-zero: 1\r\n\r\n'); return;
      case '/overrun': socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA BYTES NOBODY ASKED FOR'); return;
      case '/never': return;
      case '/slow': setTimeout(() => socket.write('HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n/slow'), 150); return;
      case '/endless': {
        socket.write('HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n');
        const chunk = Buffer.alloc(64 * 1024);
        const pump = () => { while (!socket.destroyed && socket.write(chunk)); };
        socket.on('drain', pump);
        pump();
        return;
      }
      default: socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${path.length}\r\n\r\n${path}`);
    }
  }
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port, seen, openNow: () => openNow,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

/** Sends bytes on one connection and collects everything until the gateway closes it (or ms pass). */
function rawExchange(port: number, payload: string | Buffer, opts: { halfClose?: boolean; ms?: number } = {}): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => { s.write(payload); if (opts.halfClose) s.end(); });
    let text = '';
    const timer = setTimeout(() => { s.destroy(); resolve({ text, closed: false }); }, opts.ms ?? 3000);
    s.on('data', (d) => { text += d.toString('latin1'); });
    s.on('close', () => { clearTimeout(timer); resolve({ text, closed: true }); });
    s.on('error', () => undefined);
  });
}

/** A connection kept open by the test: what it has received so far, and whether the gateway closed it. */
async function openClient(t: { teardown(fn: () => unknown): void }, port: number) {
  const socket = net.connect(port, '127.0.0.1');
  t.teardown(() => socket.destroy());
  socket.on('error', () => undefined);
  const client = { socket, text: '', closed: false };
  socket.on('data', (d) => { client.text += d.toString('latin1'); });
  socket.on('close', () => { client.closed = true; });
  await new Promise<void>((r) => socket.once('connect', () => r()));
  return client;
}

t.test('warm lane', async (t) => {
  const up = await rawUpstream();
  const gw = await startTestGateway({ env: { UPSTREAM_TIMEOUT: '500ms' } });
  t.teardown(async () => { await gw.close(); await up.close(); });
  await registerRunning(gw.store, 'raw', up.port);
  const cookie = await gw.cookie('raw');
  const host = 'ws-raw.localhost';
  // The first request of all goes through node:http's path, which verifies the cookie and caches the route.
  t.equal((await request(gw.port, { host, path: '/first', headers: { cookie } })).status, 200);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const get = (path: string, extra: Record<string, string> = {}, method = 'GET') => request(gw.port, { host, path, method, agent, headers: { cookie, ...XHR, ...extra } });

  t.test('each upstream behaviour, as the client sees it', async (t) => {
    const plain = await get('/plain');
    t.equal(plain.body, '/plain');
    t.equal(gw.gateway.laneConnections(), 1, 'the kept-alive connection is on the warm lane');
    t.ok(plain.headers['x-request-id'], 'x-request-id added');

    const close = await get('/close');
    t.same([close.status, close.body, close.headers['transfer-encoding']], [200, 'body until the close', 'chunked'], 'a close-delimited body goes on chunked');

    for (const path of ['/te-gzip', '/te-gzip-chunked']) {
      const refused = await get(path);
      t.same([refused.status, refused.headers['x-gateway-error']], [502, 'UPSTREAM_BAD_RESPONSE'], `${path}: refused, not passed on unreadable or left hanging`);
    }

    const hints = await get('/hints');
    t.same([hints.status, hints.body], [200, 'final'], '103 is interim: the final response follows');

    const nodate = await get('/nodate');
    t.ok(nodate.headers.date, 'Date added when the workspace sent none (RFC 9110 6.6.1)');
    t.equal(nodate.headers['x-up'], '1');

    const hop = await get('/hop');
    t.same([hop.body, hop.headers['x-kept'], hop.headers.connection, hop.headers['keep-alive'], hop.headers.upgrade], ['hop', 'spaced', undefined, undefined, undefined], 'hop-by-hop fields left out, the rest passed on');
    t.ok(hop.headers.date && hop.headers['x-request-id'], 'Date and x-request-id added to a head passed on as its bytes');
    const named = await get('/hop-named');
    t.same([named.body, named.headers['x-public'], named.headers['x-private']], ['ok', '2', undefined], 'a field the Connection field names is left out too (RFC 9110 7.6.1)');

    const chunked = await get('/chunked');
    t.same([chunked.body, chunked.headers.date], ['abcde', 'Mon, 01 Jan 2024 00:00:00 GMT'], "chunks re-framed, the workspace's Date kept");

    const empty = await get('/empty');
    t.same([empty.status, empty.body], [204, '']);

    t.equal((await get('/split')).body, 'first-last', 'a Content-Length body in two reads');
    t.equal((await get('/head-only')).body, 'body', 'a head in two reads, its body in a third');
    const zero = await get('/zero');
    t.same([zero.status, zero.body, zero.headers['x-zero']], [200, '', '1'], 'Content-Length: 0');
    const openBefore = up.openNow();
    t.equal((await get('/overrun')).body, 'ok', 'bytes past the body are not passed on');
    await until(() => up.openNow() < openBefore, 2000);
    t.pass('and the connection that sent them is closed, not reused');
    t.equal((await get('/after-overrun')).body, '/after-overrun', 'the next request goes on a new one');

    const head = await get('/head', {}, 'HEAD');
    t.same([head.status, head.headers['content-length'], head.body], [200, '1000', ''], 'HEAD: the length of the body not sent');
    t.equal((await get('/after-head')).body, '/after-head', 'and the connections on both sides are still in step');

    const manyIn: Record<string, string> = {};
    for (let i = 0; i < 40; i++) manyIn[`x-r${i}`] = `v${i}`;
    const many = await get('/many', manyIn);
    t.equal(many.body, 'v39', 'a request with 40 fields arrives whole');
    t.same([many.headers['x-h0'], many.headers['x-h39']], ['0', '39'], 'a response with 40 fields arrives whole');

    t.equal(gw.gateway.laneConnections(), 1, 'all of it on one warm connection');
  });

  t.test('field values with bytes outside ASCII pass byte for byte, both ways (RFC 9110 5.5 obs-text)', async (t) => {
    // The lane once wrote heads as UTF-8: each byte from 0x80 up reached the other side as two.
    // latin1: one byte per character, so \xe9 and \xff go on the wire as the bytes 0xe9 0xff.
    const obsText = (extra: string) => Buffer.from(`GET /obs-text HTTP/1.1\r\nHost: ${host}\r\nCookie: ${cookie}\r\n${extra}x-name: caf\xe9\xff\r\n\r\n`, 'latin1');
    const client = await openClient(t, gw.port);
    client.socket.write(obsText(''));
    await until(() => /\r\n\r\n[0-9a-f]+$/.test(client.text), 2000);
    t.match(client.text, /\r\n\r\n636166e9ff$/, 'the workspace got the bytes sent');
    t.match(client.text, /\r\nx-echo: caf\xe9\xff\r\n/, 'and the client got the bytes the workspace sent');
    t.equal(gw.gateway.laneConnections() >= 1, true, 'on the warm lane');
    // Connection: close keeps node:http's handling: the same bytes through the full request path.
    const byNode = (await rawExchange(gw.port, obsText('connection: close\r\n'))).text;
    t.match(byNode, /\r\nx-echo: caf\xe9\xff\r\n[^]*\r\n\r\n636166e9ff$/, 'node:http path: the same bytes both ways');
  });

  t.test('the workspace failing: 502 or 504 from the catalogue, or the response cut', async (t) => {
    const reset = await get('/reset');
    t.same([reset.status, reset.headers['x-gateway-error']], [502, 'UPSTREAM_UNREACHABLE']);
    t.match(JSON.parse(reset.body), { error: { code: 'UPSTREAM_UNREACHABLE' } }, 'JSON for a program');
    await registerRunning(gw.store, 'raw', up.port); // the failure made the gateway recheck the route
    await get('/warm-again');
    const page = await request(gw.port, { host, path: '/reset', agent, headers: { cookie, ...NAVIGATE } });
    if (page.status === 502) t.match(page.body, /<html/i, 'HTML for a page load');
    await registerRunning(gw.store, 'raw', up.port);
    await get('/warm-again');
    const never = await get('/never');
    t.same([never.status, never.headers['x-gateway-error']], [504, 'UPSTREAM_TIMEOUT'], 'no head within UPSTREAM_TIMEOUT');
    await registerRunning(gw.store, 'raw', up.port);
    await get('/warm-again');
    await t.rejects(get('/die'), 'dying mid-body: the client sees the response cut, not a clean end');
    // RFC 9110 9.3.2: no content in an answer to HEAD, an error page the gateway writes itself included
    // (node:http drops it for us; the warm lane writes its own bytes).
    for (const accept of ['application/json', 'text/html']) {
      await registerRunning(gw.store, 'raw', up.port);
      await get('/warm-again');
      const head = await rawExchange(gw.port, `HEAD /reset HTTP/1.1\r\nHost: ${host}\r\nCookie: ${cookie}\r\nAccept: ${accept}\r\n\r\n`);
      const [fields, body] = head.text.split('\r\n\r\n');
      t.match(fields, /^HTTP\/1\.1 502 [^]*\r\nx-gateway-error: UPSTREAM_UNREACHABLE\r\n/i, `HEAD (${accept}): 502 UPSTREAM_UNREACHABLE`);
      t.match(fields, /\r\ncontent-length: [1-9]\d*(\r\n|$)/i, 'the length of the page not sent');
      t.equal(body, '', 'and no body after the head');
    }
  });

  t.test('a kept connection the workspace closes as it is reused: GET is tried again, once', async (t) => {
    await registerRunning(gw.store, 'raw', up.port);
    await get('/warm-again');
    t.equal((await get('/then-stale')).body, 'ok');
    const before = up.seen.length;
    const retried = await get('/retried');
    t.same([retried.status, retried.body], [200, '/retried'], 'answered from a new connection');
    t.same(up.seen.slice(before), ['GET /retried', 'GET /retried'], 'sent twice: the first attempt met the close');
  });

  t.test("a workspace's Connection naming Content-Length: the client's response is still framed by it", async (t) => {
    // Sent without its length on a kept connection, the body had no end the client could see: a
    // load balancer reads such a response until the close, and then the next one's bytes as its body.
    await registerRunning(gw.store, 'raw', up.port);
    await get('/warm-again');
    const c = `Host: ${host}\r\nCookie: ${cookie}\r\n`;
    const r = await rawExchange(gw.port, `GET /hop-names-length HTTP/1.1\r\n${c}\r\nGET /p2 HTTP/1.1\r\n${c}Connection: close\r\n\r\n`);
    const first = r.text.slice(0, r.text.indexOf('\r\n\r\n'));
    t.ok(/\r\ncontent-length: 2(\r\n|$)/i.test(first) || /\r\ntransfer-encoding: chunked(\r\n|$)/i.test(first), 'the first head frames its body');
    t.same([...r.text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1])), [200, 200], 'both answered');
    t.ok(r.closed);
  });

  t.test('pipelined requests, one of them for node:http: answered in order', async (t) => {
    await registerRunning(gw.store, 'raw', up.port);
    await get('/warm-again');
    const c = `Host: ${host}\r\nCookie: ${cookie}\r\n`;
    const r = await rawExchange(gw.port, `GET /p1 HTTP/1.1\r\n${c}\r\nGET /__gateway/signed-out HTTP/1.1\r\n${c}\r\nGET /p3 HTTP/1.1\r\n${c}Connection: close\r\n\r\n`);
    const statuses = [...r.text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));
    t.same(statuses, [200, 200, 200]);
    t.ok(r.text.indexOf('/p1') < r.text.indexOf('Signed out') && r.text.indexOf('Signed out') < r.text.indexOf('/p3'), 'in the order asked');
    t.ok(r.closed, 'closed after the Connection: close one');
  });

  t.test('a long pipeline behind a slow response: every request answered, in order, connection kept', async (t) => {
    // The lane holds what comes behind a held-back request and stops reading past its limit (64 KB,
    // http1.ts STASH_LIMIT); reading must start again once the held request is answered.
    await registerRunning(gw.store, 'raw', up.port);
    await get('/warm-again');
    const c = `Host: ${host}\r\nCookie: ${cookie}\r\n`;
    const paths = Array.from({ length: 1500 }, (_, i) => `/q${String(i).padStart(4, '0')}`);
    const pipeline = `GET /slow HTTP/1.1\r\n${c}\r\n${paths.map((p) => `GET ${p} HTTP/1.1\r\n${c}\r\n`).join('')}`;
    t.ok(pipeline.length > 3 * 64 * 1024, `more than the limit behind the slow one (${pipeline.length} bytes)`);
    const b = await openClient(t, gw.port);
    b.socket.write(pipeline);
    await until(() => b.text.endsWith('/q1499') || b.closed, 10_000);
    const bodies = [...b.text.matchAll(/\r\n\r\n(\/[a-z0-9]+)/g)].map((m) => m[1]);
    t.same(bodies, ['/slow', ...paths], 'every one answered, in the order asked');
    t.notOk(b.closed, 'the connection stays open');
  });

  t.test('a connection handed to node:http for one request comes back to the lane', async (t) => {
    // Behind a load balancer every connection carries many browsers' requests: one starting page or
    // sign-in must not move a connection off the lane for good.
    const c = `Host: ${host}\r\nCookie: ${cookie}\r\n`;
    const poll = await rawExchange(gw.port, `GET /__gateway/signed-out HTTP/1.1\r\n${c}\r\n`);
    t.match(poll.text, /^HTTP\/1\.1 200 /, 'answered by the request path');
    t.match(poll.text, /\r\nconnection: close\r\n/i, 'with Connection: close (RFC 9112 9.6)');
    t.ok(poll.closed, 'and the gateway closed the connection');
    // The same client's next connection starts on the lane, and a warm request stays there.
    const a = await openClient(t, gw.port);
    a.socket.write(`GET /after-poll HTTP/1.1\r\n${c}\r\n`);
    await until(() => a.text.endsWith('/after-poll'), 2000);
    // node:http marks every kept-alive answer with Keep-Alive: timeout=…; the lane's carry no such field.
    t.notMatch(a.text, /\r\n(connection|keep-alive):/i, 'answered by the warm lane, connection kept');
    a.socket.write(`GET /after-poll-2 HTTP/1.1\r\n${c}\r\n`);
    await until(() => a.text.endsWith('/after-poll-2'), 2000);
    t.notMatch(a.text, /\r\n(connection|keep-alive):/i, 'and the next one too');
    // A client that pipelines behind the request node:http takes keeps its connection (answered in order).
    const piped = await rawExchange(gw.port, `GET /__gateway/signed-out HTTP/1.1\r\n${c}\r\nGET /behind HTTP/1.1\r\n${c}\r\n`, { ms: 500 });
    t.same([...piped.text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1])), [200, 200], 'both answered');
    t.match(piped.text, /\r\nkeep-alive: timeout=/i, 'node:http kept the connection');
    t.ok(piped.text.endsWith('/behind'), 'in the order asked');
    t.notOk(piped.closed, 'and the connection stays open');
    // A request that arrives while the lane holds one back (the socket paused, its bytes left in the
    // socket's buffer) is pipelining too: the connection must not close under it (a regression).
    const b = await openClient(t, gw.port);
    b.socket.write(`GET /slow HTTP/1.1\r\n${c}\r\nGET /__gateway/signed-out HTTP/1.1\r\n${c}\r\n`);
    await new Promise((r) => setTimeout(r, 50));
    b.socket.write(`GET /late HTTP/1.1\r\n${c}\r\n`);
    await until(() => b.text.endsWith('/late') || b.closed, 3000);
    t.same([...b.text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1])), [200, 200, 200], 'all three answered, in order');
    t.ok(b.text.startsWith('HTTP/1.1 200 OK') && b.text.indexOf('/slow') < b.text.indexOf('Signed out') && b.text.endsWith('/late'), 'in the order asked');
    t.notOk(b.closed, 'the connection stays open');
  });

  t.test("the starting page's long-poll is answered on the lane, and the reload follows on its connection", async (t) => {
    // A stopped workspace whose owner's session the gateway has verified once (on node:http's path).
    const id = 'polled';
    const ph = `ws-${id}.localhost`;
    const pc = await gw.cookie(id);
    const first = await request(gw.port, { host: ph, path: '/__gateway/status', headers: { cookie: pc, ...XHR } });
    t.same([first.status, JSON.parse(first.body).state], [200, 'stopped'], 'node:http verified the session');
    const c = `Host: ${ph}\r\nCookie: ${pc}\r\n`;
    const wait = `GET /__gateway/status?wait=1&state=stopped&generation=0&stage= HTTP/1.1\r\n${c}\r\n`;

    const p = await openClient(t, gw.port);
    const lanes = gw.gateway.laneConnections();
    // A request pipelined behind the poll waits for the poll's answer (RFC 9112 9.3.2).
    p.socket.write(`${wait}GET /behind-the-poll HTTP/1.1\r\n${c}\r\n`);
    await new Promise((r) => setTimeout(r, 150));
    t.equal(p.text, '', 'held until the state changes');
    t.equal(gw.gateway.laneConnections(), lanes, 'still on the lane (a handover would have taken it off)');

    const record = { id, state: 'running' as const, generation: 1, since: Date.now(), endpoint: { host: '127.0.0.1', port: up.port }, startedAt: Date.now() };
    await gw.store.putWorkspace(record);
    await gw.store.publish({ record });
    await until(() => p.text.endsWith('/behind-the-poll'), 2000);
    const [answer] = p.text.split('\r\n\r\n', 2);
    t.match(answer, /^HTTP\/1\.1 200 OK\r\n/);
    t.match(answer, /\r\ncontent-type: application\/json/i);
    t.match(answer, /\r\nx-request-id: /i);
    t.notMatch(answer, /\r\n(connection|keep-alive):/i, 'the lane answered it and kept the connection');
    t.match(p.text, /"state":"running"/, 'told running');
    t.ok(p.text.indexOf('"state":"running"') < p.text.indexOf('/behind-the-poll'), 'then the request behind it, forwarded');
    p.socket.write(`GET /reloaded HTTP/1.1\r\n${c}Sec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\n\r\n`);
    await until(() => p.text.endsWith('/reloaded'), 2000);
    t.notOk(p.closed, 'the reload came on the same connection, and it stays open');
    t.ok(up.seen.includes('GET /reloaded'), 'forwarded to the workspace');
  });

  t.test('a long-poll on the lane: a client that leaves, a store that fails', async (t) => {
    const id = 'polled-2';
    const ph = `ws-${id}.localhost`;
    const pc = await gw.cookie(id);
    await request(gw.port, { host: ph, path: '/__gateway/status', headers: { cookie: pc, ...XHR } });
    const c = `Host: ${ph}\r\nCookie: ${pc}\r\n`;
    const lanes = gw.gateway.laneConnections();
    const gone = await rawExchange(gw.port, `GET /__gateway/status?wait=1&state=stopped&generation=0&stage= HTTP/1.1\r\n${c}\r\n`, { ms: 100 });
    t.same([gone.text, gone.closed], ['', false], 'still waiting when the client left');
    await until(() => gw.gateway.laneConnections() <= lanes, 2000);
    t.pass('the lane let go of it');

    // Redis down: the code from the error catalogue, in JSON for the page's script, and the connection closes.
    const getWorkspace = gw.store.getWorkspace;
    gw.store.getWorkspace = () => Promise.reject(new StoreUnavailable('down'));
    t.teardown(() => { gw.store.getWorkspace = getWorkspace; });
    const failed = await rawExchange(gw.port, `GET /__gateway/status HTTP/1.1\r\n${c}Accept: */*\r\n\r\n`);
    gw.store.getWorkspace = getWorkspace;
    t.match(failed.text, /^HTTP\/1\.1 503 /);
    t.match(failed.text, /\r\nx-gateway-error: STORE_UNAVAILABLE\r\n/i);
    t.match(failed.text, /\r\ncontent-type: application\/json/i);
    t.ok(failed.closed, 'and closed');
    const after = await request(gw.port, { host: ph, path: '/__gateway/status', headers: { cookie: pc, ...XHR } });
    t.same([after.status, JSON.parse(after.body).state], [200, 'stopped'], 'the next poll is answered');
  });

  t.test("a client's half-close: the answer, then the gateway closes too (no CLOSE-WAIT)", async (t) => {
    const r = await rawExchange(gw.port, `GET /half HTTP/1.1\r\nHost: ${host}\r\nCookie: ${cookie}\r\n\r\n`, { halfClose: true });
    t.match(r.text, /^HTTP\/1\.1 200[^]*\/half$/);
    t.ok(r.closed, 'closed by the gateway');
    await until(() => gw.gateway.laneConnections() <= 1, 2000);
  });

  t.test('clients resetting after a refused request do not take the gateway down', async (t) => {
    // The lane lets go of a connection it answers with an error; the client's reset then arrives on a
    // socket with no lane, and an 'error' with no listener would end the process (a regression).
    for (let i = 0; i < 20; i++) {
      await new Promise<void>((resolve) => {
        const s = net.connect(gw.port, '127.0.0.1', () => {
          s.write(i % 2 ? 'NOT HTTP\r\n\r\n' : `GET /x HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n`);
          setTimeout(() => { s.resetAndDestroy(); resolve(); }, 20);
        });
        s.on('error', () => undefined);
      });
    }
    await new Promise((r) => setTimeout(r, 100));
    t.equal((await get('/still-up')).body, '/still-up');
  });

  t.test('a connection answered with an error is closed, even by a client that keeps its side open', async (t) => {
    const connections = () => new Promise<number>((r) => gw.gateway.publicServer.getConnections((_e, n) => r(n)));
    const before = await connections();
    const s = net.connect({ port: gw.port, host: '127.0.0.1', allowHalfOpen: true });
    t.teardown(() => s.destroy());
    s.on('error', () => undefined);
    const answer = await new Promise<string>((resolve) => {
      let text = '';
      s.on('data', (d) => { text += d; });
      s.on('end', () => resolve(text));
      s.write('NOT HTTP\r\n\r\n');
    });
    t.match(answer, /^HTTP\/1\.1 400/);
    // Half-open sockets are node:http's server's default: without closing ours, this one would stay.
    await until(async () => (await connections()) <= before, 2000);
    t.pass('the gateway let go of the socket');
  });

  t.test('a client leaving mid-download releases the upstream connection', async (t) => {
    const before = up.openNow();
    await new Promise<void>((resolve) => {
      const req = http.get({ host: '127.0.0.1', port: gw.port, path: '/endless', headers: { host, cookie } }, (res) => {
        res.once('data', () => { req.destroy(); resolve(); });
      });
      req.on('error', () => undefined);
    });
    await until(() => up.openNow() <= before, 5000);
    t.pass('the upstream connection serving the download was closed');
  });

  t.test("trailer fields end with their message: never fields of the next one, either way (RFC 9112 7.1.2)", async (t) => {
    const trailed = await get('/trailers');
    t.same([trailed.body, trailed.headers['x-trailer']], ['abc', undefined], 'the body passes; its trailer is not a field of the head');
    // One llhttp parses (a simple head is read from its bytes, response-head.ts).
    const next = await get('/chunked');
    t.same([next.body, next.headers['x-trailer']], ['abcde', undefined], "the next response on the workspace's connection has no field of the trailer");

    const echo = http.createServer((req, res) => { req.resume(); req.on('end', () => res.end(JSON.stringify(req.headers['x-trailer'] ?? null))); });
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
    t.teardown(() => new Promise<void>((r) => { echo.closeAllConnections(); echo.close(() => r()); }));
    await registerRunning(gw.store, 'trailer', (echo.address() as AddressInfo).port);
    const c2 = await gw.cookie('trailer');
    const th = 'ws-trailer.localhost';
    await request(gw.port, { host: th, headers: { cookie: c2 } });
    // One connection: a chunked upload with a trailer field, then a request without one.
    const client = await openClient(t, gw.port);
    const head = `host: ${th}\r\ncookie: ${c2}\r\nsec-fetch-mode: cors\r\nsec-fetch-dest: empty\r\n`;
    client.socket.write(`POST /up HTTP/1.1\r\n${head}transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-trailer: smuggled\r\n\r\n`);
    const answers = () => client.text.match(/\r\n\r\n(null|"smuggled")/g) ?? [];
    await until(() => answers().length === 1, 2000);
    client.socket.write(`GET /next HTTP/1.1\r\n${head}\r\n`);
    await until(() => answers().length === 2, 2000);
    t.same(answers(), ['\r\n\r\nnull', '\r\n\r\nnull'], "the workspace never saw the upload's trailer as a field of the request after it");
  });

  t.test('a workspace answering an upload before reading it: the rest is read and dropped, the connection goes on (RFC 9110 10.1.1)', async (t) => {
    const early = await startEarlyAnsweringUpstream();
    t.teardown(() => early.close());
    await registerRunning(gw.store, 'early', early.port);
    const c2 = await gw.cookie('early');
    const eh = 'ws-early.localhost';
    await request(gw.port, { host: eh, headers: { cookie: c2 } });
    const client = await openClient(t, gw.port);
    const head = `host: ${eh}\r\ncookie: ${c2}\r\nsec-fetch-mode: cors\r\nsec-fetch-dest: empty\r\n`;
    // More than the socket buffers on the way hold, so the gateway has stopped reading when the answer comes.
    const size = 8 * 1024 * 1024;
    client.socket.write(`POST /upload HTTP/1.1\r\n${head}content-length: ${size}\r\n\r\n`);
    client.socket.write(Buffer.alloc(size, 'a'));
    await until(() => /\r\n\r\nbig$/.test(client.text), 3000);
    t.match(client.text, /^HTTP\/1\.1 413 /, "the workspace's answer");
    client.socket.write(`GET /after HTTP/1.1\r\n${head}\r\n`);
    await until(() => client.text.endsWith('\r\n\r\nnext'), 3000);
    t.pass('the rest of the upload was read, and the next request answered on the same connection');
  });

  t.test('a body: Content-Length and chunked both arrive whole', async (t) => {
    const echo = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => res.end(JSON.stringify({ te: req.headers['transfer-encoding'] ?? null, body: Buffer.concat(chunks).toString() })));
    });
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
    t.teardown(() => new Promise<void>((r) => { echo.closeAllConnections(); echo.close(() => r()); }));
    await registerRunning(gw.store, 'echo', (echo.address() as AddressInfo).port);
    const c2 = await gw.cookie('echo');
    const eh = 'ws-echo.localhost';
    await request(gw.port, { host: eh, headers: { cookie: c2 } });
    const sized = await request(gw.port, { host: eh, method: 'POST', agent, body: 'hello', headers: { cookie: c2 } });
    t.same(JSON.parse(sized.body), { te: null, body: 'hello' });
    const streamed = await new Promise<string>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: gw.port, method: 'POST', agent, headers: { host: eh, cookie: c2, 'transfer-encoding': 'chunked' } }, (res) => {
        let text = '';
        res.on('data', (d) => { text += d; });
        res.on('end', () => resolve(text));
      });
      req.on('error', reject);
      req.write('part one, ');
      setTimeout(() => req.end('part two'), 50);
    });
    t.same(JSON.parse(streamed), { te: 'chunked', body: 'part one, part two' });
  });
});

t.test('a replica leaving answers its held long-polls at once, and closes their connections', async (t) => {
  // On the lane (session verified before) and on node:http's path (a session not seen yet): each is
  // answered with the state as it is, so the page polls again, through the load balancer, elsewhere.
  const gw = await startTestGateway();
  let closing: Promise<void> | undefined;
  t.teardown(() => closing ?? gw.close());
  const pc = await gw.cookie('leaving');
  const c = `Host: ws-leaving.localhost\r\nCookie: ${pc}\r\n`;
  const wait = `GET /__gateway/status?wait=1&state=stopped&generation=0&stage= HTTP/1.1\r\n${c}\r\n`;
  const onNode = await openClient(t, gw.port);
  onNode.socket.write(wait);
  await new Promise((r) => setTimeout(r, 100));
  const onLane = await openClient(t, gw.port);
  onLane.socket.write(wait);
  await new Promise((r) => setTimeout(r, 150));
  t.same([onNode.text, onLane.text], ['', ''], 'both held');
  t.equal(gw.gateway.laneConnections(), 1, 'one on the lane, the other handed to node:http');

  closing = gw.close();
  // Well inside the 5 s grace the gateway gives requests in flight before it stops.
  await until(() => onNode.closed && onLane.closed, 2500);
  for (const [name, client] of [['node:http', onNode], ['lane', onLane]] as const) {
    t.match(client.text, /^HTTP\/1\.1 200 /, `${name}: answered`);
    t.match(client.text, /"state":"stopped"/, `${name}: with the state as it is`);
  }
  t.match(onNode.text, /\r\nconnection: close\r\n/i, 'node:http says it closes');
  await closing;
});

t.test("a connection's notes never carry one request's decision to another", async (t) => {
  // The lane keeps what a connection's last Host and Cookie decided (request-path.ts, WarmNotes):
  // a new Host, a new cookie or an expired session must each be decided afresh, as node:http's path
  // would; each such request here is handed over, refused there, and its connection closed.
  const clock = createManualClock(Date.now());
  const up = await rawUpstream();
  const gw = await startTestGateway({ clock });
  t.teardown(async () => { await gw.close(); await up.close(); });
  for (const id of ['note-a', 'note-b']) await registerRunning(gw.store, id, up.port);
  const cookieA = await gw.cookie('note-a');
  const cookieB = await gw.cookie('note-b');
  // Each session verified once on node:http's path, as a browser's first request does.
  for (const [id, cookie] of [['note-a', cookieA], ['note-b', cookieB]]) t.equal((await request(gw.port, { host: `ws-${id}.localhost`, path: '/plain', headers: { cookie } })).status, 200);
  const ask = (host: string, path: string, cookie?: string) =>
    `GET ${path} HTTP/1.1\r\nHost: ${host}\r\n${cookie ? `Cookie: ${cookie}\r\n` : ''}Accept: application/json\r\nSec-Fetch-Mode: cors\r\n\r\n`;
  const warmThen = async (second: string, name: string, before?: () => void) => {
    const client = await openClient(t, gw.port);
    client.socket.write(ask('ws-note-a.localhost', '/plain', cookieA));
    await until(() => /\r\n\r\n\/plain$/.test(client.text), 3000);
    t.equal(gw.gateway.laneConnections(), 1, `${name}: the first request went on the lane`);
    before?.();
    const seen = up.seen.length;
    client.socket.write(second);
    await until(() => client.closed, 3000);
    t.match(client.text.slice(client.text.indexOf('/plain') + 6), /^HTTP\/1\.1 401 /, `${name}: refused`);
    t.equal(up.seen.length, seen, `${name}: nothing reached a workspace`);
  };
  await warmThen(ask('ws-note-b.localhost', '/other-host', cookieA), "another workspace's host, the same cookie");
  await warmThen(ask('ws-note-a.localhost', '/no-cookie'), 'the same host, no cookie');
  await warmThen(ask('ws-note-a.localhost', '/their-cookie', cookieB), "the same host, another workspace's cookie");
  await warmThen(ask('ws-note-a.localhost', '/expired', cookieA), 'the same cookie, its session expired since', () => clock.advance(gw.config.sessionTtlMs + 1000));
});
