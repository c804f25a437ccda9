// A recording upstream for access and edge tests: a plain node:http server that remembers every
// request (and WebSocket upgrade) it receives, registered in the gateway's store as a running
// workspace. It proves what reached the workspace: each accepted request exactly once, never the
// gateway's cookie, the sign-in token or a smuggled second request.
import { createHash } from 'node:crypto';
import http, { type IncomingHttpHeaders } from 'node:http';
import net, { type AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { StateStore } from '../../gateway/store/contract.js';
import { startTestGateway } from './gateway.js';

/**
 * Reads raw HTTP/1.1 requests off a workspace-side socket (each head, and a Content-Length body
 * skipped) and calls `each` for every one, in order: tests that need to write the exact bytes of an
 * answer. `each` returning false stops reading that socket (it destroyed it, say).
 */
export function onRequests(socket: net.Socket, each: (method: string, path: string, head: string) => boolean | void): void {
  let buffered = '';
  socket.on('data', (d) => {
    buffered += d.toString('latin1');
    for (let end = buffered.indexOf('\r\n\r\n'); end !== -1; end = buffered.indexOf('\r\n\r\n')) {
      const head = buffered.slice(0, end);
      const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
      if (buffered.length < end + 4 + length) return;
      buffered = buffered.slice(end + 4 + length);
      const [method, path] = head.split(' ');
      if (each(method, path, head) === false) return;
    }
  });
}

/** Ends the body of the answer to `GET /__probe`. */
export const PROBE_END = 'PROBE-END';

export interface Recorded { method: string; url: string; headers: IncomingHttpHeaders; rawHeaders: string[]; body: string; upgrade: boolean }

export interface RecordingUpstream {
  port: number;
  requests: Recorded[];
  close(): Promise<void>;
}

/** Answers a WebSocket upgrade with its 101 (RFC 6455 4.2.2: the accept key), so a real client completes the handshake. */
export function acceptWebSocket(req: http.IncomingMessage, socket: Duplex): void {
  socket.on('error', () => socket.destroy());
  const accept = createHash('sha1').update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
}

export async function startRecordingUpstream(): Promise<RecordingUpstream> {
  const requests: Recorded[] = [];
  const sockets = new Set<Duplex>();
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('latin1');
      requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders, body, upgrade: false });
      // The probe's answer ends with a marker, so a raw client knows the pipeline was fully answered.
      const out = req.url === '/__probe' ? `{"probe":"${PROBE_END}"}` : JSON.stringify({ n: requests.length, bytes: body.length });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out) });
      res.end(out);
    });
  });
  server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  server.on('upgrade', (req, socket: Duplex) => {
    requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders, body: '', upgrade: true });
    sockets.add(socket);
    acceptWebSocket(req, socket);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    requests,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Makes the store say `id` runs at this upstream, without starting anything. */
export async function registerRunning(store: StateStore, id: string, port: number): Promise<void> {
  const now = Date.now();
  await store.putWorkspace({ id, state: 'running', generation: 1, since: now, endpoint: { host: '127.0.0.1', port }, startedAt: now });
}

/**
 * A test gateway whose workspaces `ids` are running on recording upstreams (closed at teardown),
 * with a session cookie for each.
 */
export async function gatewayWithRecordedWorkspaces(t: { teardown(fn: () => unknown): void }, ids: string[]) {
  const gw = await startTestGateway();
  const ups: Record<string, RecordingUpstream> = {};
  const cookies: Record<string, string> = {};
  for (const id of ids) {
    ups[id] = await startRecordingUpstream();
    await registerRunning(gw.store, id, ups[id].port);
    cookies[id] = await gw.cookie(id);
  }
  t.teardown(async () => { await gw.close(); for (const up of Object.values(ups)) await up.close(); });
  return { gw, ups, cookies };
}

/**
 * A workspace that answers an upload before reading it (RFC 9110 10.1.1): it stops reading at a
 * POST's head and answers 413 once the gateway's writes to it have backed up; anything else gets
 * 200 "next".
 */
export async function startEarlyAnsweringUpstream(): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    let buffered = '';
    socket.on('data', (d) => {
      buffered += d.toString('latin1');
      if (!buffered.includes('\r\n\r\n')) return;
      const post = buffered.startsWith('POST');
      buffered = '';
      if (!post) { socket.write('HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext'); return; }
      socket.pause();
      setTimeout(() => socket.write('HTTP/1.1 413 Content Too Large\r\ncontent-length: 3\r\n\r\nbig'), 300);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}
