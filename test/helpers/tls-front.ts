// Two sibling workspaces behind a test gateway, behind HTTPS as the ALB is in production: browsers
// send Fetch Metadata and `__Host-` cookies only to secure origins. The TLS front keeps every byte
// both ways, so a test can show which requests a browser sent with which cookie, and what each was
// answered.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { loginUrl, startTestGateway } from './gateway.js';
import { registerRunning, startRecordingUpstream } from './upstream.js';

/** A self-signed certificate for *.`base`, written to `dir` (the browsers are told to accept it). */
function certificate(dir: string, base: string): { key: Buffer; cert: Buffer } {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
    '-subj', `/CN=*.${base}`, '-addext', `subjectAltName=DNS:*.${base}`, '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
  return { key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) };
}

// Not anchored to a line's start: a message can follow the body before it with no line break.
const REQUEST_LINE = /[A-Z]+ \S+ HTTP\/1\.1\r\n/g;
const STATUS_LINE = /HTTP\/1\.1 \d{3}[^\r\n]*\r\n/g;

async function tlsTerminator(creds: { key: Buffer; cert: Buffer }, target: () => number) {
  // Per connection, in order: what the browser sent, what came back (browsers do not pipeline, so
  // the n-th response on a connection answers its n-th request).
  const sent: string[] = [];
  const received: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = tls.createServer(creds, (client) => {
    const i = sent.push('') - 1;
    received.push('');
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    const upstream = net.connect(target(), '127.0.0.1');
    client.on('data', (d: Buffer) => { sent[i] += d.toString('latin1'); });
    upstream.on('data', (d: Buffer) => { received[i] += d.toString('latin1'); });
    client.pipe(upstream).pipe(client);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const find = (requestLine: string) => {
    for (let i = 0; i < sent.length; i++) {
      const at = sent[i].indexOf(`${requestLine} HTTP/1.1\r\n`);
      if (at !== -1) return { i, at, nth: [...sent[i].slice(0, at).matchAll(REQUEST_LINE)].length };
    }
    return undefined;
  };
  return {
    port: (server.address() as AddressInfo).port,
    /** The head of the request that starts with this request line as the browser sent it. */
    head(requestLine: string): string | undefined {
      const f = find(requestLine);
      return f && sent[f.i].slice(f.at, sent[f.i].indexOf('\r\n\r\n', f.at));
    },
    /** The heads of every answer the browser got, connection by connection. */
    answers(): string[] {
      return received.flatMap((text) => [...text.matchAll(STATUS_LINE)].map((m) => text.slice(m.index, text.indexOf('\r\n\r\n', m.index))));
    },
    /** The head of the answer to that request, as the browser got it. */
    answer(requestLine: string): string | undefined {
      const f = find(requestLine);
      const status = f && [...received[f.i].matchAll(STATUS_LINE)][f.nth];
      return status && received[f.i].slice(status.index, received[f.i].indexOf('\r\n\r\n', status.index));
    },
    close: () => new Promise<void>((resolve) => { server.close(() => resolve()); for (const c of sockets) c.destroy(); }),
  };
}

/**
 * HTTPS for *.`base` on a free port, in front of the plain-HTTP port `target()` names (the gateway,
 * as the ALB is in production), keeping every byte both ways.
 */
export async function startHttpsFront(base: string, target: () => number) {
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-front-'));
  const front = await tlsTerminator(certificate(dir, base), target);
  return { ...front, close: async () => { await front.close(); rmSync(dir, { recursive: true, force: true }); } };
}

/**
 * Two students' running workspaces, `ws-victim` and `ws-classmate` under `base`, behind a gateway
 * behind HTTPS; `loginUrl` mints a one-time sign-in link as the platform would.
 */
export async function startSiblings(base: string) {
  let gatewayPort = 0;
  const front = await startHttpsFront(base, () => gatewayPort);
  const gw = await startTestGateway({ env: { BASE_DOMAIN: base, PUBLIC_SCHEME: 'https', PUBLIC_PORT: String(front.port) } });
  gatewayPort = gw.port;
  const victim = await startRecordingUpstream();
  const classmate = await startRecordingUpstream();
  await registerRunning(gw.store, 'victim', victim.port);
  await registerRunning(gw.store, 'classmate', classmate.port);
  return {
    front, gw, victim, classmate,
    victimOrigin: `https://ws-victim.${base}:${front.port}`,
    loginUrl: (id: string, next: string) => loginUrl(gw.adminPort, id, next),
    async close(): Promise<void> {
      await gw.close(); await front.close(); await victim.close(); await classmate.close();
    },
  };
}
