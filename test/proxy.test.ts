// Forwarding through a real gateway to the real demo workspace process (issue 2).
import http from 'node:http';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Readable } from 'node:stream';
import t from 'tap';
import { NAVIGATE, request, startTestGateway, waitRunning } from './helpers/gateway.js';
import { closed, connected, nextMessage, openWs } from './helpers/ws.js';

const tcpHandles = () => process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap').length;

/** Resolves once the event loop has had a few turns (closes are asynchronous). */
const settle = async () => { for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r)); };

t.test('proxying', async (t) => {
  const gw = await startTestGateway();
  t.teardown(() => gw.close());
  const cookie = await gw.cookie('demo');
  const first = await request(gw.port, { headers: { ...NAVIGATE, cookie } });
  t.equal(first.status, 200);
  t.equal(first.headers['x-gateway-cold-start'], '1');
  t.match(first.body, /Starting your workspace/);
  t.equal((await waitRunning(gw.port, cookie)).state, 'running');
  const baseline = tcpHandles();

  t.test('all methods, headers rewritten, client forwarding headers replaced', async (t) => {
    for (const method of ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']) {
      const r = await request(gw.port, {
        method, path: '/headers', body: method === 'GET' || method === 'OPTIONS' ? undefined : 'x',
        headers: {
          cookie: `${cookie}; theirs=1`, 'x-forwarded-for': '6.6.6.6', forwarded: 'for=6.6.6.6', 'x-real-ip': '6.6.6.6',
          connection: 'keep-alive, x-secret-hop', 'x-secret-hop': 'drop me', 'x-kept': 'yes',
        },
      });
      t.equal(r.status, 200, method);
      const seen = JSON.parse(r.body) as { method: string; headers: Record<string, string> };
      t.equal(seen.method, method);
      t.equal(seen.headers.host, 'ws-demo.localhost', 'the browser Host is kept');
      t.equal(seen.headers['x-forwarded-for'], '127.0.0.1');
      t.equal(seen.headers['x-forwarded-host'], 'ws-demo.localhost');
      t.equal(seen.headers['x-forwarded-proto'], 'http');
      t.equal(seen.headers.forwarded, undefined);
      t.equal(seen.headers['x-real-ip'], undefined);
      t.equal(seen.headers['x-secret-hop'], undefined, 'fields named in Connection are dropped');
      t.equal(seen.headers['x-kept'], 'yes');
      t.equal(seen.headers.cookie, 'theirs=1', 'the gateway cookie never reaches the workspace');
      t.ok(r.headers['x-request-id']);
    }
  });

  t.test('50 MB streamed both ways without holding them', async (t) => {
    const size = 50 * 1024 * 1024;
    // Live buffer memory, sampled after a forced GC, so garbage awaiting collection is not counted.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    gc();
    const before = process.memoryUsage().arrayBuffers;
    let peak = before;
    const sample = setInterval(() => { gc(); peak = Math.max(peak, process.memoryUsage().arrayBuffers); }, 50);
    const up = await new Promise<{ bytes: number }>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: gw.port, method: 'PUT', path: '/upload', setHost: false, agent: false, headers: { host: 'ws-demo.localhost', cookie, 'transfer-encoding': 'chunked' } }, (res) => {
        let s = '';
        res.on('data', (c) => { s += c; });
        res.on('end', () => resolve(JSON.parse(s)));
      });
      req.on('error', reject);
      const chunk = Buffer.alloc(256 * 1024, 1);
      let sent = 0;
      Readable.from((function* () { while (sent < size) { sent += chunk.length; yield chunk; } })()).pipe(req);
    });
    t.equal(up.bytes, size, 'upload arrived whole');
    const down = await new Promise<number>((resolve, reject) => {
      http.get({ host: '127.0.0.1', port: gw.port, path: `/download?bytes=${size}`, setHost: false, agent: false, headers: { host: 'ws-demo.localhost', cookie } }, (res) => {
        let n = 0;
        res.on('data', (c: Buffer) => { n += c.length; });
        res.on('end', () => resolve(n));
      }).on('error', reject);
    });
    clearInterval(sample);
    t.equal(down, size, 'download arrived whole');
    t.ok(peak - before < 40 * 1024 * 1024, `live buffers grew ${Math.round((peak - before) / 1e6)} MB, below the 50 MB each way that holding a body whole would take`);
  });

  t.test('server-sent events arrive as a stream', async (t) => {
    const events = await new Promise<string[]>((resolve) => {
      http.get({ host: '127.0.0.1', port: gw.port, path: '/sse?count=3', setHost: false, agent: false, headers: { host: 'ws-demo.localhost', cookie, accept: 'text/event-stream' } }, (res) => {
        const got: string[] = [];
        res.setEncoding('utf8');
        res.on('data', (c: string) => { for (const m of c.matchAll(/data: (.*)/g)) got.push(m[1]); });
        res.on('end', () => resolve(got));
      });
    });
    t.same(events, ['event 1', 'event 2', 'event 3']);
  });

  t.test('WebSocket text and binary both ways, close codes passed through', async (t) => {
    const ws = await connected(openWs(gw.port, '/echo', { cookie }));
    ws.send('hello');
    const text = await nextMessage(ws);
    t.equal(text.data.toString(), 'hello');
    t.equal(text.isBinary, false);
    ws.send(Buffer.from([0, 1, 2, 255]));
    const bin = await nextMessage(ws);
    t.same([...bin.data], [0, 1, 2, 255]);
    t.equal(bin.isBinary, true);
    const big = Buffer.alloc(1024 * 1024, 7);
    ws.send(big);
    t.equal((await nextMessage(ws)).data.length, big.length);
    ws.send('close-me');
    t.same(await closed(ws), { code: 4001, reason: 'closing as asked' });
    const ws2 = await connected(openWs(gw.port, '/echo', { cookie }));
    const c = closed(ws2);
    ws2.close(4321, 'client says bye');
    t.equal((await c).code, 4321);
  });

  t.test('upstream refusing the upgrade, or answering it with plain HTTP', async (t) => {
    await t.rejects(connected(openWs(gw.port, '/refuse', { cookie })), { status: 403 } as never);
    await t.rejects(connected(openWs(gw.port, '/plain', { cookie })), { status: 200 } as never);
  });

  t.test('X-Forwarded-For from a trusted load balancer is believed, from anyone else replaced', async (t) => {
    const trusting = await startTestGateway({ env: { TRUSTED_PROXIES: '127.0.0.0/8' } });
    t.teardown(() => trusting.close());
    const c = await trusting.cookie('demo');
    await request(trusting.port, { headers: { ...NAVIGATE, cookie: c } });
    await waitRunning(trusting.port, c);
    const r = await request(trusting.port, { path: '/headers', headers: { cookie: c, 'x-forwarded-for': '6.6.6.6, 203.0.113.9' } });
    t.equal(JSON.parse(r.body).headers['x-forwarded-for'], '203.0.113.9', 'the right-most entry, the one the load balancer appended');
  });

  t.test('no sockets left behind', async (t) => {
    gw.gateway.closeUpstreams();
    await settle();
    await new Promise((r) => setTimeout(r, 100));
    t.ok(tcpHandles() <= baseline, `TCP handles ${tcpHandles()} <= ${baseline} before`);
    t.equal(gw.gateway.openWebSockets(), 0);
  });
});

t.test('upstream dying mid-request and mid-WebSocket', async (t) => {
  const gw = await startTestGateway();
  t.teardown(() => gw.close());
  const cookie = await gw.cookie('demo');
  await request(gw.port, { headers: { ...NAVIGATE, cookie } });
  await waitRunning(gw.port, cookie);
  const ws = await connected(openWs(gw.port, '/echo', { cookie }));
  const wsClosed = closed(ws);
  // A download in flight when the workspace process dies.
  const download = new Promise<{ error?: string; bytes: number }>((resolve) => {
    http.get({ host: '127.0.0.1', port: gw.port, path: `/download?bytes=${1024 * 1024 * 1024}`, setHost: false, agent: false, headers: { host: 'ws-demo.localhost', cookie } }, (res) => {
      let bytes = 0;
      res.once('data', () => {
        void gw.store.getWorkspace('demo').then((r) => process.kill(Number(r!.handle), 'SIGKILL'));
      });
      res.on('data', (c: Buffer) => { bytes += c.length; });
      res.on('error', (e) => resolve({ error: e.message, bytes }));
      res.on('end', () => resolve({ bytes }));
      res.on('close', () => resolve({ error: 'closed', bytes }));
    });
  });
  const d = await download;
  t.ok(d.error, 'the client sees the response cut, not a clean end');
  t.ok(d.bytes < 1024 * 1024 * 1024);
  const c = await wsClosed;
  t.ok(c.code === 1006 || c.code === 1011 || c.code === 1001, `browser socket closed (${c.code})`);
  t.equal(gw.gateway.openWebSockets(), 0);
  // The route is re-checked: the gone workspace becomes stopped, so the next page load starts it.
  const r = await request(gw.port, { path: '/', headers: { cookie, accept: 'application/json', 'sec-fetch-mode': 'cors' } });
  t.ok(r.status === 502 || r.status === 503, `then ${r.status}`);
  const stopped = await gw.gateway.workspaces.nextChange('demo', 5000).then(() => gw.store.getWorkspace('demo'));
  t.equal(stopped?.state, 'stopped');
  t.equal(stopped?.reasonCode, 'gone');
  const again = await request(gw.port, { headers: { ...NAVIGATE, cookie } });
  t.equal(again.headers['x-gateway-cold-start'], '1', 'the next page load starts it again');
  t.equal((await waitRunning(gw.port, cookie)).state, 'running');
  t.equal(gw.provisioner.starts.length, 2);
});
