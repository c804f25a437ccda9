// WebSocket promises of issue 8, with real faults: a workspace frozen with SIGSTOP, a workspace
// killed with SIGKILL, a quiet pair kept alive by pings that never count as activity, route changes
// of other workspaces, and the drain that closes with 1001.
import http from 'node:http';
import t from 'tap';

type Tap = Pick<typeof t, 'equal'>;
import WebSocket from 'ws';
import { FrameTracker, clientFrame, serverFrame } from '../gateway/ws-frames.js';
import { NAVIGATE, request, startTestGateway, until, waitRunning, type TestGateway } from './helpers/gateway.js';
import { closed, connected, nextMessage, openWs } from './helpers/ws.js';

const tcpHandles = () => process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap').length;
const settle = async () => { for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r)); };

async function startWorkspace(t: Tap, gw: TestGateway, id: string): Promise<string> {
  const cookie = await gw.cookie(id);
  const host = `ws-${id}.localhost`;
  await request(gw.port, { host, headers: { ...NAVIGATE, cookie } });
  t.equal((await waitRunning(gw.port, cookie, host)).state, 'running', `${id} running`);
  return cookie;
}

async function echo(ws: WebSocket, text: string): Promise<string> {
  const got = nextMessage(ws);
  ws.send(text);
  return (await got).data.toString();
}

const pidOf = async (gw: TestGateway, id: string) => Number((await gw.store.getWorkspace(id))!.handle);

t.test('frame tracker: boundaries across any split, control frames are not data', async (t) => {
  const frames = [
    { bytes: serverFrame(0x1, Buffer.from('hello')), data: true },
    { bytes: clientFrame(0x2, Buffer.alloc(100, 7)), data: true },
    { bytes: serverFrame(0x9), data: false }, // ping
    { bytes: clientFrame(0xa, Buffer.from('p')), data: false }, // pong
    { bytes: Buffer.concat([Buffer.from([0x82, 126, 0x01, 0x00]), Buffer.alloc(256)]), data: true }, // 16-bit length
    { bytes: Buffer.concat([Buffer.from([0x02, 127, 0, 0, 0, 0, 0, 1, 0, 0]), Buffer.alloc(65536)]), data: true }, // 64-bit, not FIN
    { bytes: Buffer.from([0x80, 0x00]), data: true }, // continuation, FIN
    { bytes: Buffer.concat([Buffer.from([0x82, 0x80 | 126, 0x01, 0x00, 1, 2, 3, 4]), Buffer.alloc(256)]), data: true }, // masked, 16-bit length
    { bytes: Buffer.concat([Buffer.from([0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0x01, 0x01, 9, 9, 9, 9]), Buffer.alloc(257)]), data: true }, // masked, 64-bit length
  ];
  for (const f of frames) {
    for (const split of [0, 1, 2, 3, 5, 9, f.bytes.length - 1]) {
      if (split < 0 || split >= f.bytes.length) continue;
      const tr = new FrameTracker();
      const a = tr.feed(f.bytes.subarray(0, split));
      if (split > 0) t.notOk(tr.atBoundary(), 'inside a frame');
      const b = tr.feed(f.bytes.subarray(split));
      t.ok(tr.atBoundary(), `boundary after the whole frame (split ${split})`);
      t.equal(a || b, f.data, `data=${f.data}`);
    }
  }
  const all = Buffer.concat(frames.map((f) => f.bytes));
  const ends: number[] = [];
  for (let i = 0, sum = 0; i < frames.length; i++) ends.push(sum += frames[i]!.bytes.length);
  for (const first of [0, 1, 3, 12]) {
    // Our own frames may go at any frame end inside a chunk (a read seldom ends at one).
    const tb = new FrameTracker();
    tb.feed(all.subarray(0, first));
    const got: number[] = [];
    for (let at = first; at < all.length;) { at = tb.feedToBoundary(all, at); got.push(at); }
    t.same(got, ends.filter((e) => e > first), `every frame end found from offset ${first}`);
  }
  const tr = new FrameTracker();
  tr.feed(all);
  t.ok(tr.atBoundary(), 'all frames in one chunk');
  tr.feed(Buffer.from([0x83, 0])); // reserved opcode
  t.notOk(tr.atBoundary(), 'a reserved opcode makes injection unsafe for good');
});

t.test('WebSocket faults through a real gateway and real workspace processes', async (t) => {
  const gw = await startTestGateway({ env: { WS_IDLE_TIMEOUT: '300ms' } });
  t.teardown(() => gw.close());
  const baseline = tcpHandles();

  t.test('a quiet pair is pinged, stays open, and pings are not activity', async (t) => {
    const cookie = await startWorkspace(t, gw, 'quiet');
    const ws = await connected(openWs(gw.port, '/echo', { cookie, host: 'ws-quiet.localhost' }));
    t.equal(await echo(ws, 'hi'), 'hi');
    await gw.gateway.activity.flush();
    const before = await gw.store.getActivity('quiet');
    // ws answers pings with pongs by itself (RFC 6455 5.5.2); wait for a few rounds.
    await new Promise<void>((resolve, reject) => {
      let n = 0;
      ws.on('ping', () => { if (++n === 4) resolve(); });
      ws.once('close', (code) => reject(new Error(`closed with ${code} after ${n} pings`)));
    });
    t.equal(ws.readyState, WebSocket.OPEN, 'still open after several idle periods');
    t.equal(await echo(ws, 'still here'), 'still here', 'frames still flow after injected pings');
    await gw.gateway.activity.flush();
    // Only the echo above could have moved it, and echo frames are not recorded per frame either.
    t.equal(await gw.store.getActivity('quiet'), before, 'pings and pongs never count as activity');
    ws.close();
    await closed(ws);
  });

  t.test('a frozen workspace (SIGSTOP): both sides closed after the no-traffic limit', async (t) => {
    const cookie = await startWorkspace(t, gw, 'frozen');
    const ws = await connected(openWs(gw.port, '/echo', { cookie, host: 'ws-frozen.localhost' }));
    t.equal(await echo(ws, 'x'), 'x');
    const pid = await pidOf(gw, 'frozen');
    process.kill(pid, 'SIGSTOP');
    t.teardown(() => { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } });
    let pinged = 0;
    ws.on('ping', () => { pinged++; });
    const c = await closed(ws);
    t.equal(c.code, 1001, 'closed with going away, which VS Code reconnects on');
    t.ok(pinged >= 1, 'the browser side was pinged and answered, yet the frozen side closed the pair');
    await until(() => gw.gateway.openWebSockets() === 0);
    t.pass('the pair is gone');
  });

  t.test('a workspace killed mid-WebSocket: closed with 1001, route re-checked, nothing left open', async (t) => {
    const cookie = await startWorkspace(t, gw, 'killed');
    const ws = await connected(openWs(gw.port, '/echo', { cookie, host: 'ws-killed.localhost' }));
    t.equal(await echo(ws, 'x'), 'x');
    const pid = await pidOf(gw, 'killed');
    process.kill(pid, 'SIGKILL');
    const c = await closed(ws);
    t.equal(c.code, 1001);
    // VS Code reconnects at once: refused (the workspace is gone), and that re-checks the route.
    const again = await connected(openWs(gw.port, '/echo', { cookie, host: 'ws-killed.localhost' })).then(() => 101, (e: { status?: number }) => e.status);
    t.equal(again, 502, 'the reconnect is refused with 502 while the workspace is gone');
    await until(async () => (await gw.store.getWorkspace('killed'))?.state === 'stopped');
    t.pass('marked stopped after the recheck, so the next page load starts it again');
    await until(() => gw.gateway.openWebSockets() === 0);
  });

  t.test("route changes of other workspaces never disturb ws-a's sockets", async (t) => {
    const cookie = await startWorkspace(t, gw, 'a');
    const sockets = await Promise.all([1, 2, 3].map(() => connected(openWs(gw.port, '/echo', { cookie, host: 'ws-a.localhost' }))));
    let closes = 0;
    for (const s of sockets) s.on('close', () => closes++);
    for (let round = 0; round < 2; round++) {
      await startWorkspace(t, gw, 'b');
      for (const s of sockets) t.equal(await echo(s, `r${round}`), `r${round}`);
      t.equal(await gw.gateway.workspaces.stop('b', async () => ({ reasonCode: 'idle', reason: 'reaped in a test' })), 'stopped');
      for (const s of sockets) t.equal(await echo(s, `s${round}`), `s${round}`);
    }
    t.equal(closes, 0, 'no socket of ws-a closed');
    for (const s of sockets) { s.close(); await closed(s); }
  });

  t.test('no sockets left behind', async (t) => {
    await settle();
    t.equal(gw.gateway.openWebSockets(), 0);
    // Upstream keep-alive pool aside, the test process holds no more TCP handles than before.
    for (let i = 0; i < 40 && tcpHandles() > baseline + gw.gateway.upstreamConnections(); i++) await new Promise((r) => setTimeout(r, 25));
    t.ok(tcpHandles() <= baseline + gw.gateway.upstreamConnections(), `tcp handles ${tcpHandles()} vs baseline ${baseline}`);
  });
});

t.test('drain: readiness false at once, new requests served, WebSockets closed with 1001', async (t) => {
  const gw = await startTestGateway();
  let closedGw = false;
  t.teardown(async () => { if (!closedGw) await gw.close(); });
  const cookie = await startWorkspace(t, gw, 'demo');
  const ws = await connected(openWs(gw.port, '/echo', { cookie }));
  const ready = () => new Promise<number>((resolve) => http.get({ host: '127.0.0.1', port: gw.adminPort, path: '/readyz' }, (r) => { r.resume(); resolve(r.statusCode ?? 0); }));
  t.equal(await ready(), 200);

  const draining = gw.gateway.close(60_000);
  t.equal(await ready(), 503, 'not ready from the first moment');
  const during = await request(gw.port, { path: '/headers', headers: { cookie } });
  t.equal(during.status, 200, 'a new connection is still served while the load balancer deregisters us');
  t.equal(during.headers.connection, 'close', 'and told not to keep the connection');
  t.equal(await echo(ws, 'during drain'), 'during drain', 'open WebSockets keep flowing during the drain period');

  // The drain ends as soon as the last WebSocket is gone (ECS deregistered us before SIGTERM).
  ws.close(1000);
  await closed(ws);
  await draining;
  closedGw = true;
  await gw.provisioner.close();
  await gw.store.close();
  t.pass('drain finished without waiting out the drain period');
});

t.test('drain period over: open WebSockets are closed with 1001 (going away)', async (t) => {
  const gw = await startTestGateway();
  const cookie = await startWorkspace(t, gw, 'demo');
  const sockets = await Promise.all([1, 2].map(() => connected(openWs(gw.port, '/echo', { cookie }))));
  // One socket mid-message: a large frame in flight must not be cut by the close frame.
  const big = Buffer.alloc(4 * 1024 * 1024, 1);
  const errors: Error[] = [];
  const lengths: number[] = [];
  for (const s of sockets) { s.on('error', (e) => errors.push(e)); s.on('message', (d: Buffer) => lengths.push(d.length)); }
  sockets[0].send(big);
  const codes = sockets.map((s) => closed(s));
  await gw.gateway.close(200);
  // A close frame injected inside a frame would be a protocol error (1002) on the client.
  t.same((await Promise.all(codes)).map((c) => c.code), [1001, 1001]);
  t.same(errors, [], 'no protocol error');
  t.ok(lengths.every((n) => n === big.length), 'a message in flight arrives whole or not at all');
  await gw.provisioner.close();
  await gw.store.close();
});
