// Instructions per proxied WebSocket message, counted by callgrind as bench/instructions.ts counts a
// request (issue 7: WebSocket msg/s and CPU per message). The closed-loop msg/s is set by how much
// CPU each relayed message takes from a machine the proxy shares with the client and the upstream,
// and timing it swings by a fifth between rounds here; an instruction count does not, so a change
// to the relay can be judged by it. One message = a 64-byte masked frame to the upstream's echo and
// its echo back: both directions, as the closed loop counts it.
// `node dist/bench/ws-instructions.js [messages] [gateway|node-relay ...] [--warmup=N] [--top]`
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { HOST } from './field.js';
import { measure, runPerRequestCommand, type CountedClient, type Launch } from './instructions.js';
import { clientFrame } from '../gateway/ws-frames.js';

const CONNECTIONS = 10;
const PAYLOAD = Buffer.alloc(64, 'm');
/** An unmasked server frame of a 64-byte payload: 2 header bytes. */
const ECHO_BYTES = 2 + PAYLOAD.length;

/** WebSockets through the proxy to the upstream's /echo, each with one message in flight. */
export async function openWsClient(port: number, headers: Record<string, string>): Promise<CountedClient> {
  const frame = clientFrame(0x2, PAYLOAD);
  let left = 0;
  let idle = 0;
  let finished: (() => void) | undefined;
  let failed: ((err: Error) => void) | undefined;
  const fields = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  const connection = () => new Promise<net.Socket & { next?: () => void }>((resolve, reject) => {
    const socket: net.Socket & { next?: () => void } = net.connect({ host: '127.0.0.1', port, noDelay: true });
    socket.write(`GET /echo HTTP/1.1\r\nhost: ${HOST}:${port}\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: ${randomBytes(16).toString('base64')}\r\nsec-websocket-version: 13\r\norigin: http://${HOST}:${port}\r\n${fields}\r\n`);
    let head = '';
    let open = false;
    let got = 0;
    const next = () => {
      if (left <= 0) { if (++idle === CONNECTIONS) finished?.(); return; }
      left--;
      socket.write(frame);
    };
    socket.next = next;
    socket.on('error', (err) => { reject(err); failed?.(err); });
    socket.on('data', (d: Buffer) => {
      if (!open) {
        head += d.toString('latin1');
        const end = head.indexOf('\r\n\r\n');
        if (end === -1) return;
        if (!head.startsWith('HTTP/1.1 101')) { reject(new Error(head.split('\r\n')[0])); return; }
        open = true;
        resolve(socket);
        return;
      }
      // One message in flight: its echo is the only thing that comes back.
      got += d.length;
      while (got >= ECHO_BYTES) { got -= ECHO_BYTES; next(); }
    });
  });
  const sockets = await Promise.all(Array.from({ length: CONNECTIONS }, connection));
  return {
    run: (total) => new Promise<void>((resolve, reject) => {
      left = total;
      idle = 0;
      finished = resolve;
      failed = reject;
      for (const s of sockets) s.next!();
    }),
    close: () => { for (const s of sockets) s.destroy(); },
  };
}

export const WS_WARMUP = 30_000;
export const WS_COUNTED = 5_000;

/** User-space instructions per echoed message of one system (callgrind, as measure() counts requests). */
export function measureWs(start: Launch, messages: number, warmup: number, top = false, note?: (s: string) => void): Promise<number> {
  // measure() counts requests; here each one is an echoed message.
  return measure(start, messages, warmup, top, note && ((s) => note(s.replace(/\brequests\b/g, 'messages'))), openWsClient);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  void runPerRequestCommand(measureWs, { warmup: WS_WARMUP, requests: WS_COUNTED }, 'instructions per echoed message');
}
