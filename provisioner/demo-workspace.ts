// The built-in demo workspace: what the local provisioner runs when no code-server is installed.
// A small HTTP + WebSocket server, enough to see the whole path work in a browser, and the upstream
// the proxy tests exercise (echo, streaming, SSE, close codes). Run as its own process:
//   node dist/provisioner/demo-workspace.js --port N --data DIR --id ID [--ready-delay-ms MS]
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { appendFileSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { WebSocketServer } from 'ws';
// The workspace side of the gateway's x-gateway-workspace contract, shared with code-server's preload.
import { WORKSPACE_FIELD, answerChallenge, decide, refuse, refuseSocket } from '../codeserver/workspace-identity.cjs';

export interface DemoWorkspaceOptions {
  port: number; host: string; dataDir: string; id: string; readyDelayMs: number;
  /** This start's WORKSPACE_KEY: the gateway's challenge on each new connection is answered with it. */
  key?: string;
}

export function demoPage(id: string, visits: number): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>ws-${id} · demo workspace</title>
<style>body{font:16px/1.5 system-ui,sans-serif;background:#1e1e1e;color:#ddd;max-width:40rem;margin:3rem auto;padding:0 1rem}code{color:#9cdcfe}#log{white-space:pre-wrap;background:#111;padding:.5rem;min-height:3rem}</style></head>
<body><h1>Demo workspace <code>${id}</code></h1>
<p>This page comes from the workspace's own process, through the gateway. Page loads recorded in this workspace's data folder: <b id="visits">${visits}</b>.</p>
<p>WebSocket through the gateway: <b id="ws">connecting…</b></p><div id="log"></div>
<script>
const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/echo');
const log = (s) => { document.getElementById('log').textContent += s + '\\n'; };
ws.onopen = () => { document.getElementById('ws').textContent = 'open'; ws.send('ping ' + Date.now()); };
ws.onmessage = (e) => { document.getElementById('ws').textContent = 'round trip ok'; log('echo: ' + e.data); };
ws.onclose = (e) => { document.getElementById('ws').textContent = 'closed (' + e.code + ')'; };
</script></body></html>`;
}

export function startDemoWorkspace(opts: DemoWorkspaceOptions) {
  mkdirSync(opts.dataDir, { recursive: true });
  const visitsFile = join(opts.dataDir, 'visits.log');
  const readyAt = Date.now() + opts.readyDelayMs;
  const visits = () => { try { return readFileSync(visitsFile, 'utf8').split('\n').filter(Boolean).length; } catch { return 0; } };

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    // The gateway's challenge on a new connection, before anything of the workspace is served.
    if (answerChallenge(req, res, opts.id, opts.key)) return;
    // A request the gateway meant for another workspace (a stale route to a reused port): 421.
    if (decide(req.headers[WORKSPACE_FIELD], opts.id, req.url) !== 'allow') { refuse(res); return; }
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/healthz') {
      const ready = Date.now() >= readyAt;
      res.writeHead(ready ? 200 : 503, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ status: ready ? 'alive' : 'starting' }));
      return;
    }
    if (url.pathname === '/') {
      appendFileSync(visitsFile, `${new Date().toISOString()}\n`);
      const body = demoPage(opts.id, visits());
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(body) });
      res.end(body);
      return;
    }
    if (url.pathname === '/headers') {
      const body = JSON.stringify({ method: req.method, url: req.url, headers: req.headers, rawHeaders: req.rawHeaders });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(body);
      return;
    }
    if (url.pathname === '/upload') {
      // Counts a streamed body without holding it.
      let bytes = 0;
      req.on('data', (c: Buffer) => { bytes += c.length; });
      req.on('end', () => { res.writeHead(200, { 'content-type': 'application/json' }); res.end(JSON.stringify({ bytes, method: req.method })); });
      return;
    }
    if (url.pathname === '/download') {
      const total = Number(url.searchParams.get('bytes') ?? 1024);
      const chunk = Buffer.alloc(64 * 1024, 97);
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      let sent = 0;
      const pump = () => {
        while (sent < total) {
          const n = Math.min(chunk.length, total - sent);
          sent += n;
          if (!res.write(n === chunk.length ? chunk : chunk.subarray(0, n))) { res.once('drain', pump); return; }
        }
        res.end();
      };
      pump();
      return;
    }
    if (url.pathname === '/sse') {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      let n = 0;
      const count = Number(url.searchParams.get('count') ?? 3);
      const timer = setInterval(() => {
        res.write(`id: ${++n}\ndata: event ${n}\n\n`);
        if (n >= count) { clearInterval(timer); res.end(); }
      }, 20);
      res.on('close', () => clearInterval(timer));
      return;
    }
    if (url.pathname === '/status') {
      const code = Number(url.searchParams.get('code') ?? 200);
      res.writeHead(code, { 'content-type': 'text/plain' });
      res.end(`status ${code}`);
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found in demo workspace');
  });

  // One KB-sized echo endpoint: text and binary both ways, close codes passed through (/close?code=).
  const wss = new WebSocketServer({ noServer: true });
  server.on('upgrade', (req, socket, head) => {
    if (decide(req.headers[WORKSPACE_FIELD], opts.id, req.url) !== 'allow') { refuseSocket(socket); return; }
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/refuse') { socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n'); return; }
    if (url.pathname === '/plain') { socket.end('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno'); return; }
    wss.handleUpgrade(req, socket, head, (ws) => {
      if (url.pathname === '/close') { ws.close(Number(url.searchParams.get('code') ?? 1000), 'asked to close'); return; }
      ws.on('message', (data, isBinary) => {
        if (!isBinary && data.toString() === 'close-me') { ws.close(4001, 'closing as asked'); return; }
        ws.send(data, { binary: isBinary });
      });
    });
  });
  return {
    server,
    // A deep accept queue, as the gateway's: the bench's 1,000-connection bursts measure the
    // workspace, not SYN retries behind Node's default of 511.
    listen: () => new Promise<number>((resolve) => server.listen({ port: opts.port, host: opts.host, backlog: 4096 }, () => resolve((server.address() as { port: number }).port))),
    close: () => new Promise<void>((resolve) => { for (const c of wss.clients) c.terminate(); server.closeAllConnections(); server.close(() => resolve()); }),
  };
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].replace(/^.*\//, ''))) {
  const { values } = parseArgs({ options: { port: { type: 'string' }, host: { type: 'string' }, data: { type: 'string' }, id: { type: 'string' }, 'ready-delay-ms': { type: 'string' } } });
  const demo = startDemoWorkspace({
    port: Number(values.port ?? 0), host: values.host ?? '127.0.0.1', dataDir: values.data ?? '.', id: values.id ?? 'demo',
    readyDelayMs: Number(values['ready-delay-ms'] ?? 0), key: process.env.WORKSPACE_KEY,
  });
  // Held by the server alone, as code-server's preload does.
  delete process.env.WORKSPACE_KEY;
  demo.listen().then((port) => process.stdout.write(`listening ${port}\n`));
  const stop = () => { void demo.close().then(() => process.exit(0)); };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
