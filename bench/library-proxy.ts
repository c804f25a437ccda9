// The floor each proxy library sets on its own (issue 7: "pick the proxy library by these numbers"):
// the smallest forwarder each allows, one upstream, no routing, no checks, keep-alive pools as the
// gateway configures them. And the floor under every Node proxy (`tcp-relay`): no HTTP at all, each
// client connection relayed byte for byte over its own upstream connection, what node:net alone costs
// per request. `node dist/bench/library-proxy.js <undici|http-proxy-3|tcp-relay> <upstreamPort>`
// prints `listening <port>`. Not a product part: the gateway's own forwarder is gateway/proxy.ts.
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { createProxyServer } from 'http-proxy-3';
import { Agent } from 'undici';

const [engine, upstreamPort] = process.argv.slice(2);
const origin = `http://127.0.0.1:${upstreamPort}`;
const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding']);

function undiciHandler(): http.RequestListener {
  const pools = new Agent({ connections: 64, pipelining: 1, bodyTimeout: 0 });
  return (req, res) => {
    const headers: Record<string, string | string[] | undefined> = { ...req.headers };
    for (const h of HOP) delete headers[h];
    const body = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
    pools.dispatch({ origin, method: req.method!, path: req.url!, headers: headers as Record<string, string>, body: body ? req : null }, {
      onConnect() {},
      onHeaders(status, raw, resume) {
        const out: Record<string, string> = {};
        for (let i = 0; i < raw.length; i += 2) { const k = raw[i].toString('latin1'); if (!HOP.has(k.toLowerCase())) out[k] = raw[i + 1].toString('latin1'); }
        res.writeHead(status, out);
        res.on('drain', resume);
        return true;
      },
      onData(chunk) { return res.write(chunk); },
      onComplete() { res.end(); },
      onError() { if (res.headersSent) res.destroy(); else { res.writeHead(502); res.end(); } },
    });
  };
}

function httpProxy3Handler(): http.RequestListener {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64, maxFreeSockets: 64, scheduling: 'lifo' });
  const proxy = createProxyServer({ agent, target: origin });
  proxy.on('error', (_err, _req, res) => { if (res instanceof http.ServerResponse && !res.headersSent) { res.writeHead(502); res.end(); } else res.destroy(); });
  return (req, res) => proxy.web(req, res);
}

function tcpRelay(): net.Server {
  return net.createServer({ noDelay: true }, (client) => {
    const upstream = net.connect({ host: '127.0.0.1', port: Number(upstreamPort), noDelay: true });
    client.on('data', (d) => { if (!upstream.write(d)) client.pause(); });
    upstream.on('data', (d) => { if (!client.write(d)) upstream.pause(); });
    client.on('drain', () => upstream.resume());
    upstream.on('drain', () => client.resume());
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    client.on('error', () => undefined);
    upstream.on('error', () => undefined);
  });
}

const server = engine === 'tcp-relay' ? tcpRelay() : http.createServer(engine === 'undici' ? undiciHandler() : httpProxy3Handler());
server.listen(0, '127.0.0.1', () => process.stdout.write(`listening ${(server.address() as AddressInfo).port}\n`));
process.on('SIGTERM', () => process.exit(0));
