// Edge hardening (issue 3): bad input over raw sockets, slowloris, and the rate limits in the store.
// Inputs follow published lists: PortSwigger's HTTP request smuggling variants (CL.TE, TE.CL, TE.TE
// obfuscations as in smuggler), the HTTP Garden's parser-discrepancy payloads, llhttp's request
// fixtures (invalid header bytes, Content-Length and chunk-size forms) and the `ws` advisory
// GHSA-3h5v-q93c-6h6q / CVE-2024-37890 (an upgrade with more headers than maxHeadersCount).
// Written here from those descriptions, not copied. Each input gets its expected statuses or is
// closed; recording upstreams prove each accepted request arrived exactly once and no smuggled
// request arrived at all.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import t from 'tap';
import type { StateStore } from '../gateway/store/contract.js';
import { LISTEN_BACKLOG } from '../gateway/app.js';
import { systemClock } from '../gateway/clock.js';
import { createMemoryStore } from '../gateway/store/memory.js';
import { request, startTestGateway, waitRunning, XHR } from './helpers/gateway.js';
import { PROBE_END, gatewayWithRecordedWorkspaces } from './helpers/upstream.js';
import { connected, openWs } from './helpers/ws.js';

interface Exchange { text: string; statuses: number[]; closed: boolean }

/**
 * Writes raw bytes on one connection and reads until the gateway closes it or has answered the
 * trailing probe (its answer ends with PROBE_END), bounded by a timeout that only a hung gateway hits.
 */
function exchange(port: number, payload: string | Buffer, timeoutMs = 10_000): Promise<Exchange> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let ended: 'closed' | 'probe' | 'timeout' | undefined;
    const finish = (how: 'closed' | 'probe' | 'timeout') => {
      if (ended) return;
      ended = how;
      clearTimeout(timer);
      socket.destroy();
      const text = Buffer.concat(chunks).toString('latin1');
      resolve({ text, statuses: [...text.matchAll(/HTTP\/1\.[01] (\d{3}) /g)].map((m) => Number(m[1])), closed: how !== 'timeout' });
    };
    const timer = setTimeout(() => finish('timeout'), timeoutMs);
    socket.on('data', (c: Buffer) => {
      chunks.push(c);
      if (c.toString('latin1').endsWith(`${PROBE_END}"}`)) finish('probe');
    });
    socket.on('error', () => { /* a reset counts as closed */ });
    socket.on('close', () => finish('closed'));
    socket.once('connect', () => socket.write(payload));
  });
}

/** A counting view of a store: which methods were called while `on`. */
function countingStore(inner: StateStore) {
  const calls = new Map<string, number>();
  let on = false;
  const store = new Proxy(inner, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver);
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => {
        if (on) calls.set(String(prop), (calls.get(String(prop)) ?? 0) + 1);
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  return { store, calls, start() { calls.clear(); on = true; }, stop() { on = false; } };
}

t.test('bad input over raw sockets', async (t) => {
  const { gw, ups: { a: upA, b: upB }, cookies: { a: ca, b: cb } } = await gatewayWithRecordedWorkspaces(t, ['a', 'b']);
  const H = 'Host: ws-a.localhost\r\n';
  const C = `Cookie: ${ca}\r\n`;
  /** Sent after each input: if the connection survived, this is answered last and closes it. */
  const PROBE = `GET /__probe HTTP/1.1\r\n${H}${C}Connection: close\r\n\r\n`;
  const SMUGGLED = `GET /smuggled HTTP/1.1\r\n${H}${C}\r\n`;
  const WS = `Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://ws-a.localhost\r\n`;
  const chunkedSmuggle = `0\r\n\r\n${SMUGGLED}`;

  // [name, bytes, expected statuses ('closed' = no answer), urls upstream A must see (default none),
  //  the catalogue code of the last answer (unchecked when absent)]
  type Row = [string, string, number[] | 'closed', string[]?, string?];
  const rows: Row[] = [
    // --- smuggling: CL.TE, TE.CL (both framings at once are refused outright, RFC 9112 6.3)
    ['CL.TE', `POST /x HTTP/1.1\r\n${H}${C}Content-Length: ${chunkedSmuggle.length}\r\nTransfer-Encoding: chunked\r\n\r\n${chunkedSmuggle}`, [400]],
    ['TE.CL', `POST /x HTTP/1.1\r\n${H}${C}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n${(SMUGGLED.length).toString(16)}\r\n${SMUGGLED}\r\n0\r\n\r\n`, [400]],
    // --- TE.TE obfuscations (each with a Content-Length a lenient parser would fall back to)
    ...[
      'Transfer-Encoding: xchunked', 'Transfer-Encoding : chunked', 'Transfer-Encoding: chunked\r\nTransfer-Encoding: x',
      'Transfer-Encoding:\tchunked', ' Transfer-Encoding: chunked', 'X: x\nTransfer-Encoding: chunked', 'Transfer-Encoding\r\n : chunked',
      'Transfer-Encoding: chunked\r\nTransfer-encoding: identity', 'Transfer-Encoding: \x0bchunked', 'Transfer-Encoding: chunked, identity',
      'Transfer-Encoding: identity, chunked', 'Transfer-Encoding: "chunked"', 'Transfer-Encoding: chunked\x00', 'Transfer-Encoding: chun\r\n ked',
    ].map((te): Row => [`TE.TE ${JSON.stringify(te)}`, `POST /x HTTP/1.1\r\n${H}${C}Content-Length: ${chunkedSmuggle.length}\r\n${te}\r\n\r\n${chunkedSmuggle}`, [400]]),
    // An unknown field is just a field: framed by Content-Length, forwarded once, nothing smuggled.
    ['Transfer_Encoding (not the field)', `POST /x HTTP/1.1\r\n${H}${C}Content-Length: ${chunkedSmuggle.length}\r\nTransfer_Encoding: chunked\r\n\r\n${chunkedSmuggle}${PROBE}`, [200, 200], ['/x', '/__probe']],
    // A Connection field naming Content-Length (RFC 9110 7.6.1 forbids naming an end-to-end field): the
    // body is still framed by it, so dropping it upstream made the body a second request there.
    ['Connection naming Content-Length', `POST /x HTTP/1.1\r\n${H}${C}Connection: content-length\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}${PROBE}`, [200, 200], ['/x', '/__probe']],
    ['Connection naming Content-Length, through node:http (Expect)', `POST /x HTTP/1.1\r\n${H}${C}Expect: 100-continue\r\nConnection: keep-alive, Content-Length\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}${PROBE}`, [100, 200, 200], ['/x', '/__probe']],
    // --- Content-Length forms
    ['duplicate Content-Length, different', `POST /x HTTP/1.1\r\n${H}${C}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!${PROBE}`, [400]],
    ['duplicate Content-Length, same', `POST /x HTTP/1.1\r\n${H}${C}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello${PROBE}`, [400]],
    ['Content-Length list', `POST /x HTTP/1.1\r\n${H}${C}Content-Length: 5, 5\r\n\r\nhello${PROBE}`, [400]],
    ['Content-Length +5', `POST /x HTTP/1.1\r\n${H}${C}Content-Length: +5\r\n\r\nhello${PROBE}`, [400]],
    ['Content-Length -1', `POST /x HTTP/1.1\r\n${H}${C}Content-Length: -1\r\n\r\n${PROBE}`, [400]],
    ['Content-Length 0x5', `POST /x HTTP/1.1\r\n${H}${C}Content-Length: 0x5\r\n\r\nhello${PROBE}`, [400]],
    ['Content-Length 1 2', `POST /x HTTP/1.1\r\n${H}${C}Content-Length: 1 2\r\n\r\nhello${PROBE}`, [400]],
    ['Content-Length overflow', `POST /x HTTP/1.1\r\n${H}${C}Content-Length: 99999999999999999999999\r\n\r\nhello${PROBE}`, [400]],
    // --- chunk-size tricks
    ['chunk extension (valid)', `POST /x HTTP/1.1\r\n${H}${C}Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\n\r\n${PROBE}`, [200, 200], ['/x', '/__probe']],
    ['chunk size 0x5', `POST /x HTTP/1.1\r\n${H}${C}Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n${PROBE}`, [400]],
    ['chunk size with leading space', `POST /x HTTP/1.1\r\n${H}${C}Transfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n${PROBE}`, [400]],
    ['chunk size -1', `POST /x HTTP/1.1\r\n${H}${C}Transfer-Encoding: chunked\r\n\r\n-1\r\nhello\r\n0\r\n\r\n${PROBE}`, [400]],
    ['chunk size overflow', `POST /x HTTP/1.1\r\n${H}${C}Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n${PROBE}`, [400]],
    ['chunk with bare LF', `POST /x HTTP/1.1\r\n${H}${C}Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n${PROBE}`, [400]],
    ['chunk data longer than its size', `POST /x HTTP/1.1\r\n${H}${C}Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n${PROBE}`, [400]],
    ['trailer naming Content-Length', `POST /x HTTP/1.1\r\n${H}${C}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 40\r\n\r\n${PROBE}`, [400]],
    // --- HTTP Garden / llhttp-style request lines and header bytes
    ['NUL in a header value', `GET /x HTTP/1.1\r\n${H}${C}X: a\x00b\r\n\r\n${PROBE}`, [400]],
    ['control byte in a header value', `GET /x HTTP/1.1\r\n${H}${C}X: a\x01b\r\n\r\n${PROBE}`, [400]],
    ['space in a header name', `GET /x HTTP/1.1\r\n${H}${C}X Y: z\r\n\r\n${PROBE}`, [400]],
    ['empty header name', `GET /x HTTP/1.1\r\n${H}${C}: z\r\n\r\n${PROBE}`, [400]],
    ['header without colon', `GET /x HTTP/1.1\r\n${H}${C}Xyz\r\n\r\n${PROBE}`, [400]],
    ['obs-fold continuation line', `GET /x HTTP/1.1\r\n${H}${C}X: a\r\n b\r\n\r\n${PROBE}`, [400]],
    ['CR-only line ends', `GET /x HTTP/1.1\r${H.replace('\r\n', '\r')}${C.replace('\r\n', '\r')}\r${PROBE}`, [400]],
    ['lower-case method', `get /x HTTP/1.1\r\n${H}${C}\r\n${PROBE}`, [400]],
    // llhttp tolerates these two; the request is re-serialized, so the upstream sees one clean request.
    ['two spaces in the request line', `GET  /x HTTP/1.1\r\n${H}${C}\r\n${PROBE}`, [200, 200], ['/x', '/__probe']],
    ['trailing junk after the version', `GET /x HTTP/1.1 x\r\n${H}${C}\r\n${PROBE}`, [400]],
    ['HTTP/1.10', `GET /x HTTP/1.10\r\n${H}${C}\r\n${PROBE}`, [400]],
    ['HTTP/3.0', `GET /x HTTP/3.0\r\n${H}${C}\r\n${PROBE}`, [400]],
    ['DEL in the target', `GET /x\x7f HTTP/1.1\r\n${H}${C}\r\n${PROBE}`, [400]],
    ['fragment in the target', `GET /x#frag HTTP/1.1\r\n${H}${C}\r\n${PROBE}`, [200, 200], ['/x', '/__probe']],
    ['HTTP/0.9', `GET /x\r\n\r\n`, [400]],
    ['h2 prior knowledge', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', [400]],
    // --- Host: exactly one, exactly ours
    ['two Host headers', `GET /x HTTP/1.1\r\n${H}Host: ws-b.localhost\r\n${C}\r\n${PROBE}`, [400, 200], ['/__probe']],
    ['two Host headers, same value', `GET /x HTTP/1.1\r\n${H}${H}${C}\r\n${PROBE}`, [400, 200], ['/__probe']],
    ['Host with userinfo', `GET /x HTTP/1.1\r\nHost: ws-a.localhost@evil.example\r\n${C}\r\n${PROBE}`, [400, 200], ['/__probe']],
    ['Host list', `GET /x HTTP/1.1\r\nHost: ws-a.localhost, ws-b.localhost\r\n${C}\r\n${PROBE}`, [400, 200], ['/__probe']],
    // Node answers these itself (requireHostHeader) and closes; no probe, its fate would race the close.
    ['no Host', `GET /x HTTP/1.1\r\n${C}\r\n`, [400]],
    ['HTTP/1.0 without Host', `GET /x HTTP/1.0\r\n${C}\r\n`, [400]],
    // --- request targets: only origin-form, or absolute-form naming this very host
    ['absolute-form to another host', `GET http://evil.example/x HTTP/1.1\r\n${H}${C}\r\n${PROBE}`, [400, 200], ['/__probe']],
    ['absolute-form to a sibling workspace', `GET http://ws-b.localhost/x HTTP/1.1\r\n${H}${C}\r\n${PROBE}`, [400, 200], ['/__probe']],
    ['absolute-form with userinfo', `GET http://ws-a.localhost@evil.example/x HTTP/1.1\r\n${H}${C}\r\n${PROBE}`, [400, 200], ['/__probe']],
    ['absolute-form to this host is routed as its path', `GET http://ws-a.localhost/x?q=1 HTTP/1.1\r\n${H}${C}\r\n${PROBE}`, [200, 200], ['/x?q=1', '/__probe']],
    ['absolute-form cannot skip the proxy-route guard', `GET http://ws-a.localhost/proxy/80@evil.example/ HTTP/1.1\r\n${H}${C}\r\n${PROBE}`, [400, 200], ['/__probe']],
    ['absolute-form reaches our own routes, not the workspace', `GET http://ws-a.localhost/__gateway/login?token=x HTTP/1.1\r\n${H}\r\n${PROBE}`, [401, 200], ['/__probe']],
    ['CONNECT', 'CONNECT ws-a.localhost:443 HTTP/1.1\r\nHost: ws-a.localhost:443\r\n\r\n', 'closed'],
    ['GET *', `GET * HTTP/1.1\r\n${H}${C}\r\n${PROBE}`, [400, 200], ['/__probe']],
    ['OPTIONS *', `OPTIONS * HTTP/1.1\r\n${H}${C}\r\n${PROBE}`, [400, 200], ['/__probe']],
    // --- upgrades: only a proper WebSocket handshake on GET
    ['h2c upgrade', `GET /x HTTP/1.1\r\n${H}${C}Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n`, [400]],
    ['WebSocket upgrade on POST', `POST /ws HTTP/1.1\r\n${H}${C}${WS}Content-Length: 0\r\n\r\n`, [400]],
    ['WebSocket upgrade without Sec-WebSocket-Key', `GET /ws HTTP/1.1\r\n${H}${C}${WS.replace(/Sec-WebSocket-Key[^\r]*\r\n/, '')}\r\n`, [400]],
    ['WebSocket upgrade without Sec-WebSocket-Version', `GET /ws HTTP/1.1\r\n${H}${C}${WS.replace(/Sec-WebSocket-Version[^\r]*\r\n/, '')}\r\n`, [400]],
    ['WebSocket upgrade, version 8', `GET /ws HTTP/1.1\r\n${H}${C}${WS.replace('Version: 13', 'Version: 8')}\r\n`, [400]],
    ['WebSocket upgrade with two Host headers', `GET /ws HTTP/1.1\r\n${H}Host: ws-b.localhost\r\n${C}${WS}\r\n`, [400]],
    // A handshake with content: parsers differ on whether the bytes after its head are a body or the
    // new protocol, so it is refused at once, and neither the upgrade nor those bytes reach the workspace.
    ['WebSocket upgrade with a Content-Length body', `GET /ws HTTP/1.1\r\n${H}${C}${WS}Content-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`, [400], [], 'BAD_REQUEST'],
    ['WebSocket upgrade with a Content-Length body still to come', `GET /ws HTTP/1.1\r\n${H}${C}${WS}Content-Length: 1000\r\n\r\nabc`, [400], [], 'BAD_REQUEST'],
    ['WebSocket upgrade with a chunked body', `GET /ws HTTP/1.1\r\n${H}${C}${WS}Transfer-Encoding: chunked\r\n\r\n${chunkedSmuggle}`, [400], [], 'BAD_REQUEST'],
    ['WebSocket upgrade with a chunked body still to come', `GET /ws HTTP/1.1\r\n${H}${C}${WS}Transfer-Encoding: chunked\r\n\r\n5\r\nab`, [400], [], 'BAD_REQUEST'],
    ['WebSocket upgrade with a body and no session', `GET /ws HTTP/1.1\r\n${H}${WS}Content-Length: 5\r\n\r\nhello`, [400], [], 'BAD_REQUEST'],
    // CVE-2024-37890: more headers than maxHeadersCount (2000), the handshake fields past the cut.
    ['upgrade with 2100 headers (ws advisory)', `GET /ws HTTP/1.1\r\n${H}${C}${'a: b\r\n'.repeat(2100)}${WS}\r\n`, [400]],
    ['upgrade with 2100 headers, Host past the cut', `GET /ws HTTP/1.1\r\n${'a: b\r\n'.repeat(2100)}${H}${C}${WS}\r\n`, [400]],
    ['request with 2100 headers, Host past the cut', `GET /x HTTP/1.1\r\n${'a: b\r\n'.repeat(2100)}${H}${C}\r\n`, [400]],
    // --- size limit
    ['header block over MAX_HEADER_SIZE', `GET /x HTTP/1.1\r\n${H}${C}X-Big: ${'a'.repeat(20_000)}\r\n\r\n${PROBE}`, [431]],
    ['request line over MAX_HEADER_SIZE', `GET /${'a'.repeat(20_000)} HTTP/1.1\r\n${H}${C}\r\n${PROBE}`, [431]],
  ];

  // Each row first on a connection of its own, then pipelined behind a request forwarded on the warm
  // lane: there a head that parses is held back until that answer is out, re-written, then parsed again.
  const WARM = `GET /warm HTTP/1.1\r\n${H}${C}\r\n`;
  for (const behindWarm of [false, true]) {
    for (const [rowName, send, expected, urls = [], code] of rows) {
      const name = behindWarm ? `behind a warm request: ${rowName}` : rowName;
      const beforeA = upA.requests.length;
      const beforeB = upB.requests.length;
      const r = await exchange(gw.port, behindWarm ? WARM + send : send);
      t.ok(r.closed, `${name}: closed, or answered through the probe`);
      // A head that does not parse ends the connection at once, the answer still owed before it with it,
      // as node:http ends it (its clientError): the warm request's 200 is there, or that connection is gone.
      const statuses = behindWarm && r.statuses[0] === 200 && (expected === 'closed' || r.statuses.length > expected.length) ? r.statuses.slice(1) : r.statuses;
      if (expected === 'closed') t.same(statuses, [], `${name}: closed without an answer`);
      else t.same(statuses, expected, `${name}: ${expected.join(', ')}`);
      if (code) t.match(r.text.slice(r.text.lastIndexOf('HTTP/1.1 ')), new RegExp(`\r\nx-gateway-error: ${code}\r\n`), `${name}: ${code}`);
      // Each exactly once; in which order they reach the workspace is not promised: node:http may work on
      // pipelined requests at once (RFC 9112 9.3.2), only the responses must keep their order.
      const seen = upA.requests.slice(beforeA).map((q) => q.url);
      t.same(seen.filter((u) => !behindWarm || u !== '/warm').sort(), [...urls].sort(), `${name}: upstream saw ${urls.length ? urls.join(', ') : 'nothing'}`);
      t.ok(seen.filter((u) => u === '/warm').length <= 1, `${name}: the warm request at most once`);
      t.equal(upB.requests.length, beforeB, `${name}: the sibling saw nothing`);
    }
  }

  t.test('pipelined requests naming different workspaces are each authorized and routed', async (t) => {
    const beforeA = upA.requests.length;
    const beforeB = upB.requests.length;
    const r = await exchange(gw.port, [
      `GET /p1 HTTP/1.1\r\n${H}${C}\r\n`,
      `GET /p2 HTTP/1.1\r\nHost: ws-b.localhost\r\n${C}\r\n`, // a's cookie on b
      `GET /p3 HTTP/1.1\r\nHost: ws-b.localhost\r\nCookie: ${cb}\r\n\r\n`,
      `POST /p4 HTTP/1.1\r\n${H}Cookie: ${cb}\r\nContent-Length: 2\r\n\r\nhi`, // b's cookie on a
      `POST /p5 HTTP/1.1\r\nHost: ws-b.localhost\r\nCookie: ${cb}\r\nContent-Length: 2\r\n\r\nok`,
      PROBE,
    ].join(''));
    t.same(r.statuses, [200, 401, 200, 401, 200, 200]);
    t.same(upA.requests.slice(beforeA).map((q) => q.url).sort(), ['/__probe', '/p1']);
    t.same(upB.requests.slice(beforeB).map((q) => `${q.method} ${q.url} ${q.body}`).sort(), ['GET /p3 ', 'POST /p5 ok']);
  });

  t.test('a handshake saying Content-Length: 0 has no content, and opens', async (t) => {
    const before = upA.requests.length;
    const ws = openWs(gw.port, '/ws-empty', { cookie: ca, host: 'ws-a.localhost', headers: { 'content-length': '0' } });
    t.teardown(() => ws.terminate());
    await connected(ws);
    t.same(upA.requests.slice(before).map((q) => `${q.url} ${q.upgrade}`), ['/ws-empty true']);
  });

  t.test('nothing smuggled ever arrived, and the gateway is still up', async (t) => {
    for (const q of [...upA.requests, ...upB.requests]) {
      t.notMatch(q.url, /smuggled/, `${q.method} ${q.url}`);
      t.ok(['GET', 'POST'].includes(q.method), `${q.method} is a method we sent`);
      t.equal(q.headers['transfer-encoding'] === undefined || q.headers['transfer-encoding'] === 'chunked', true);
    }
    t.ok(gw.gateway.publicServer.listening);
    const ok = await request(gw.port, { host: 'ws-a.localhost', path: '/after', headers: { ...XHR, cookie: ca } });
    t.equal(ok.status, 200);
  });
});

t.test('the public listener queues a class connecting at once (accept queue above Node\'s 511)', async (t) => {
  const gw = await startTestGateway();
  t.teardown(() => gw.close());
  // For a listening socket, ss reports the accept queue's size in Send-Q.
  const out = execFileSync('ss', ['-Hltn', `sport = :${gw.port}`]).toString().trim().split(/\s+/);
  const somaxconn = Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8'));
  t.equal(Number(out[2]), Math.min(LISTEN_BACKLOG, somaxconn), `accept queue ${out[2]}`);
});

t.test("a client's Connection: close is honoured on proxied responses", async (t) => {
  const { gw, cookies: { a: cookie } } = await gatewayWithRecordedWorkspaces(t, ['a']);
  const r = await exchange(gw.port, `GET /x HTTP/1.1\r\nHost: ws-a.localhost\r\nCookie: ${cookie}\r\nConnection: close\r\n\r\n`, 3000);
  t.same(r.statuses, [200]);
  t.ok(r.closed, 'the gateway closed the connection after the response');
  t.match(r.text, /\r\nconnection: close\r\n/i);
});

t.test('slowloris and slow bodies: other clients still get answers', async (t) => {
  const { gw, ups: { a: upA, b: upB }, cookies: { a: ca, b: cb } } = await gatewayWithRecordedWorkspaces(t, ['a', 'b']);
  const SLOW = 300;
  const slow: net.Socket[] = [];
  t.teardown(() => { for (const s of slow) s.destroy(); });
  // Two thirds never finish their header block (unauthenticated slowloris); one third is the owner of
  // ws-a sending a body that never completes, which holds upstream sockets of ws-a only.
  await Promise.all(Array.from({ length: SLOW }, (_, i) => new Promise<void>((resolve, reject) => {
    const s = net.connect(gw.port, '127.0.0.1');
    s.once('error', reject);
    s.once('connect', () => {
      s.off('error', reject);
      s.on('error', () => undefined);
      s.write(i % 3 ? 'GET / HTTP/1.1\r\nHost: ws-a.localhost\r\nX-Slow: ' : `POST /slow HTTP/1.1\r\nHost: ws-a.localhost\r\nCookie: ${ca}\r\nContent-Length: 1000\r\n\r\nabc`);
      slow.push(s);
      resolve();
    });
  })));
  // Dribble one more byte into each, as slowloris does, then another student's client works.
  for (const s of slow) s.write('a');
  const answers = [];
  for (let i = 0; i < 20; i++) answers.push((await request(gw.port, { host: 'ws-b.localhost', path: `/n${i}`, headers: { ...XHR, cookie: cb } })).status);
  t.same(answers, Array(20).fill(200), 'all normal requests answered');
  t.equal(upB.requests.length, 20);
  t.notOk(upA.requests.some((q) => q.url === '/slow'), 'no unfinished body reached the workspace as complete');
  t.equal(slow.filter((s) => !s.destroyed).length, SLOW, 'the slow connections are held until headersTimeout/requestTimeout (Node checks them every 30 s)');
});

t.test('rate limits in the store', async (t) => {
  t.test('sign-in attempts per client address', async (t) => {
    const gw = await startTestGateway({ env: { RATE_SIGNIN_PER_MINUTE: '3' } });
    t.teardown(() => gw.close());
    const signIn = async (token: string, xff?: string) => request(gw.port, { path: `/__gateway/login?token=${token}`, headers: xff ? { 'x-forwarded-for': xff } : {} });
    for (let i = 0; i < 3; i++) t.equal((await signIn('bad', `10.0.0.${i}`)).status, 401, `attempt ${i + 1}`);
    const good = await gw.gateway.auth.createLoginToken('demo', 'jti-rate');
    const limited = await signIn(good, '10.9.9.9');
    t.equal(limited.status, 429, 'the fourth is refused, whatever X-Forwarded-For an untrusted peer claims');
    t.equal(limited.headers['x-gateway-error'], 'RATE_LIMITED');
    t.equal(gw.provisioner.starts.length, 0);
  });

  t.test('behind a trusted proxy, the limit is per forwarded client address', async (t) => {
    const gw = await startTestGateway({ env: { RATE_SIGNIN_PER_MINUTE: '2', TRUSTED_PROXIES: '127.0.0.1/32' } });
    t.teardown(() => gw.close());
    const signIn = async (xff: string) => (await request(gw.port, { path: '/__gateway/login?token=bad', headers: { 'x-forwarded-for': xff } })).status;
    t.same([await signIn('198.51.100.1'), await signIn('198.51.100.1'), await signIn('198.51.100.1')], [401, 401, 429]);
    t.equal(await signIn('198.51.100.2'), 401, 'another student behind the same load balancer is not limited');
    t.equal(await signIn('6.6.6.6, 198.51.100.1'), 429, 'a spoofed left-most entry does not help: the right-most untrusted one counts');
  });

  t.test('start attempts per workspace', async (t) => {
    // Starts that fail at once (the binary exits), so each "try again" really begins a new start.
    const gw = await startTestGateway({ env: { RATE_STARTS_PER_MINUTE: '2', LOCAL_WORKSPACE: 'code-server', CODE_SERVER_BIN: '/bin/false' } });
    t.teardown(() => gw.close());
    const cookie = await gw.cookie('demo');
    const start = async () => (await request(gw.port, { method: 'POST', path: '/__gateway/start', headers: { cookie, 'x-requested-with': 'gateway' } }));
    const first = await start();
    await waitRunning(gw.port, cookie);
    t.equal((await start()).status, 202, 'the second real start');
    await waitRunning(gw.port, cookie);
    const third = await start();
    t.same([first.status, third.status], [202, 429]);
    t.equal(third.headers['x-gateway-error'], 'RATE_LIMITED');
    t.equal(gw.provisioner.starts.length, 2, 'two starts, whatever the clicks');
    const noHeader = await request(gw.port, { method: 'POST', path: '/__gateway/start', headers: { cookie } });
    t.equal(noHeader.status, 400, 'a cross-site form post (no x-requested-with) cannot start it');
  });

  t.test('10,000 requests to random workspace hosts: no provisioner call, no store access', async (t) => {
    const counted = countingStore(createMemoryStore(systemClock));
    const gw = await startTestGateway({ store: counted.store });
    t.teardown(() => gw.close());
    const SOCKETS = 20;
    const PER_SOCKET = 500;
    const rand = () => Math.random().toString(36).slice(2, 12);
    counted.start();
    const results = await Promise.all(Array.from({ length: SOCKETS }, (_, s) => {
      let payload = '';
      for (let i = 0; i < PER_SOCKET; i++) {
        const last = i === PER_SOCKET - 1;
        // Every third one presents someone's (here: a made-up) session cookie.
        const cookie = i % 3 === 0 ? `Cookie: wsgw-session=${rand()}.${rand()}.${rand()}\r\n` : '';
        payload += `GET /${s}/${i} HTTP/1.1\r\nHost: ws-${rand()}.localhost\r\n${cookie}Accept: application/json\r\n${last ? 'Connection: close\r\n' : ''}\r\n`;
      }
      return exchange(gw.port, payload, 30_000);
    }));
    counted.stop();
    const statuses = results.flatMap((r) => r.statuses);
    t.equal(statuses.length, SOCKETS * PER_SOCKET, 'every request answered');
    t.ok(statuses.every((s) => s === 401), 'every one 401');
    t.equal(gw.provisioner.starts.length, 0, 'no provisioner call');
    // reportConnections is this replica's periodic heartbeat (its open-connection counts), not a request's doing.
    counted.calls.delete('reportConnections');
    t.same(Object.fromEntries(counted.calls), {}, 'no store access at all: the session check comes first');
    // Hosts that are not workspace hosts at all never get that far either.
    counted.start();
    const other = await exchange(gw.port, `GET / HTTP/1.1\r\nHost: www.localhost\r\n\r\nGET / HTTP/1.1\r\nHost: ws-UPPER_x.localhost\r\nConnection: close\r\n\r\n`);
    counted.stop();
    counted.calls.delete('reportConnections');
    t.same(other.statuses, [404, 400]);
    t.same(Object.fromEntries(counted.calls), {});
  });
});

t.test('a slow header block and a slow body are cut off at their limits', async (t) => {
  const gw = await startTestGateway({ env: { KEEPALIVE_TIMEOUT: '1s', HEADERS_TIMEOUT: '1s', REQUEST_TIMEOUT: '2s' } });
  t.teardown(() => gw.close());
  const cookie = await gw.cookie('demo');
  await request(gw.port, { headers: { 'sec-fetch-mode': 'navigate', cookie } });
  await waitRunning(gw.port, cookie);
  const closedBy = (write: (s: net.Socket) => void) => new Promise<string>((resolve) => {
    const s = net.connect(gw.port, '127.0.0.1', () => write(s));
    let got = '';
    s.on('data', (c) => { got += c.toString(); });
    s.on('close', () => resolve(got));
    s.on('error', () => undefined);
  });
  // Headers that never end: the gateway answers 408 and closes (Node's headersTimeout, swept every 2 s).
  const slowHeaders = await closedBy((s) => s.write('GET / HTTP/1.1\r\nHost: ws-demo.localhost\r\nX-Slow: '));
  t.match(slowHeaders, /^HTTP\/1\.1 408/, 'slow header block cut off with 408');
  // A body that never completes is cut off by the request timeout.
  const slowBody = await closedBy((s) => s.write(`POST /upload HTTP/1.1\r\nHost: ws-demo.localhost\r\nCookie: ${cookie}\r\nContent-Length: 1000000\r\n\r\nabc`));
  t.ok(slowBody === '' || /^HTTP\/1\.1 408/.test(slowBody), `slow body to a running workspace cut off (${slowBody.slice(0, 12) || 'closed'})`);
  // Blank lines between requests are no request (RFC 9112 2.2): the connection stays idle and closes
  // silently at the keep-alive timeout, and a request after them is answered (http1.ts startsMessage).
  t.equal(await closedBy((s) => s.write('\r\n\r\n')), '', 'blank lines alone: closed when idle too long, no 408');
  const afterBlank = await closedBy((s) => s.write(`\r\n\r\nGET / HTTP/1.1\r\nHost: ws-demo.localhost\r\nCookie: ${cookie}\r\n\r\n`));
  t.match(afterBlank, /^HTTP\/1\.1 (200|302) /, 'a request after blank lines is answered');
});
