// The benchmark's upstream (issue 7): a small Node HTTP server answering every request with about
// 1 KB, and a WebSocket echo on /echo. Prints {"port":N} once listening.
import http from 'node:http';
import { WebSocketServer } from 'ws';
import { answerChallenge } from '../codeserver/workspace-identity.cjs';

// The gateway's challenge on each new connection, answered as a workspace's preload does (bench/field.ts
// gives the key); other systems never send one.
const id = process.env.WORKSPACE_ID ?? '';
const key = process.env.WORKSPACE_KEY;
delete process.env.WORKSPACE_KEY;
const body = Buffer.from(`${'workspace-gateway benchmark body '.repeat(32)}`.slice(0, 1024));
const server = http.createServer({ keepAliveTimeout: 120_000, headersTimeout: 121_000 }, (req, res) => {
  if (answerChallenge(req, res, id, key)) return;
  req.resume();
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length });
  res.end(body);
});
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
server.on('upgrade', (req, socket, head) => {
  if (!req.url?.startsWith('/echo')) { socket.destroy(); return; }
  wss.handleUpgrade(req, socket, head, (ws) => { ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary })); });
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: (server.address() as { port: number }).port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
