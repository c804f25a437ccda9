// WebSocket pairs under faults (gateway/ws-pairs.ts, issue 8): raw sockets on both sides, so each
// side can reset, half-close or go quiet at any moment. Whatever happens, no pair stays in the
// registry, no connection count stays up, and a slow but alive peer is not cut as frozen.
import { createHash, randomBytes } from 'node:crypto';
import net, { type AddressInfo } from 'node:net';
import t from 'tap';
import WebSocket, { WebSocketServer } from 'ws';
import { CALLS } from '../gateway/activity/vscode.js';
import { clientFrame } from '../gateway/ws-frames.js';
import { callBody, frame, vsMsg } from './fixtures/activity/build.js';
import { startTestGateway, until, type TestGateway } from './helpers/gateway.js';
import { registerRunning } from './helpers/upstream.js';
import { connected, openWs } from './helpers/ws.js';

type UpstreamMode = 'hold' | 'destroy' | 'fin' | 'close-frame' | 'slow-101' | 'flood';

/** A raw upstream: answers each upgrade with a 101 and then does what the request path's first segment says. */
async function rawUpstream(allowHalfOpen = false) {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen }, (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => s.destroy());
    let head = '';
    const onData = (d: Buffer) => {
      head += d.toString('latin1');
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      s.off('data', onData);
      const mode = (/^GET \/([a-z0-9-]+)/.exec(head)?.[1] ?? 'hold') as UpstreamMode;
      const key = /sec-websocket-key: *([^\r]+)/i.exec(head)?.[1] ?? '';
      const accept = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
      const answer = () => s.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
      s.resume(); // reads (and drops) whatever the gateway relays
      if (mode === 'slow-101') { setTimeout(() => { if (!s.destroyed) answer(); }, 40); return; }
      answer();
      if (mode === 'destroy') s.destroy();
      else if (mode === 'fin') s.end();
      else if (mode === 'close-frame') { s.write(Buffer.from([0x88, 2, 0x03, 0xe8])); s.end(); }
    };
    s.on('data', onData);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    sockets,
    close: () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}

/** A raw client: sends the upgrade and resolves once the 101 has arrived (or the socket closed first). */
function rawClient(gw: TestGateway, cookie: string, id: string, path: string, destroyAfterMs?: number): Promise<{ socket: net.Socket; upgraded: boolean }> {
  return new Promise((resolve) => {
    const socket = net.connect({ port: gw.port, host: '127.0.0.1', allowHalfOpen: true });
    if (destroyAfterMs !== undefined) setTimeout(() => socket.destroy(), destroyAfterMs);
    socket.on('error', () => undefined);
    const host = `ws-${id}.localhost`;
    socket.write(`GET ${path} HTTP/1.1\r\nHost: ${host}:${gw.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\n`
      + `Sec-WebSocket-Version: 13\r\nOrigin: http://${host}:${gw.port}\r\nCookie: ${cookie}\r\n\r\n`);
    let got = '';
    const onData = (d: Buffer) => {
      got += d.toString('latin1');
      if (got.includes('\r\n\r\n')) { socket.off('data', onData); socket.resume(); resolve({ socket, upgraded: got.startsWith('HTTP/1.1 101') }); }
    };
    socket.on('data', onData);
    socket.once('close', () => resolve({ socket, upgraded: false }));
  });
}

t.test('a tab closed while the workspace answers the upgrade leaves no pair and no workspace connection', async (t) => {
  const gw = await startTestGateway();
  const up = await rawUpstream();
  t.teardown(async () => { await gw.close(); await up.close(); });
  await registerRunning(gw.store, 'gone', up.port);
  const cookie = await gw.cookie('gone');
  const clients = await Promise.all(Array.from({ length: 10 }, () => rawClient(gw, cookie, 'gone', '/slow-101', 10)));
  t.ok(clients.every((c) => !c.upgraded), 'the tabs were gone before the 101');
  // Well inside WS_IDLE_TIMEOUT (30 s): the pairs must go on their sockets' events, not the ping sweep.
  await until(() => gw.gateway.openWebSockets() === 0 && up.sockets.size === 0, 3_000).catch(() => undefined);
  t.equal(gw.gateway.openWebSockets(), 0, 'no pair left in the registry');
  t.equal(up.sockets.size, 0, 'no connection left open to the workspace');
  t.equal(gw.gateway.activity.openConnections('gone'), 0, 'no open connection counted for the workspace');
});

t.test('1,000 open/close cycles with faults on either side leave no pair and no connection count behind', async (t) => {
  // The default idle limit: every pair must go because of its sockets' own events, not the ping sweep.
  const gw = await startTestGateway();
  const up = await rawUpstream();
  t.teardown(async () => { await gw.close(); await up.close(); });
  await registerRunning(gw.store, 'faults', up.port);
  const cookie = await gw.cookie('faults');

  const clientActs = ['destroy', 'fin', 'close-frame', 'garbage'] as const;
  const upstreamModes: UpstreamMode[] = ['hold', 'destroy', 'fin', 'close-frame', 'slow-101'];
  let opened = 0;
  const cycle = async (i: number) => {
    const mode = upstreamModes[i % upstreamModes.length]!;
    const act = clientActs[Math.floor(i / upstreamModes.length) % clientActs.length]!;
    if (mode === 'slow-101' && i % 2 === 0) {
      // Gone while the workspace is still answering the upgrade.
      await rawClient(gw, cookie, 'faults', `/${mode}`, 5 + (i % 30));
      return;
    }
    const { socket, upgraded } = await rawClient(gw, cookie, 'faults', `/${mode}`);
    if (upgraded) opened++;
    if (act === 'destroy') socket.destroy();
    else if (act === 'fin') socket.end();
    else if (act === 'close-frame') { socket.write(clientFrame(0x8, Buffer.from([0x03, 0xe8]))); socket.end(); }
    else if (act === 'garbage') { socket.write(Buffer.from([0x83, 0x80, 1, 2, 3, 4])); socket.resetAndDestroy(); }
  };
  for (let i = 0; i < 1000; i += 25) await Promise.all(Array.from({ length: 25 }, (_, k) => cycle(i + k)));

  t.ok(opened >= 700, `upgraded: ${opened}`);
  await until(() => gw.gateway.openWebSockets() === 0, 5_000).catch(() => undefined);
  t.equal(gw.gateway.openWebSockets(), 0, 'no pair left in the registry');
  t.equal(gw.gateway.activity.openConnections('faults'), 0, 'no connection counted for the workspace');
});

t.test('a revoked session\'s socket: what the browser sends after the close frame is not activity', async (t) => {
  // The workspace keeps its half open (no FIN back), so the pair lives out its close grace.
  const gw = await startTestGateway({ env: { ACTIVITY_FLUSH_INTERVAL: '1h' } });
  const up = await rawUpstream(true);
  t.teardown(async () => { await gw.close(); await up.close(); });
  await registerRunning(gw.store, 'revoked', up.port);
  const cookie = await gw.cookie('revoked');
  const { socket, upgraded } = await rawClient(gw, cookie, 'revoked', '/hold');
  t.ok(upgraded, 'upgraded');
  await new Promise((r) => setTimeout(r, 5)); // the cutoff after the session's issue time
  const closeFrame = new Promise<void>((resolve) => socket.on('data', (d: Buffer) => { if (d.includes(0x88)) resolve(); }));
  await gw.gateway.revocations.revoke('revoked');
  await closeFrame;
  // A client that keeps typing after the gateway's 1008: the workspace never gets these bytes.
  socket.write(frame(2, vsMsg(1, callBody(CALLS.input[0]!, '["x"]'))));
  socket.end();
  await new Promise((r) => socket.once('close', r));
  await gw.gateway.activity.flush();
  t.equal(await gw.store.getActivity('revoked'), undefined, 'no activity from a socket being closed for a revocation');
});

t.test('a sustained download: the browser is pinged between frames, answers, and is not cut', async (t) => {
  // Frames back to back: a read rarely ends exactly between two of them, and the gateway's ping
  // waited for one that did, so a browser answering only pings was cut as silent (issue 8).
  const gw = await startTestGateway({ env: { WS_IDLE_TIMEOUT: '200ms' } });
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate: false });
  await new Promise((r) => wss.once('listening', r));
  t.teardown(async () => { await gw.close(); await new Promise((r) => wss.close(r)); });
  wss.on('connection', (s) => {
    const end = Date.now() + 1500;
    const more = () => {
      if (s.readyState !== WebSocket.OPEN) return;
      while (s.bufferedAmount < 256 * 1024) s.send(Buffer.alloc(10_000 + Math.floor(Math.random() * 10_000), 1));
      if (Date.now() < end) setTimeout(more, 1); else s.send('done');
    };
    more();
  });
  await registerRunning(gw.store, 'download', (wss.address() as AddressInfo).port);
  const ws = await connected(openWs(gw.port, '/', { cookie: await gw.cookie('download'), host: 'ws-download.localhost' }));
  const outcome = await new Promise<string>((resolve) => {
    ws.on('message', (d, binary) => { if (!binary && d.toString() === 'done') resolve('done'); });
    ws.once('close', (code) => resolve(`closed ${code}`));
  });
  t.equal(outcome, 'done', 'the whole download arrived on an open socket');
  ws.terminate();
});
