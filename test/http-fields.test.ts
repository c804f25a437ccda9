// The warm lane's field decisions as tables (gateway/http-fields.ts, gateway/http1.ts,
// gateway/upstream-pool.ts): which request bodies it takes, what the workspace is sent, what the
// client gets back, and how a response's body is delimited.
import t from 'tap';
import { responseHead } from '../gateway/http1.js';
import { FORWARDING, HOP_BY_HOP, forwardedFields, isHopByHop, isMisdirected, namedInConnection, scanRequest, upstreamRequestHead, type RequestScan } from '../gateway/http-fields.js';
import { framingOf, type Framing } from '../gateway/upstream-pool.js';

t.test('scanRequest: the body the warm lane takes, and the fields it reads', async (t) => {
  const rows: Array<[string, string[], Partial<RequestScan>]> = [
    ['no body', ['Host', 'h'], { host: 'h', body: 'none' }],
    ['Content-Length: 0', ['Content-Length', '0'], { body: 'none' }],
    ['Content-Length', ['content-length', '12'], { body: 'length', length: '12' }],
    ['chunked', ['Transfer-Encoding', 'chunked'], { body: 'chunked' }],
    ['chunked in capitals', ['transfer-encoding', 'Chunked'], { body: 'chunked' }],
    ['another coding before chunked: left to node:http', ['Transfer-Encoding', 'gzip, chunked'], { body: undefined }],
    ['Expect: left to node:http (it answers 100-continue)', ['Expect', '100-continue', 'Content-Length', '3'], { body: undefined }],
    ['two Cookie fields, joined as node:http joins them', ['Cookie', 'a=1', 'cookie', 'b=2'], { cookie: 'a=1; b=2' }],
    ['two X-Forwarded-For fields, joined as one list', ['X-Forwarded-For', '1.1.1.1', 'x-forwarded-for', '2.2.2.2'], { forwardedFor: '1.1.1.1, 2.2.2.2' }],
    ['the first Host, and how many came', ['Host', 'a', 'Host', 'b'], { host: 'a', hosts: 2 }],
    ['one Host', ['HOST', 'a'], { host: 'a', hosts: 1 }],
    ['no Host', ['Accept', '*/*'], { host: undefined, hosts: 0 }],
    ['Fetch Metadata and Origin, in any case', ['Sec-Fetch-Site', 'same-origin', 'SEC-FETCH-MODE', 'cors', 'sec-fetch-dest', 'empty', 'Origin', 'http://o'],
      { site: 'same-origin', mode: 'cors', dest: 'empty', origin: 'http://o', length: undefined }],
    ['repeated Sec-Fetch-Site and Origin joined as node:http joins them', ['Sec-Fetch-Site', 'same-origin', 'Sec-Fetch-Site', 'cross-site', 'Origin', 'a', 'origin', 'b'],
      { site: 'same-origin, cross-site', origin: 'a, b' }],
    ['none of them', ['Content-Length', '2', 'Expect', 'x'], { site: undefined, mode: undefined, dest: undefined, origin: undefined, length: '2' }],
  ];
  for (const [name, fields, expected] of rows) t.match(scanRequest(fields), expected, name);
});

t.test('upstreamRequestHead: what the workspace is sent', async (t) => {
  const fwd = forwardedFields('10.0.0.9', 'https', 'ws-a.example');
  const head = (fields: string[], cookie?: string) => upstreamRequestHead('GET', '/p', fields, fwd, cookie, 'a');
  const ours = 'x-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: https\r\nx-forwarded-host: ws-a.example\r\nx-gateway-workspace: a\r\n';
  const rows: Array<[string, string[], string | undefined, string]> = [
    ['end-to-end fields kept, in order and case', ['Host', 'ws-a.example', 'Accept', '*/*'], undefined, 'Host: ws-a.example\r\nAccept: */*\r\n'],
    ['hop-by-hop fields dropped', ['Connection', 'keep-alive', 'Keep-Alive', '5', 'TE', 'trailers', 'Transfer-Encoding', 'chunked', 'X', '1'], undefined, 'X: 1\r\n'],
    ['fields named in Connection dropped', ['Connection', 'x-secret', 'X-Secret', 's', 'X', '1'], undefined, 'X: 1\r\n'],
    ['forwarding claims replaced by ours', ['X-Forwarded-For', '6.6.6.6', 'Forwarded', 'for=6.6.6.6', 'X-Real-IP', '6.6.6.6'], undefined, ''],
    ['the cookie as given (the session cookie already taken out)', ['Cookie', 'a=1', 'Cookie', 'b=2'], 'a=1; b=2', 'cookie: a=1; b=2\r\n'],
    ['no cookie left: none sent', ['Cookie', '__Host-wsgw-session=x'], undefined, ''],
    ['Content-Length is end-to-end', ['Content-Length', '3'], undefined, 'Content-Length: 3\r\n'],
    // The body is framed by it whatever Connection says: dropped, the body would be a request of its own upstream.
    ['Content-Length kept when Connection names it', ['Connection', 'Content-Length', 'Content-Length', '3'], undefined, 'Content-Length: 3\r\n'],
    ['Expect never reaches the workspace', ['Expect', '100-continue'], undefined, ''],
    ['every hop-by-hop and forwarding name, in any case', [...HOP_BY_HOP, ...FORWARDING].flatMap((n) => [n.toUpperCase(), 'v']), undefined, ''],
    ['names of the same lengths as those kept', ['Accept-Language', 'en', 'User-Agent', 'ua', 'X-Forwarded-Bar', '1'], undefined, 'Accept-Language: en\r\nUser-Agent: ua\r\nX-Forwarded-Bar: 1\r\n'],
    ['Connection: close names a field "close"', ['Connection', 'close', 'Close', '1', 'X', '1'], undefined, 'X: 1\r\n'],
    ["a client's workspace name, in any case, replaced by ours", ['X-Gateway-Workspace', 'b', 'x-gateway-workspace', 'c', 'X-GATEWAY-WORKSPACE', 'd'], undefined, ''],
  ];
  for (const [name, fields, cookie, expected] of rows) t.equal(head(fields, cookie), `GET /p HTTP/1.1\r\n${expected}${ours}`, name);
});

t.test("isMisdirected: only a 421 with the workspace's marker means another workspace answered", async (t) => {
  const rows: Array<[string, number, string[], boolean]> = [
    ['421 with the marker', 421, ['Content-Length', '0', 'x-gateway-misdirected', '1'], true],
    ['the marker in any case', 421, ['X-Gateway-Misdirected', '1'], true],
    ["421 without it (a student's own app)", 421, ['Content-Length', '0'], false],
    ['the marker on another status', 200, ['x-gateway-misdirected', '1'], false],
    ['a name of the same length', 421, ['x-gateway-misdirecteb', '1'], false],
  ];
  for (const [name, status, fields, expected] of rows) t.equal(isMisdirected(status, fields), expected, name);
});

t.test('isHopByHop and namedInConnection: the same answers as the sets they stand for', async (t) => {
  // isHopByHop filters by length before it lower-cases and looks up (bench/instructions.ts).
  const names = [...HOP_BY_HOP, ...FORWARDING, 'host', 'date', 'accept', 'user-agent', 'content-type', 'x-te', 't', '', 'x'.repeat(70), 'proxy-connectionx'];
  for (const name of names) for (const spelled of [name, name.toUpperCase()]) t.equal(isHopByHop(spelled), HOP_BY_HOP.has(name), `isHopByHop(${JSON.stringify(spelled)})`);
  const rows: Array<[string, string[], string[] | undefined]> = [
    ['keep-alive names nothing more', ['Connection', 'keep-alive'], undefined],
    ['Keep-Alive in capitals, the same', ['connection', 'Keep-Alive'], undefined],
    ['hop-by-hop names are dropped anyway', ['Connection', 'keep-alive, Upgrade, TE'], undefined],
    ['other names are collected, lower-cased', ['Connection', 'keep-alive, X-Hop', 'Connection', 'close'], ['x-hop', 'close']],
    ['no Connection field', ['Date', 'd'], undefined],
  ];
  for (const [name, fields, expected] of rows) {
    const named = namedInConnection(fields);
    t.same(named && [...named], expected, name);
  }
});

t.test('responseHead: what the client gets back', async (t) => {
  const date = () => 'Thu, 26 Nov 2026 00:00:00 GMT';
  // [name, upstream fields, framing, the fields the client gets before ours, re-chunked]
  const rows: Array<[string, string[], Framing, string, boolean]> = [
    ['a length passes as it is', ['Content-Length', '2', 'Date', 'd'], 'length', 'Content-Length: 2\r\nDate: d\r\n', false],
    ['chunked stays chunked (our chunks)', ['Transfer-Encoding', 'chunked', 'Date', 'd'], 'chunked', 'Date: d\r\n', true],
    ['until-close becomes chunked, so the connection stays open', ['Date', 'd'], 'close', 'Date: d\r\n', true],
    ['no body: no framing added', ['Date', 'd'], 'none', 'Date: d\r\n', false],
    ["the workspace's Date in any spelling is kept, none added", ['date', 'a', 'DATE', 'b'], 'none', 'date: a\r\nDATE: b\r\n', false],
    ['Date added when missing (RFC 9110 6.6.1)', ['Content-Length', '0'], 'length', 'Content-Length: 0\r\ndate: Thu, 26 Nov 2026 00:00:00 GMT\r\n', false],
    ['hop-by-hop and Connection-named fields dropped', ['Connection', 'keep-alive, X-Hop', 'Keep-Alive', 'timeout=5', 'X-Hop', '1', 'Date', 'd'], 'none', 'Date: d\r\n', false],
    ['repeated names kept', ['Set-Cookie', 'a=1', 'Set-Cookie', 'b=2', 'Date', 'd'], 'none', 'Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nDate: d\r\n', false],
  ];
  for (const [name, fields, framing, expected, chunked] of rows) {
    t.same(responseHead(200, 'OK', fields, framing, 'x-request-id: r\r\n', date), { head: `HTTP/1.1 200 OK\r\n${expected}x-request-id: r\r\n${chunked ? 'transfer-encoding: chunked\r\n' : ''}\r\n`, chunked }, name);
  }
});

t.test('framingOf: how a response body is delimited (RFC 9112 6.3), and a length\'s value', async (t) => {
  const rows: Array<[string[], Framing | 'unsupported', number?]> = [
    [['Transfer-Encoding', 'chunked'], 'chunked'],
    [['Transfer-Encoding', ' Chunked '], 'chunked'],
    // Any other transfer coding would have to be decoded before the body is re-framed (refused, 502).
    [['Transfer-Encoding', 'gzip'], 'unsupported'],
    [['Transfer-Encoding', 'gzip, chunked'], 'unsupported'],
    [['Transfer-Encoding', 'gzip', 'Transfer-Encoding', 'chunked'], 'unsupported'],
    [['Transfer-Encoding', 'chunked', 'Transfer-Encoding', 'chunked'], 'unsupported'],
    [['transfer-encoding', 'chunked', 'Content-Length', '5'], 'chunked'],
    [['Content-Length', '5'], 'length', 5],
    [['content-length', '0'], 'length', 0],
    [['Content-Type', 'text/plain'], 'close'],
  ];
  for (const [fields, expected, length] of rows) {
    const r = framingOf(fields);
    t.equal(r.framing, expected, fields.join(' '));
    t.equal(r.length, length, `${fields.join(' ')}: its length`);
  }
});
