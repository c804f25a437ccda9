// Keep-alive races (issue 8): an upstream that closes idle connections after a short keep-alive
// timeout, and requests at intervals around it, 1,000 times. A reused socket closed at that moment
// is retried once for idempotent requests without a body: clients see zero errors.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import t from 'tap';
import { createMemoryStore } from '../gateway/store/memory.js';
import { systemClock } from '../gateway/clock.js';
import { request, startTestGateway } from './helpers/gateway.js';

const KEEPALIVE_MS = 40;

t.test('1,000 requests around the upstream keep-alive timeout: zero client errors', async (t) => {
  let connections = 0;
  let resets = 0;
  // When a request arrives on a reused connection that sat idle about as long as the timeout, the
  // upstream behaves as if its keep-alive timer fired at that very moment: it resets the connection
  // without answering. Loopback is too fast to hit that window by chance often enough.
  const lastEnd = new WeakMap<object, number>();
  const upstream = http.createServer((req, res) => {
    const idleSince = lastEnd.get(req.socket);
    if (idleSince !== undefined && Date.now() - idleSince >= KEEPALIVE_MS - 5) { resets++; req.socket.resetAndDestroy(); return; }
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(req.method === 'HEAD' ? undefined : 'ok');
    res.once('finish', () => lastEnd.set(req.socket, Date.now()));
  });
  // No `Keep-Alive: timeout=` hint: the pool would otherwise retire sockets before the upstream does
  // (undici honours the hint), and the race this test is about would never happen. Not every
  // upstream sends one; a proxy in front of the workspace may strip it.
  upstream.keepAliveTimeout = 0;
  upstream.on('connection', () => { connections++; });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { upstream.closeAllConnections(); upstream.close(() => r()); }));

  const store = createMemoryStore(systemClock);
  const now = Date.now();
  await store.putWorkspace({ id: 'ka', state: 'running', generation: 1, since: now, startedAt: now, endpoint: { host: '127.0.0.1', port: (upstream.address() as AddressInfo).port } });
  const gw = await startTestGateway({ store });
  t.teardown(() => gw.close());
  const cookie = await gw.cookie('ka');
  const client = new http.Agent({ keepAlive: true, maxSockets: 8 });
  t.teardown(() => client.destroy());

  const statuses = new Map<string, number>();
  const methods = ['GET', 'HEAD', 'OPTIONS', 'DELETE'];
  // 8 loops of 125 requests; each waits a little under, at, or a little over the upstream's timeout.
  await Promise.all(Array.from({ length: 8 }, async (_, loop) => {
    for (let i = 0; i < 125; i++) {
      const wait = KEEPALIVE_MS + ((i * 7 + loop * 3) % 13) - 6;
      await new Promise((r) => setTimeout(r, wait));
      const method = methods[(i + loop) % methods.length];
      const r = await request(gw.port, { host: 'ws-ka.localhost', method, path: `/r${i}`, headers: { cookie }, agent: client })
        .then((x) => String(x.status), (err: Error) => `client error: ${err.message}`);
      statuses.set(r, (statuses.get(r) ?? 0) + 1);
    }
  }));
  t.same(Object.fromEntries(statuses), { 200: 1000 }, 'every request answered 200');
  t.ok(resets > 0, `the upstream reset reused connections ${resets} times (${connections} connections)`);
});
