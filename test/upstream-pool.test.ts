// The upstream pool on its own (gateway/upstream-pool.ts): connections reused, kept within
// maxSockets, and never handed to the next request in a state that cannot read its answer.
import net, { type AddressInfo } from 'node:net';
import t from 'tap';
import { createUpstreamPool, type Framing, type ResponseSink, type UpstreamPool } from '../gateway/upstream-pool.js';

/** Answers every request with its path as the body; counts connections. */
async function pathEcho() {
  let connections = 0;
  const server = net.createServer((socket) => {
    connections++;
    let buffered = '';
    socket.on('data', (d) => {
      buffered += d.toString('latin1');
      for (let end = buffered.indexOf('\r\n\r\n'); end !== -1; end = buffered.indexOf('\r\n\r\n')) {
        const path = buffered.slice(0, end).split(' ')[1];
        buffered = buffered.slice(end + 4);
        socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${path.length}\r\n\r\n${path}`);
      }
    });
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
