// The upstream pool reads every workspace connection into one buffer (net's `onread`,
// gateway/upstream-pool.ts), so a response sink that kept a chunk instead of a copy would send bytes
// that a later read, of this response or of another workspace's, had overwritten. Large bodies of
// different content, in every framing, at once, to clients that stop reading for a while, must
// arrive byte for byte: on the warm lane and on node:http's path. 16 MB, more than loopback's socket
// buffers hold, so the gateway's writes queue (with 3 MB every write completed at once and a sink
// without its copy passed; with 16 MB it fails).
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import t from 'tap';
import { XHR, startTestGateway } from './helpers/gateway.js';
import { registerRunning } from './helpers/upstream.js';

const SIZE = 16 * 1024 * 1024;
const FRAMINGS = ['length', 'chunked', 'close'] as const;

/** Distinct content per seed: a repeated byte would hide an overwritten chunk. */
function body(seed: number): Buffer {
  const out = Buffer.allocUnsafe(SIZE);
  let x = seed * 2654435761 >>> 0;
  for (let i = 0; i < SIZE; i++) { x = (x * 1103515245 + 12345) >>> 0; out[i] = x >>> 24; }
  return out;
}
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function bodyUpstream() {
  const bodies = new Map<number, Buffer>();
  const server = http.createServer((req, res) => {
    const [, seedText, framing] = (req.url ?? '').split('/');
    const seed = Number(seedText);
    const b = bodies.get(seed) ?? body(seed);
    bodies.set(seed, b);
    if (framing === 'length') res.setHeader('content-length', SIZE);
    if (framing === 'close') { res.setHeader('connection', 'close'); res.useChunkedEncodingByDefault = false; }
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    // In pieces of odd sizes, so reads end anywhere.
    for (let at = 0; at < SIZE; at += 70_001) res.write(b.subarray(at, Math.min(SIZE, at + 70_001)));
    res.end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as AddressInfo).port, bodies, close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }) };
}

/** GET with a client that stops reading for `stallMs` after the first bytes; the whole body's sha256. */
function fetchSlowly(port: number, path: string, headers: Record<string, string>, agent: http.Agent | false, stallMs: number): Promise<{ status: number; sha: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, agent, headers, setHost: false }, (res) => {
      const hash = createHash('sha256');
      let bytes = 0;
      let stalled = false;
      res.on('data', (c: Buffer) => {
        hash.update(c);
        bytes += c.length;
        if (!stalled) { stalled = true; res.pause(); setTimeout(() => res.resume(), stallMs); }
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, sha: hash.digest('hex'), bytes }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

t.test('large bodies at once, read slowly, arrive intact on both paths', async (t) => {
  const up = await bodyUpstream();
  const gw = await startTestGateway();
  t.teardown(async () => { await gw.close(); await up.close(); });
  await registerRunning(gw.store, 'bodies', up.port);
  const cookie = await gw.cookie('bodies');
  const host = 'ws-bodies.localhost';
  const agents = FRAMINGS.map(() => new http.Agent({ keepAlive: true, maxSockets: 1 }));
  t.teardown(() => { for (const a of agents) a.destroy(); });
  // The first request verifies the cookie on node:http's path, which closes that connection after its
  // answer; the agent's next connection starts on the warm lane and stays there, kept alive. Counting
  // right after the first request alone raced that close (0 lanes in one CI run).
  for (const round of [0, 1]) {
    await Promise.all(agents.map((agent, i) => fetchSlowly(gw.port, `/${100 + 10 * round + i}/length`, { host, cookie, ...XHR }, agent, 0)));
  }
  const lanesBefore = gw.gateway.laneConnections();
  t.equal(lanesBefore, agents.length, `each kept-alive connection on the warm lane (${lanesBefore})`);

  const jobs: Array<Promise<void>> = [];
  FRAMINGS.forEach((framing, i) => {
    const seeds = [i + 1, i + 11];
    // Warm lane: kept-alive, one connection per framing.
    jobs.push(fetchSlowly(gw.port, `/${seeds[0]}/${framing}`, { host, cookie, ...XHR }, agents[i], 400 + 50 * i).then((r) => {
      t.same([r.status, r.bytes, r.sha], [200, SIZE, sha(up.bodies.get(seeds[0])!)], `warm lane, ${framing}: intact`);
    }));
    // node:http's path: Connection: close keeps a request off the lane.
    jobs.push(fetchSlowly(gw.port, `/${seeds[1]}/${framing}`, { host, cookie, connection: 'close', ...XHR }, false, 450 + 50 * i).then((r) => {
      t.same([r.status, r.bytes, r.sha], [200, SIZE, sha(up.bodies.get(seeds[1])!)], `node:http's path, ${framing}: intact`);
    }));
  });
  await Promise.all(jobs);
});
