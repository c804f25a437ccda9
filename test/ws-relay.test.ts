// The WebSocket relay's backpressure (gateway/ws-pairs.ts): a browser that stops reading makes the
// gateway stop reading the workspace, so a workspace flooding a stalled tab fills socket buffers,
// not the gateway's memory; once the tab reads again, every byte arrives, in order.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import t from 'tap';
import { startTestGateway } from './helpers/gateway.js';
import { acceptWebSocket, registerRunning } from './helpers/upstream.js';
import { connected, openWs } from './helpers/ws.js';

const FRAME = 60 * 1024;
const FRAMES = 1024; // 60 MB in all

/** An upstream that answers any upgrade and then writes FRAMES binary frames as fast as its socket takes them. */
async function floodingUpstream() {
  const state = { written: 0, waiting: false, done: false };
  const sockets = new Set<Duplex>();
  const server = http.createServer((_req, res) => res.end());
  server.on('upgrade', (req, socket: Duplex) => {
    sockets.add(socket);
    acceptWebSocket(req, socket);
    let i = 0;
    const more = () => {
      state.waiting = false;
      while (i < FRAMES) {
        // RFC 6455 5.2: FIN + binary, 16-bit extended length, unmasked (server to client).
        const frame = Buffer.alloc(4 + FRAME, i & 0xff);
        frame[0] = 0x82; frame[1] = 126; frame.writeUInt16BE(FRAME, 2);
        i++;
        state.written += FRAME;
        if (!socket.write(frame)) { state.waiting = true; socket.once('drain', more); return; }
      }
      state.done = true;
    };
    more();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    state,
    port: (server.address() as AddressInfo).port,
    close: async () => { for (const s of sockets) s.destroy(); await new Promise<void>((r) => server.close(() => r())); },
  };
}

t.test('a tab that stops reading holds the workspace back, and then gets every byte', async (t) => {
  const gw = await startTestGateway();
  const up = await floodingUpstream();
  t.teardown(async () => { await gw.close(); await up.close(); });
  await registerRunning(gw.store, 'flood', up.port);
  const cookie = await gw.cookie('flood');

  const ws = openWs(gw.port, '/', { cookie, host: 'ws-flood.localhost' });
  const received: Buffer[] = [];
  let bytes = 0;
  const all = new Promise<void>((resolve) => {
    ws.on('message', (data: Buffer) => { received.push(data.subarray(0, 1)); bytes += data.length; if (bytes >= FRAME * FRAMES) resolve(); });
  });
  await connected(ws);
  ws.pause();

  // Let the flood run into the stalled tab.
  let last = -1;
  for (let i = 0; i < 50 && up.state.written !== last; i++) { last = up.state.written; await new Promise((r) => setTimeout(r, 100)); }
  t.notOk(up.state.done, 'the workspace could not write everything');
  t.ok(up.state.waiting, 'the workspace waits for its socket to drain');
  t.ok(up.state.written < (FRAME * FRAMES) / 2, `in flight while the tab was stalled: ${Math.round(up.state.written / 1048576)} MB of ${(FRAME * FRAMES) / 1048576}`);

  ws.resume();
  await all;
  t.equal(bytes, FRAME * FRAMES, 'every byte arrived once the tab read again');
  t.ok(received.every((b, i) => b[0] === (i & 0xff)), 'in order');
  ws.terminate();
});
