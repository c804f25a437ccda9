// WebSocket client helpers: `ws` against the gateway, resolving *.localhost to loopback as browsers do.
import type { LookupFunction } from 'node:net';
import WebSocket from 'ws';

export const loopback: LookupFunction = ((_host: string, opts: { all?: boolean }, cb: (...args: unknown[]) => void) => {
  if (opts && opts.all) cb(null, [{ address: '127.0.0.1', family: 4 }]);
  else cb(null, '127.0.0.1', 4);
}) as unknown as LookupFunction;

export interface WsOptions { cookie?: string; origin?: string | null; host?: string; headers?: Record<string, string> }

export function openWs(port: number, path: string, o: WsOptions = {}): WebSocket {
  const host = o.host ?? 'ws-demo.localhost';
  return new WebSocket(`ws://${host}:${port}${path}`, {
    lookup: loopback,
    headers: { ...(o.cookie ? { cookie: o.cookie } : {}), ...o.headers },
    ...(o.origin === null ? {} : { origin: o.origin ?? `http://${host}:${port}` }),
    perMessageDeflate: false,
  });
}

/** Resolves with the socket once open, or rejects with the HTTP status of a refused upgrade. */
export function connected(ws: WebSocket): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', (_req, res) => { reject(Object.assign(new Error(`upgrade refused: ${res.statusCode}`), { status: res.statusCode, headers: res.headers })); res.resume(); });
    ws.once('error', reject);
  });
}

export function nextMessage(ws: WebSocket): Promise<{ data: Buffer; isBinary: boolean }> {
  return new Promise((resolve, reject) => {
    ws.once('message', (data, isBinary) => resolve({ data: data as Buffer, isBinary }));
    ws.once('close', () => reject(new Error('closed before a message')));
  });
}

export function closed(ws: WebSocket): Promise<{ code: number; reason: string }> {
  return new Promise((resolve) => {
    if (ws.readyState === WebSocket.CLOSED) { resolve({ code: 1006, reason: '' }); return; }
    ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }));
  });
}
