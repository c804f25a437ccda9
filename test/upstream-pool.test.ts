// The upstream pool on its own (gateway/upstream-pool.ts): connections reused, kept within
// maxSockets, and never handed to the next request in a state that cannot read its answer.
import net, { type AddressInfo } from 'node:net';
import t from 'tap';
import { createUpstreamPool, type Framing, type ResponseSink, type UpstreamPool } from '../gateway/upstream-pool.js';
import { CHALLENGE_FIELD, PROOF_FIELD, proof } from '../gateway/workspace-proof.js';
import { onRequests } from './helpers/upstream.js';

/** Answers every request with its path as the body; counts connections. */
async function pathEcho() {
  let connections = 0;
  const server = net.createServer((socket) => {
    connections++;
    onRequests(socket, (_method, path) => { socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${path.length}\r\n\r\n${path}`); });
    socket.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as AddressInfo).port, connections: () => connections, close: () => new Promise<void>((r) => { server.close(() => r()); }) };
}

/** Sends GET path and collects the answer; `stall` makes the sink refuse its body's last piece (backpressure). */
function get(pool: UpstreamPool, port: number, path: string, stall = false): Promise<{ status: number; body: string; framing: Framing }> {
  return new Promise((resolve, reject) => {
    let status = 0;
    let framing: Framing = 'none';
    let body = '';
    const sink: ResponseSink = {
      head(s, _text, _fields, f) { status = s; framing = f; },
      data(chunk) { body += chunk.toString(); return !stall; },
      end() { resolve({ status, body, framing }); },
      fail(code) { reject(new Error(code)); },
      drain() { /* no request body */ },
      flush() { /* nothing held */ },
    };
    pool.send({ host: '127.0.0.1', port }, { method: 'GET', head: `GET ${path} HTTP/1.1\r\nhost: x\r\n`, body: 'none' }, sink);
  });
}

t.test('a connection paused by the last response is reading again for the next one', async (t) => {
  const up = await pathEcho();
  const pool = createUpstreamPool({ connectTimeoutMs: 1000, responseTimeoutMs: 10_000, maxSockets: 1, idleMs: 4000 });
  t.teardown(async () => { pool.close(); await up.close(); });
  // The sink refuses the body's last piece and the response completes in the same read: the
  // connection goes back to the pool paused (a regression: VS Code's 10 MB workbench.js, then
  // the next file on that connection never came).
  t.same(await get(pool, up.port, '/stalled', true), { status: 200, body: '/stalled', framing: 'length' });
  const next = await Promise.race([get(pool, up.port, '/next'), new Promise((r) => setTimeout(() => r('hung'), 2000))]);
  t.same(next, { status: 200, body: '/next', framing: 'length' });
  t.equal(up.connections(), 1, 'on the same connection');
});

t.test('maxSockets: requests beyond it wait for a connection, then all are answered', async (t) => {
  const up = await pathEcho();
  const pool = createUpstreamPool({ connectTimeoutMs: 1000, responseTimeoutMs: 1000, maxSockets: 2, idleMs: 4000 });
  t.teardown(async () => { pool.close(); await up.close(); });
  const answers = await Promise.all(Array.from({ length: 10 }, (_, i) => get(pool, up.port, `/r${i}`)));
  t.same(answers.map((a) => a.body), Array.from({ length: 10 }, (_, i) => `/r${i}`));
  t.equal(up.connections(), 2);
  t.equal(pool.size(), 2, 'both kept for reuse');
});

t.test('nothing listening: UPSTREAM_UNREACHABLE, and no connection left counted', async (t) => {
  const up = await pathEcho();
  const port = up.port;
  await up.close();
  const pool = createUpstreamPool({ connectTimeoutMs: 1000, responseTimeoutMs: 1000, maxSockets: 2, idleMs: 4000 });
  t.teardown(() => pool.close());
  await t.rejects(get(pool, port, '/x'), { message: 'UPSTREAM_UNREACHABLE' });
  t.equal(pool.size(), 0);
});

t.test("timeouts: no head in time, a body still flowing, an idle connection (the pool's sweep)", async (t) => {
  // Answers a request once its whole Content-Length body is in; '/never' is never answered.
  let connections = 0;
  let closed = 0;
  const server = net.createServer((socket) => {
    connections++;
    socket.on('close', () => { closed++; });
    let buffered = '';
    socket.on('data', (d) => {
      buffered += d.toString('latin1');
      const end = buffered.indexOf('\r\n\r\n');
      if (end === -1) return;
      const length = Number(/content-length: (\d+)/i.exec(buffered.slice(0, end))?.[1] ?? 0);
      if (buffered.length < end + 4 + length || buffered.startsWith('GET /never')) return;
      buffered = '';
      socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${length}\r\n\r\n${'x'.repeat(length)}`);
    });
    socket.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const pool = createUpstreamPool({ connectTimeoutMs: 1000, responseTimeoutMs: 300, maxSockets: 4, idleMs: 400 });
  t.teardown(async () => { pool.close(); await new Promise<void>((r) => { server.close(() => r()); }); });

  await t.rejects(get(pool, port, '/never'), { message: 'UPSTREAM_TIMEOUT' }, 'no head within responseTimeoutMs');

  // A body sent over 800 ms, well past the 300 ms response timeout, a piece every 100 ms: still answered.
  const upload = new Promise<{ status: number; body: string }>((resolve, reject) => {
    let status = 0;
    let body = '';
    const sink: ResponseSink = {
      head(s) { status = s; }, data(c) { body += c.toString(); return true; }, end() { resolve({ status, body }); },
      fail(code) { reject(new Error(code)); }, drain() { /* small pieces */ }, flush() { /* nothing held */ },
    };
    const ex = pool.send({ host: '127.0.0.1', port }, { method: 'POST', head: 'POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 8\r\n', body: 'length' }, sink);
    let sent = 0;
    const timer = setInterval(() => { ex.body(Buffer.from('b')); if (++sent === 8) { clearInterval(timer); ex.end(); } }, 100);
  });
  t.same(await upload, { status: 200, body: 'xxxxxxxx' }, 'a body still flowing is activity, not a timeout');

  const before = closed;
  await new Promise((r) => setTimeout(r, 700));
  t.equal(closed - before, 1, 'the connection left idle was closed after idleMs');
  t.equal(pool.size(), 0);
  t.equal(connections, 2);
});

t.test('maxSockets holds when a retry on a new connection and a queued request meet', async (t) => {
  // '/stale' the first time: the kept connection is closed as it is reused (keep-alive race), so the
  // pool sends it again on a new connection; '/slow' holds the other connection while '/queued' waits.
  let openNow = 0;
  let peak = 0;
  let staleSeen = false;
  const server = net.createServer((socket) => {
    peak = Math.max(peak, ++openNow);
    socket.on('close', () => { openNow--; });
    socket.on('error', () => undefined);
    onRequests(socket, (_method, path) => {
      if (path === '/stale' && !staleSeen) { staleSeen = true; socket.destroy(); return false; }
      const answer = `HTTP/1.1 200 OK\r\ncontent-length: ${path.length}\r\n\r\n${path}`;
      if (path === '/slow') setTimeout(() => socket.write(answer), 200); else socket.write(answer);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const pool = createUpstreamPool({ connectTimeoutMs: 1000, responseTimeoutMs: 2000, maxSockets: 2, idleMs: 4000 });
  t.teardown(async () => { pool.close(); await new Promise<void>((r) => { server.close(() => r()); }); });

  await Promise.all([get(pool, port, '/a'), get(pool, port, '/b')]);
  t.equal(peak, 2, 'two kept connections');
  const answers = await Promise.all([get(pool, port, '/stale'), get(pool, port, '/slow'), get(pool, port, '/queued')]);
  t.same(answers.map((a) => a.body), ['/stale', '/slow', '/queued']);
  t.ok(staleSeen, 'the reused connection was closed under a request');
  t.ok(peak <= 2, `never more than maxSockets connections at once (peak ${peak})`);
  t.ok(pool.size() <= 2);
});

/**
 * A workspace speaking raw HTTP/1.1: `answers[path]` is written for that path (a function may write
 * later, or not at all), anything else gets its path back. Counts requests by "METHOD path".
 */
async function scripted(answers: Record<string, string | ((socket: net.Socket) => void)>) {
  const seen: string[] = [];
  let connections = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    onRequests(socket, (method, path) => {
      seen.push(`${method} ${path}`);
      const answer = answers[path];
      if (typeof answer === 'function') answer(socket);
      else socket.write(answer ?? `HTTP/1.1 200 OK\r\ncontent-length: ${path.length}\r\n\r\n${path}`);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port, seen, connections: () => connections,
    close: () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}

interface Outcome { status: number; body: string; framing: Framing }
/** One request through the pool: its outcome, or a rejection whose message is the pool's failure code. */
function exchange(pool: UpstreamPool, port: number, method: string, path: string, body?: string) {
  let resolve!: (o: Outcome) => void;
  let reject!: (e: Error) => void;
  const done = new Promise<Outcome>((res, rej) => { resolve = res; reject = rej; });
  let status = 0;
  let framing: Framing = 'none';
  let text = '';
  const sink: ResponseSink = {
    head(s, _text, _fields, f) { status = s; framing = f; },
    data(chunk) { text += chunk.toString('latin1'); return true; },
    end() { resolve({ status, body: text, framing }); },
    fail(code) { reject(new Error(code)); },
    drain() { /* small bodies */ },
    flush() { /* nothing held */ },
  };
  const head = `${method} ${path} HTTP/1.1\r\nhost: x\r\n${body !== undefined ? `content-length: ${body.length}\r\n` : ''}`;
  const ex = pool.send({ host: '127.0.0.1', port }, { method, head, body: body !== undefined ? 'length' : 'none' }, sink);
  if (body !== undefined) { ex.body(Buffer.from(body, 'latin1')); ex.end(); }
  return { ex, done };
}

t.test('a GET that timed out on a reused connection is not sent again', async (t) => {
  // The workspace got it and is still at it: sending it again doubles both its work and the client's wait.
  const up = await scripted({ '/never': () => undefined });
  const pool = createUpstreamPool({ connectTimeoutMs: 1000, responseTimeoutMs: 300, maxSockets: 1, idleMs: 4000 });
  t.teardown(async () => { pool.close(); await up.close(); });
  await exchange(pool, up.port, 'GET', '/warm').done;
  await t.rejects(exchange(pool, up.port, 'GET', '/never').done, { message: 'UPSTREAM_TIMEOUT' });
  t.same(up.seen, ['GET /warm', 'GET /never'], 'sent once');
});

t.test('an idle connection the sweep has just closed is not handed to the next request', async (t) => {
  // The sweep closes it in the timers phase; its 'close' comes a phase later, and a request read in
  // between took it from the idle list: a POST then failed with UPSTREAM_UNREACHABLE (a GET was retried).
  const up = await scripted({});
  const pool = createUpstreamPool({ connectTimeoutMs: 1000, responseTimeoutMs: 1000, maxSockets: 2, idleMs: 4000 });
  t.teardown(async () => { pool.close(); await up.close(); });
  await exchange(pool, up.port, 'GET', '/warm').done;
  pool.expire(Date.now() + 60_000);
  t.same(await exchange(pool, up.port, 'POST', '/save', 'data').done, { status: 200, body: '/save', framing: 'length' });
});

t.test('a 101 to a plain request is a bad response, not an unreachable workspace', async (t) => {
  const up = await scripted({ '/switch': 'HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n' });
  const pool = createUpstreamPool({ connectTimeoutMs: 1000, responseTimeoutMs: 1000, maxSockets: 1, idleMs: 4000 });
  t.teardown(async () => { pool.close(); await up.close(); });
  await t.rejects(exchange(pool, up.port, 'GET', '/switch').done, { message: 'UPSTREAM_BAD_RESPONSE' });
  t.same((await exchange(pool, up.port, 'GET', '/next').done).body, '/next', 'the next request goes on a new connection');
});

t.test('a queued request whose client left is never sent, and its turn goes to the next', async (t) => {
  let release!: () => void;
  const up = await scripted({ '/slow': (s) => { release = () => s.write('HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n/slow'); } });
  const pool = createUpstreamPool({ connectTimeoutMs: 1000, responseTimeoutMs: 2000, maxSockets: 1, idleMs: 4000 });
  t.teardown(async () => { pool.close(); await up.close(); });
  const slow = exchange(pool, up.port, 'GET', '/slow');
  const gone = exchange(pool, up.port, 'GET', '/gone');
  const next = exchange(pool, up.port, 'GET', '/next');
  gone.ex.abort();
  await new Promise((r) => setTimeout(r, 50));
  release();
  t.same([(await slow.done).body, (await next.done).body], ['/slow', '/next']);
  t.same(up.seen, ['GET /slow', 'GET /next'], 'the abandoned request never reached the workspace');
  t.equal(up.connections(), 1);
});

t.test("the workspace's Connection: close with requests queued: they go on a new connection", async (t) => {
  const up = await scripted({ '/closing': 'HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok' });
  const pool = createUpstreamPool({ connectTimeoutMs: 1000, responseTimeoutMs: 2000, maxSockets: 1, idleMs: 4000 });
  t.teardown(async () => { pool.close(); await up.close(); });
  const all = await Promise.all(['/closing', '/a', '/closing', '/b'].map((p) => exchange(pool, up.port, 'GET', p).done));
  t.same(all.map((a) => a.body), ['ok', '/a', 'ok', '/b']);
  t.equal(up.connections(), 3, 'a new connection after each close');
});

t.test('no body where none can follow (HEAD, 204, 304) whatever Content-Length says; the connection goes on', async (t) => {
  const up = await scripted({
    '/head': 'HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n',
    '/204': 'HTTP/1.1 204 No Content\r\ncontent-length: 10\r\n\r\n',
    '/304': 'HTTP/1.1 304 Not Modified\r\ncontent-length: 1000\r\netag: "x"\r\n\r\n',
    '/continue': 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nsent',
    '/hints': 'HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal',
  });
  const pool = createUpstreamPool({ connectTimeoutMs: 1000, responseTimeoutMs: 1000, maxSockets: 1, idleMs: 4000 });
  t.teardown(async () => { pool.close(); await up.close(); });
  t.same(await exchange(pool, up.port, 'HEAD', '/head').done, { status: 200, body: '', framing: 'none' });
  t.same(await exchange(pool, up.port, 'GET', '/204').done, { status: 204, body: '', framing: 'none' });
  t.same(await exchange(pool, up.port, 'GET', '/304').done, { status: 304, body: '', framing: 'none' });
  t.same(await exchange(pool, up.port, 'POST', '/continue', 'body').done, { status: 200, body: 'sent', framing: 'length' }, '100 is interim');
  t.same(await exchange(pool, up.port, 'GET', '/hints').done, { status: 200, body: 'final', framing: 'length' }, '103 is interim');
  t.same(await exchange(pool, up.port, 'GET', '/after').done, { status: 200, body: '/after', framing: 'length' });
  t.equal(up.connections(), 1, 'all on one connection');
});

t.test('a connection lost after part of a response: the request fails, and is not sent again', async (t) => {
  const cut = (s: net.Socket) => { s.write('HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial'); setTimeout(() => s.destroy(), 20); };
  const up = await scripted({ '/get-cut': cut, '/post-cut': cut, '/head-cut': (s) => { s.write('HTTP/1.1 200 OK\r\ncontent-le'); setTimeout(() => s.destroy(), 20); } });
  const pool = createUpstreamPool({ connectTimeoutMs: 1000, responseTimeoutMs: 1000, maxSockets: 1, idleMs: 4000 });
  t.teardown(async () => { pool.close(); await up.close(); });
  await exchange(pool, up.port, 'GET', '/warm').done;
  await t.rejects(exchange(pool, up.port, 'GET', '/get-cut').done, { message: 'UPSTREAM_UNREACHABLE' });
  await exchange(pool, up.port, 'GET', '/warm').done;
  await t.rejects(exchange(pool, up.port, 'POST', '/post-cut', 'x').done, { message: 'UPSTREAM_UNREACHABLE' });
  await exchange(pool, up.port, 'GET', '/warm').done;
  await t.rejects(exchange(pool, up.port, 'GET', '/head-cut').done, { message: 'UPSTREAM_UNREACHABLE' });
  t.same(up.seen, ['GET /warm', 'GET /get-cut', 'GET /warm', 'POST /post-cut', 'GET /warm', 'GET /head-cut'], 'each sent once');
});

t.test('no entry left for a workspace once its connections are gone', async (t) => {
  const up = await scripted({});
  const pool = createUpstreamPool({ connectTimeoutMs: 1000, responseTimeoutMs: 1000, maxSockets: 2, idleMs: 100 });
  t.teardown(async () => { pool.close(); await up.close(); });
  const pools = (pool as unknown as { pools: Map<string, unknown> }).pools;
  await Promise.all([exchange(pool, up.port, 'GET', '/a').done, exchange(pool, up.port, 'GET', '/b').done, exchange(pool, up.port, 'GET', '/c').done]);
  await t.rejects(exchange(pool, 1, 'GET', '/nothing-there').done, { message: 'UPSTREAM_UNREACHABLE' });
  t.ok(pools.size >= 1);
  for (let i = 0; i < 100 && (pool.size() > 0 || pools.size > 0); i++) await new Promise((r) => setTimeout(r, 20));
  t.same([pool.size(), pools.size], [0, 0]);
});

t.test('a queued request times out like a sent one: the connections it waits for may never come free', async (t) => {
  // A download the client has stopped reading holds the only connection.
  const up = await scripted({ '/stalled': (s) => { s.write(`HTTP/1.1 200 OK\r\ncontent-length: ${1 << 30}\r\n\r\n`); const c = Buffer.alloc(64 * 1024); const pump = () => { while (!s.destroyed && s.write(c)); }; s.on('drain', pump); pump(); } });
  const pool = createUpstreamPool({ connectTimeoutMs: 1000, responseTimeoutMs: 300, maxSockets: 1, idleMs: 4000 });
  t.teardown(async () => { pool.close(); await up.close(); });
  const stalled = pool.send({ host: '127.0.0.1', port: up.port }, { method: 'GET', head: 'GET /stalled HTTP/1.1\r\nhost: x\r\n', body: 'none' }, {
    head() { /* started */ }, data() { return false; }, end() { /* never */ }, fail() { /* cut at teardown */ }, drain() { /* none */ }, flush() { /* none */ },
  });
  t.teardown(() => stalled.abort());
  const queued = exchange(pool, up.port, 'GET', '/queued').done;
  const outcome = await Promise.race([queued.then(() => 'answered', (e: Error) => e.message), new Promise((r) => setTimeout(() => r('still waiting'), 3000))]);
  t.equal(outcome, 'UPSTREAM_TIMEOUT');
});

t.test('a queued request: UPSTREAM_TIMEOUT bounds its wait for a connection and for the response together, from its arrival', async (t) => {
  // README: UPSTREAM_TIMEOUT is the wait for a free connection or for the response head. A queued request
  // used to get a fresh limit for its response once a connection came free: up to twice the limit.
  // The only connection is held for half the limit; each row says when the queued request is answered.
  const LIMIT = 1000;
  const rows: Array<[name: string, answerAfterMs: number | undefined, witnessMs: number, expect: string]> = [
    ['answered within the limit of its arrival', LIMIT * 0.2, LIMIT * 3, 'answered'],
    ['answered 1.2 limits after arrival, within a limit of getting the connection', LIMIT * 0.7, LIMIT * 3, 'UPSTREAM_TIMEOUT'],
    ['never answered: fails before 1.25 limits (a fresh limit failed it at 1.5)', undefined, LIMIT * 1.25, 'UPSTREAM_TIMEOUT'],
  ];
  for (const [name, answerAfterMs, witnessMs, expect] of rows) {
    t.test(name, async (t) => {
      const timers = new Set<NodeJS.Timeout>();
      const later = (ms: number | undefined, s: net.Socket, path: string) => {
        if (ms !== undefined) timers.add(setTimeout(() => { if (!s.destroyed) s.write(`HTTP/1.1 200 OK\r\ncontent-length: ${path.length}\r\n\r\n${path}`); }, ms));
      };
      const up = await scripted({ '/holding': (s) => later(LIMIT * 0.5, s, '/holding'), '/queued': (s) => later(answerAfterMs, s, '/queued') });
      // A short connect timeout only makes the sweep look often (an eighth of the shortest timeout).
      const pool = createUpstreamPool({ connectTimeoutMs: 200, responseTimeoutMs: LIMIT, maxSockets: 1, idleMs: 4000 });
      t.teardown(async () => { for (const tm of timers) clearTimeout(tm); pool.close(); await up.close(); });
      const holding = exchange(pool, up.port, 'GET', '/holding').done;
      const queued = exchange(pool, up.port, 'GET', '/queued').done;
      let witnessed = false;
      const witness = setTimeout(() => { witnessed = true; }, witnessMs);
      t.teardown(() => clearTimeout(witness));
      t.equal((await holding).body, '/holding', 'the first request, within its limit');
      const outcome = await Promise.race([queued.then(() => 'answered', (e: Error) => e.message), new Promise((r) => setTimeout(() => r('still waiting'), LIMIT * 3))]);
      t.equal(outcome, expect);
      t.ok(!witnessed, 'settled before the witness');
      t.same(up.seen, ['GET /holding', 'GET /queued'], 'the queued request was sent once its turn came');
    });
  }
});

t.test('a queued request whose body arrives while it waits: UPSTREAM_TIMEOUT runs from the body\'s last piece, not from its arrival', async (t) => {
  // README: UPSTREAM_TIMEOUT runs "from the request's arrival (or its body's last piece)", and a piece
  // sent after the connection came free already restarts it. A piece that came while the request was
  // queued did not: a slow upload to a busy workspace got 504 before the limit had run from its last
  // piece (the connection came free at 0.6 limits, the head was due at 1 limit from arrival).
  const LIMIT = 1000;
  for (const mode of ['length', 'chunked'] as const) {
    t.test(mode, async (t) => {
      const timers = new Set<NodeJS.Timeout>();
      const later = (ms: number, fn: () => void) => { timers.add(setTimeout(fn, ms)); };
      const answer = (s: net.Socket, path: string) => { if (!s.destroyed) s.write(`HTTP/1.1 200 OK\r\ncontent-length: ${path.length}\r\n\r\n${path}`); };
      // The workspace answers the upload 0.7 limits after it has it all: 1.3 limits after its arrival,
      // 0.8 after its last piece.
      const server = net.createServer((s) => {
        s.on('error', () => undefined);
        let buffered = '';
        s.on('data', (d) => {
          buffered += d.toString('latin1');
          if (buffered.startsWith('GET /holding') && buffered.includes('\r\n\r\n')) { buffered = buffered.slice(buffered.indexOf('\r\n\r\n') + 4); later(LIMIT * 0.6, () => answer(s, '/holding')); }
          if (buffered.startsWith('POST /upload') && (buffered.endsWith('\r\n\r\nabcd') || buffered.endsWith('0\r\n\r\n'))) { buffered = ''; later(LIMIT * 0.7, () => answer(s, '/upload')); }
        });
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const port = (server.address() as AddressInfo).port;
      const pool = createUpstreamPool({ connectTimeoutMs: 200, responseTimeoutMs: LIMIT, maxSockets: 1, idleMs: 4000 });
      t.teardown(async () => { for (const tm of timers) clearTimeout(tm); pool.close(); server.close(); });
      const holding = exchange(pool, port, 'GET', '/holding').done;
      let resolve!: (o: string) => void;
      const outcome = new Promise<string>((r) => { resolve = r; });
      const head = `POST /upload HTTP/1.1\r\nhost: x\r\n${mode === 'length' ? 'content-length: 4\r\n' : ''}`;
      const ex = pool.send({ host: '127.0.0.1', port }, { method: 'POST', head, body: mode }, {
        head() { /* the status is not the point */ }, data() { return true; }, end() { resolve('answered'); }, fail(code) { resolve(code); },
        drain() { /* small body */ }, flush() { /* nothing held */ },
      });
      ex.body(Buffer.from('ab'));
      // The last piece half a limit after the request's arrival, while it still waits for the connection.
      later(LIMIT * 0.5, () => { ex.body(Buffer.from('cd')); ex.end(); });
      t.equal((await holding).body, '/holding');
      t.equal(await Promise.race([outcome, new Promise<string>((r) => { later(LIMIT * 3, () => r('still waiting')); })]), 'answered');
    });
  }
});

t.test('a queued request past its deadline when a connection comes free, the sweep not yet round: failed, not sent, the connection kept', async (t) => {
  // Sent, its response would be due at once and the sweep would close the connection under it. The
  // clock is moved past the deadline as the connection comes free (the pool reads Date.now()), once
  // the first response's head is in: its body has no deadline, so no sweep can cut it meanwhile.
  let release!: () => void;
  const up = await scripted({ '/holding': (s) => { s.write('HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n/hol'); release = () => s.write('ding'); } });
  const pool = createUpstreamPool({ connectTimeoutMs: 1000, responseTimeoutMs: 60_000, maxSockets: 1, idleMs: 120_000 });
  const realNow = Date.now;
  t.teardown(async () => { Date.now = realNow; pool.close(); await up.close(); });
  let headIn!: () => void;
  const head = new Promise<void>((r) => { headIn = r; });
  const holding = new Promise<void>((resolve, reject) => {
    pool.send({ host: '127.0.0.1', port: up.port }, { method: 'GET', head: 'GET /holding HTTP/1.1\r\nhost: x\r\n', body: 'none' }, {
      head() { headIn(); }, passHead() { headIn(); }, data() { return true; }, end() { resolve(); }, fail(code) { reject(new Error(code)); }, drain() { /* none */ }, flush() { /* none */ },
    });
  });
  const queued = exchange(pool, up.port, 'GET', '/queued').done.then(() => 'answered', (e: Error) => e.message);
  await head;
  Date.now = () => realNow() + 61_000;
  release();
  await holding;
  t.equal(await queued, 'UPSTREAM_TIMEOUT');
  Date.now = realNow;
  t.equal((await exchange(pool, up.port, 'GET', '/next').done).body, '/next');
  t.same(up.seen, ['GET /holding', 'GET /next'], 'the late request never reached the workspace');
  t.equal(up.connections(), 1, 'the connection it would have been sent on serves the next request');
});

t.test('a queued request whose deadline passes while its new connection proves itself: failed at it, never sent, the proven connection kept', async (t) => {
  // As for a kept connection coming free late (nextInTime): sent once proven, its response would be due
  // at once, and the sweep closed the fresh proven connection under it, with the workspace at work on it.
  const LIMIT = 1000;
  const timers = new Set<NodeJS.Timeout>();
  const later = (ms: number, fn: () => void) => { timers.add(setTimeout(fn, ms)); };
  const seen: string[] = [];
  let connections = 0;
  const server = net.createServer((s) => {
    // The first connection proves itself at once; the second, 0.8 limits late (a busy workspace).
    const proofDelay = connections++ === 0 ? 0 : LIMIT * 0.8;
    s.on('error', () => undefined);
    onRequests(s, (method, path, head) => {
      if (method === 'OPTIONS') {
        const nonce = new RegExp(`\\r\\n${CHALLENGE_FIELD}: *([^\\r]*)`, 'i').exec(head)![1];
        later(proofDelay, () => { if (!s.destroyed) s.write(`HTTP/1.1 204 No Content\r\n${PROOF_FIELD}: ${proof('k', 'alice', nonce)}\r\n\r\n`); });
        return;
      }
      seen.push(`${method} ${path}`);
      // The first request's answer closes its connection half a limit in: the queued one gets a new one.
      if (path === '/closing') later(LIMIT * 0.5, () => { s.end('HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 8\r\n\r\n/closing'); });
      else s.write(`HTTP/1.1 200 OK\r\ncontent-length: ${path.length}\r\n\r\n${path}`);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const endpoint = { host: '127.0.0.1', port: (server.address() as AddressInfo).port, proves: true as const, claim: { workspaceId: 'alice', key: 'k' } };
  const pool = createUpstreamPool({ connectTimeoutMs: 2 * LIMIT, responseTimeoutMs: LIMIT, maxSockets: 1, idleMs: 4 * LIMIT });
  t.teardown(async () => { for (const tm of timers) clearTimeout(tm); pool.close(); await new Promise<void>((r) => { server.close(() => r()); }); });
  const send = (path: string) => new Promise<string>((resolve) => {
    let body = '';
    pool.send(endpoint, { method: 'GET', head: `GET ${path} HTTP/1.1\r\nhost: x\r\n`, body: 'none' }, {
      head() { /* status */ }, data(c) { body += c.toString(); return true; }, end() { resolve(body); }, fail(code) { resolve(code); }, drain() { /* none */ }, flush() { /* none */ },
    });
  });
  const closing = send('/closing');
  const queued = send('/queued');
  t.equal(await closing, '/closing');
  t.equal(await queued, 'UPSTREAM_TIMEOUT', 'due one limit from its arrival');
  // Once the second connection has proven itself, it serves the next request.
  await new Promise((r) => { later(LIMIT * 0.5, () => r(undefined)); });
  t.equal(await send('/next'), '/next');
  t.same(seen, ['GET /closing', 'GET /next'], 'the late request never reached the workspace');
  t.equal(connections, 2, 'the connection proven for it serves the next request');
});

t.test('bytes behind a response, with a request queued: the queued one goes on a new connection, answered', async (t) => {
  // The connection that sent them is spent; the request queued for it must not be written to it and lost with it.
  const up = await scripted({
    '/overrun': 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA BYTES NOBODY ASKED FOR',
    '/chunked-overrun': 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nEXTRA BYTES NOBODY ASKED FOR',
    '/answered-twice': 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nWRONG',
  });
  const pool = createUpstreamPool({ connectTimeoutMs: 1000, responseTimeoutMs: 1000, maxSockets: 1, idleMs: 4000 });
  t.teardown(async () => { pool.close(); await up.close(); });
  for (const path of ['/overrun', '/chunked-overrun', '/answered-twice']) {
    const first = exchange(pool, up.port, 'GET', path).done;
    const queued = exchange(pool, up.port, 'POST', '/save', 'data').done;
    const outcomes = await Promise.all([first, queued].map((p) => p.then((o) => o.body, (e: Error) => e.message)));
    t.same(outcomes, ['ok', '/save'], path);
  }
});

t.test('any 1xx is interim (RFC 9110 15.2), not only the ones llhttp knows to have no content', async (t) => {
  // llhttp ends 100, 102 and 103 at their head; another 1xx it reads as a body until the close.
  const up = await scripted({ '/104': 'HTTP/1.1 104 Upload Resumption Supported\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok' });
  const pool = createUpstreamPool({ connectTimeoutMs: 1000, responseTimeoutMs: 1000, maxSockets: 1, idleMs: 4000 });
  t.teardown(async () => { pool.close(); await up.close(); });
  const outcome = await exchange(pool, up.port, 'GET', '/104').done.then((o) => o, (e: Error) => e.message);
  t.same(outcome, { status: 200, body: 'ok', framing: 'length' });
  t.same(await exchange(pool, up.port, 'GET', '/after').done, { status: 200, body: '/after', framing: 'length' });
  t.equal(up.connections(), 1);
});

t.test('a response that began before the request body ended is not cut by the response timeout', async (t) => {
  // The workspace answers as soon as the head is in, and takes longer than the timeout to send its body.
  const server = net.createServer((socket) => {
    socket.on('error', () => undefined);
    socket.once('data', () => {
      socket.write('HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfirst');
      setTimeout(() => socket.write('-last'), 800);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const pool = createUpstreamPool({ connectTimeoutMs: 1000, responseTimeoutMs: 300, maxSockets: 1, idleMs: 4000 });
  t.teardown(async () => { pool.close(); await new Promise<void>((r) => { server.close(() => r()); }); });
  let headAt: (() => void) | undefined;
  const headSeen = new Promise<void>((r) => { headAt = r; });
  const outcome = new Promise<string>((resolve) => {
    let body = '';
    const ex = pool.send({ host: '127.0.0.1', port }, { method: 'POST', head: 'POST /duplex HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n', body: 'length' }, {
      head() { headAt!(); }, passHead() { headAt!(); },
      data(c) { body += c.toString(); return true; }, end() { resolve(body); }, fail(code) { resolve(code); }, drain() { /* small */ }, flush() { /* none */ },
    });
    void headSeen.then(() => { ex.body(Buffer.from('data')); ex.end(); });
  });
  t.equal(await outcome, 'first-last');
});
