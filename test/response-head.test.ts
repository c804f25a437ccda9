// The warm lane's reading of a simple response head from its bytes (gateway/response-head.ts): the
// heads it takes and what it makes of them, the ones it leaves to llhttp, and a differential check
// that every head it takes, llhttp takes too and reads the same way (status, length, fields).
import t from 'tap';
import { scanSimpleHead, type SimpleHead } from '../gateway/response-head.js';
import { PARSE_ON, createParser, releaseParser } from '../gateway/llhttp.js';

const MAX = 16 * 1024;
const scan = (head: string, body = '') => scanSimpleHead(Buffer.from(head + body, 'latin1'), MAX);
/** The lines a simple head leaves out, as text. */
const dropped = (head: string, h: SimpleHead) => {
  const lines: string[] = [];
  for (let i = 0; i < h.drop.length; i += 2) lines.push(head.slice(h.drop[i], h.drop[i + 1]));
  return lines;
};

t.test('simple heads: status, length, Date, and the hop-by-hop lines left out', async (t) => {
  const rows: Array<[string, string, Partial<SimpleHead>, string[]]> = [
    ['the usual node:http answer', 'HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nDate: Thu, 26 Nov 2026 10:00:00 GMT\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 1024\r\n\r\n',
      { status: 200, contentLength: 1024, dated: true }, ['Connection: keep-alive\r\n', 'Keep-Alive: timeout=5\r\n']],
    ['no Date (the gateway adds one)', 'HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n', { status: 404, contentLength: 0, dated: false }, []],
    ['an empty reason phrase', 'HTTP/1.1 500 \r\ncontent-length: 3\r\n\r\n', { status: 500, contentLength: 3 }, []],
    ['names in any case; whitespace around values', 'HTTP/1.1 200 OK\r\nCONTENT-LENGTH: \t 7\r\nDATE:x\r\ncOnNeCtIoN: Keep-Alive \r\n\r\n', { contentLength: 7, dated: true }, ['cOnNeCtIoN: Keep-Alive \r\n']],
    ['every other hop-by-hop field the lane drops', 'HTTP/1.1 200 OK\r\nTE: x\r\nTrailer: y\r\nUpgrade: h2c\r\nProxy-Connection: z\r\nProxy-Authenticate: a\r\nProxy-Authorization: b\r\nx-kept: 1\r\nContent-Length: 1\r\n\r\n',
      { contentLength: 1 }, ['TE: x\r\n', 'Trailer: y\r\n', 'Upgrade: h2c\r\n', 'Proxy-Connection: z\r\n', 'Proxy-Authenticate: a\r\n', 'Proxy-Authorization: b\r\n']],
    ['obs-text in a value and in the reason (RFC 9110 5.5)', 'HTTP/1.1 200 \xe9t\xe9\r\nx-name: caf\xe9\r\ncontent-length: 2\r\n\r\n', { status: 200, contentLength: 2 }, []],
    ['leading zeros in the length', 'HTTP/1.1 200 OK\r\ncontent-length: 007\r\n\r\n', { contentLength: 7 }, []],
    ['names made of any tchar', "HTTP/1.1 200 OK\r\nx!#$%&'*+.^_`|~9: v\r\ncontent-length: 1\r\n\r\n", { contentLength: 1 }, []],
  ];
  for (const [name, head, expected, lines] of rows) {
    const h = scan(head, 'body bytes behind it');
    t.ok(h, `${name}: taken`);
    if (!h) continue;
    t.match(h, { ...expected, end: head.length }, name);
    t.same(dropped(head, h), lines, `${name}: lines left out`);
  }
});

t.test('heads left to llhttp', async (t) => {
  const ok = 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n';
  t.ok(scan(ok), 'the baseline is taken');
  const rows: Array<[string, string]> = [
    ['HTTP/1.0', 'HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n'],
    ['1xx (interim)', 'HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n'],
    ['101', 'HTTP/1.1 101 Switching Protocols\r\ncontent-length: 0\r\n\r\n'],
    ['204 (no body whatever the fields say)', 'HTTP/1.1 204 No Content\r\ncontent-length: 2\r\n\r\n'],
    ['304', 'HTTP/1.1 304 Not Modified\r\ncontent-length: 2\r\n\r\n'],
    ['a status past 599', 'HTTP/1.1 600 X\r\ncontent-length: 2\r\n\r\n'],
    ['a two-digit status', 'HTTP/1.1 20 OK\r\ncontent-length: 2\r\n\r\n'],
    ['no space after the status', 'HTTP/1.1 200\r\ncontent-length: 2\r\n\r\n'],
    ['no Content-Length (close-delimited)', 'HTTP/1.1 200 OK\r\nx: 1\r\n\r\n'],
    ['chunked', 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n'],
    ['Content-Length with Transfer-Encoding (RFC 9112 6.3)', 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\nTransfer-Encoding: chunked\r\n\r\n'],
    ['two Content-Lengths', 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n'],
    ['a list as the length', 'HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\n'],
    ['a sign in the length', 'HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\n'],
    ['whitespace after the length', 'HTTP/1.1 200 OK\r\ncontent-length: 2 \r\n\r\n'],
    ['an empty length', 'HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n'],
    ['a length of 16 digits', 'HTTP/1.1 200 OK\r\ncontent-length: 1000000000000000\r\n\r\n'],
    ['Connection: close', 'HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n'],
    ['Connection naming a field', 'HTTP/1.1 200 OK\r\nconnection: keep-alive, x-secret\r\nx-secret: 1\r\ncontent-length: 2\r\n\r\n'],
    ['obs-fold (RFC 9112 5.2)', 'HTTP/1.1 200 OK\r\nx: a\r\n b\r\ncontent-length: 2\r\n\r\n'],
    ['space before the colon', 'HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\n'],
    ['an empty name', 'HTTP/1.1 200 OK\r\n: v\r\ncontent-length: 2\r\n\r\n'],
    ['a bare LF ending a field', 'HTTP/1.1 200 OK\r\nx: 1\ncontent-length: 2\r\n\r\n'],
    ['a bare CR in a value', 'HTTP/1.1 200 OK\r\nx: 1\r2\r\ncontent-length: 2\r\n\r\n'],
    ['a bare LF ending the head', 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\n'],
    ['NUL in a value', 'HTTP/1.1 200 OK\r\nx: a\x00b\r\ncontent-length: 2\r\n\r\n'],
    ['DEL in a value', 'HTTP/1.1 200 OK\r\nx: a\x7fb\r\ncontent-length: 2\r\n\r\n'],
    ['a control byte in the reason', 'HTTP/1.1 200 O\x01K\r\ncontent-length: 2\r\n\r\n'],
    ['a non-tchar in a name', 'HTTP/1.1 200 OK\r\nx(y): 1\r\ncontent-length: 2\r\n\r\n'],
    ['CRLF before the status line', '\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n'],
  ];
  for (const [name, head] of rows) t.equal(scan(head, 'ok'), undefined, name);
  // Not all here yet: a head cut anywhere is llhttp's (it keeps the part across reads).
  for (let cut = 0; cut < ok.length; cut++) t.equal(scan(ok.slice(0, cut)), undefined, `cut at ${cut}`);
  // Over the size limit.
  const big = `HTTP/1.1 200 OK\r\nx: ${'a'.repeat(200)}\r\ncontent-length: 2\r\n\r\n`;
  t.ok(scanSimpleHead(Buffer.from(big, 'latin1'), big.length), 'at the limit: taken');
  t.equal(scanSimpleHead(Buffer.from(big, 'latin1'), big.length - 1), undefined, 'one byte over: llhttp answers it (431-like parse error)');
});

/** What llhttp makes of a response head: status, Content-Length framing and fields, or undefined if it refuses it. */
function llhttpReads(bytes: Buffer): { status: number; fields: string[] } | undefined {
  let seen: { status: number; fields: string[] } | undefined;
  const parser = createParser('response', MAX, {
    onHeadersComplete(_ma, _mi, fields, _m, _u, status) { seen = { status, fields }; return PARSE_ON; },
    onBody() {},
    onMessageComplete() {},
  });
  try {
    const r = parser.execute(bytes);
    return typeof r === 'number' ? seen : undefined;
  } finally {
    releaseParser(parser, true);
  }
}

t.test('every head taken, llhttp takes and reads alike (mutated heads, fixed seed)', async (t) => {
  const base = 'HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nDate: Thu, 26 Nov 2026 10:00:00 GMT\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 10\r\n\r\n';
  const alphabet = ['\r', '\n', ' ', '\t', ':', ',', '\x00', '\x7f', '\xe9', 'a', 'A', '0', '5', '-', 'HTTP/1.1 ', 'content-length: 3\r\n', 'transfer-encoding: chunked\r\n', 'connection: close\r\n', '\r\n'];
  let seed = 7;
  const rand = (n: number) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
  let taken = 0;
  let disagreements = 0;
  for (let k = 0; k < 20_000; k++) {
    let head = base;
    for (let m = 1 + rand(3); m > 0; m--) {
      const at = rand(head.length + 1);
      const op = rand(3);
      const piece = alphabet[rand(alphabet.length)];
      head = op === 0 ? head.slice(0, at) + piece + head.slice(at) : op === 1 ? head.slice(0, at) + head.slice(at + 1 + rand(3)) : head.slice(0, at) + piece + head.slice(at + piece.length);
    }
    const bytes = Buffer.from(`${head}0123456789`, 'latin1');
    const simple = scanSimpleHead(bytes, MAX);
    if (!simple) continue;
    taken++;
    const theirs = llhttpReads(bytes.subarray(0, simple.end));
    const length = theirs?.fields.reduce((v, f, i) => (i % 2 === 0 && f.toLowerCase() === 'content-length' ? Number(theirs.fields[i + 1]) : v), -1);
    if (!theirs || theirs.status !== simple.status || length !== simple.contentLength) {
      disagreements++;
      if (disagreements <= 5) t.fail(`taken but llhttp reads it otherwise: ${JSON.stringify(head)} -> ${JSON.stringify(theirs)} vs ${JSON.stringify(simple)}`);
    }
  }
  t.ok(taken > 1000, `a good share of the mutations was still simple (${taken})`);
  t.equal(disagreements, 0, 'no head taken that llhttp refuses or reads otherwise');
});
