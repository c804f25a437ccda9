// The proof a workspace gives on each new connection (gateway/workspace-proof.ts, its workspace side in
// codeserver/workspace-identity.cjs): the functions, table-driven; the demo workspace and the preload
// answering the challenge; the pool asking once per connection, never per request.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import { startDemoWorkspace } from '../provisioner/demo-workspace.js';
import { createUpstreamPool, type ResponseSink } from '../gateway/upstream-pool.js';
import { PROOF_FIELD, answeredUnproven, challengeHead, checkAnswer, createIdentityKeys, newNonce, proof, provenConnection, type Claim } from '../gateway/workspace-proof.js';

t.test('proof: bound to the key, the workspace and the nonce', async (t) => {
  const base = proof('key-1', 'alice', 'nonce-1');
  t.match(base, /^[A-Za-z0-9_-]{43}$/, 'base64url of 32 bytes');
  const rows: Array<[string, string, string, string]> = [
    ['another key', 'key-2', 'alice', 'nonce-1'],
    ['another workspace', 'key-1', 'bob', 'nonce-1'],
    ['another nonce', 'key-1', 'alice', 'nonce-2'],
    ['the separator cannot be shifted', 'key-1', 'alice\0nonce', '1'],
  ];
  for (const [name, key, id, nonce] of rows) t.not(proof(key, id, nonce), base, name);
  t.equal(proof('key-1', 'alice', 'nonce-1'), base, 'the same inputs, the same proof');
});

t.test('identity keys: one per start, the same on every replica, none without the secret', async (t) => {
  const keys = createIdentityKeys('secret-a');
  const again = createIdentityKeys('secret-a');
  const rows: Array<[string, string, number, string, number, boolean]> = [
    ['another replica, same start', 'alice', 7, 'alice', 7, true],
    ['the previous generation', 'alice', 7, 'alice', 6, false],
    ['another workspace', 'alice', 7, 'bob', 7, false],
    ['ids and generations do not run together', 'alice1', 7, 'alice', 17, false],
  ];
  for (const [name, id1, g1, id2, g2, same] of rows) t.equal(keys(id1, g1) === again(id2, g2), same, name);
  t.not(createIdentityKeys('secret-b')('alice', 7), keys('alice', 7), 'another secret');
  t.match(newNonce(), /^[A-Za-z0-9_-]{22}$/, 'a nonce: 128 bits, base64url');
  t.not(newNonce(), newNonce(), 'fresh each time');
});

t.test('checkAnswer: only a kept-alive 204 with the one right proof, and nothing after it', async (t) => {
  const claim: Claim = { workspaceId: 'alice', key: 'k' };
  const nonce = 'n'.repeat(22);
  const good = proof('k', 'alice', nonce);
  const rows: Array<[string, string, string]> = [
    ['the proof', `HTTP/1.1 204 No Content\r\n${PROOF_FIELD}: ${good}\r\n\r\n`, 'proven'],
    ['spelled in capitals, among other fields', `HTTP/1.1 204 No Content\r\nDate: x\r\nX-Gateway-Proof:  ${good} \r\nCache-Control: no-store\r\n\r\n`, 'proven'],
    ['half a head', `HTTP/1.1 204 No Content\r\n${PROOF_FIELD}: ${good}\r\n`, 'more'],
    ['no proof', 'HTTP/1.1 204 No Content\r\n\r\n', 'unproven'],
    ['a wrong proof', `HTTP/1.1 204 No Content\r\n${PROOF_FIELD}: ${proof('k', 'alice', 'other')}\r\n\r\n`, 'unproven'],
    ['another workspace\'s proof', `HTTP/1.1 204 No Content\r\n${PROOF_FIELD}: ${proof('k', 'bob', nonce)}\r\n\r\n`, 'unproven'],
    ['a truncated proof', `HTTP/1.1 204 No Content\r\n${PROOF_FIELD}: ${good.slice(0, 20)}\r\n\r\n`, 'unproven'],
    ['two proofs', `HTTP/1.1 204 No Content\r\n${PROOF_FIELD}: ${good}\r\n${PROOF_FIELD}: ${good}\r\n\r\n`, 'unproven'],
    ['200 with the proof', `HTTP/1.1 200 OK\r\n${PROOF_FIELD}: ${good}\r\ncontent-length: 0\r\n\r\n`, 'unproven'],
    ['HTTP/1.0', `HTTP/1.0 204 No Content\r\n${PROOF_FIELD}: ${good}\r\n\r\n`, 'unproven'],
    ['closing the connection', `HTTP/1.1 204 No Content\r\n${PROOF_FIELD}: ${good}\r\nConnection: close\r\n\r\n`, 'unproven'],
    ['bytes after it', `HTTP/1.1 204 No Content\r\n${PROOF_FIELD}: ${good}\r\n\r\nHTTP/1.1 200 OK\r\n\r\n`, 'unproven'],
    ['a field without a colon', `HTTP/1.1 204 No Content\r\n${PROOF_FIELD}: ${good}\r\nbad\r\n\r\n`, 'unproven'],
    ['a marked 421', 'HTTP/1.1 421 Misdirected Request\r\nx-gateway-misdirected: 1\r\ncontent-length: 0\r\n\r\n', 'misdirected'],
    ['a marked 421 with its body', 'HTTP/1.1 421 Misdirected Request\r\nx-gateway-misdirected: 1\r\ncontent-length: 20\r\nconnection: close\r\n\r\nMisdirected Request\n', 'misdirected'],
    ['a 204 that claims a body', `HTTP/1.1 204 No Content\r\n${PROOF_FIELD}: ${good}\r\ncontent-length: 5\r\n\r\n`, 'unproven'],
    ['an unmarked 421', 'HTTP/1.1 421 Misdirected Request\r\ncontent-length: 0\r\n\r\n', 'unproven'],
    ['no head in 5 KB', 'x'.repeat(5000), 'unproven'],
  ];
  for (const [name, answer, verdict] of rows) t.equal(checkAnswer(Buffer.from(answer, 'latin1'), claim, nonce), verdict, name);
});

t.test('checkAnswer during a GATEWAY_SECRET rotation: a proof under the current or the accepted key, none under another', async (t) => {
  const claim: Claim = { workspaceId: 'alice', key: 'current', acceptedKey: 'accepted' };
  const nonce = 'n'.repeat(22);
  const answer = (key: string) => Buffer.from(`HTTP/1.1 204 No Content\r\n${PROOF_FIELD}: ${proof(key, 'alice', nonce)}\r\n\r\n`, 'latin1');
  const rows: Array<[string, string, string]> = [
    ['under the current key', 'current', 'proven'],
    ['under the accepted key (started before the rotation)', 'accepted', 'proven'],
    ['under neither', 'another', 'unproven'],
  ];
  for (const [name, key, verdict] of rows) t.equal(checkAnswer(answer(key), claim, nonce), verdict, name);
  t.equal(checkAnswer(answer('accepted'), { workspaceId: 'alice', key: 'current' }, nonce), 'unproven', 'without an accepted key: only the current one');
});

/** The raw answer to one challenge on a new connection. */
async function challenge(port: number, claim: Claim, nonce: string): Promise<string> {
  const socket = net.connect(port, '127.0.0.1');
  socket.write(challengeHead('127.0.0.1', port, claim, nonce));
  let text = '';
  socket.on('data', (d) => { text += d.toString('latin1'); if (text.includes('\r\n\r\n')) socket.destroy(); });
  await once(socket, 'close');
  return text;
}

/** The demo workspace "alice" on a free port, started with `key`, in a folder removed after the test. */
async function aliceDemo(t: Test, key: string) {
  const dir = mkdtempSync(join(tmpdir(), 'proof-demo-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const demo = startDemoWorkspace({ port: 0, host: '127.0.0.1', dataDir: dir, id: 'alice', readyDelayMs: 0, key });
  const port = await demo.listen();
  t.teardown(() => demo.close());
  return { demo, port };
}

t.test('the demo workspace answers the challenge with its key, and refuses one for another workspace', async (t) => {
  const { demo, port } = await aliceDemo(t, 'the-key');
  const nonce = newNonce();
  t.equal(checkAnswer(Buffer.from(await challenge(port, { workspaceId: 'alice', key: 'the-key' }, nonce), 'latin1'), { workspaceId: 'alice', key: 'the-key' }, nonce), 'proven', 'its own: proven');
  t.match(await challenge(port, { workspaceId: 'bob', key: 'the-key' }, nonce), /^HTTP\/1\.1 421 [^]*x-gateway-misdirected: 1/i, "another's: the marked 421");
  // A proven connection carries the requests that follow.
  const socket = await provenConnection('127.0.0.1', port, { workspaceId: 'alice', key: 'the-key' }, 2000);
  const res = await new Promise<http.IncomingMessage>((resolve) => http.request({ path: '/healthz', createConnection: () => socket, headers: { 'x-gateway-workspace': 'alice' } }, resolve).end());
  t.equal(res.statusCode, 200, 'then /healthz on the same connection');
  res.resume();
  socket.destroy();
  await t.rejects(provenConnection('127.0.0.1', port, { workspaceId: 'alice', key: 'another-key' }, 2000), { name: 'IdentityFailure', reason: 'unproven' }, 'a claim with another key: unproven');
});

t.test('the preload answers the challenge before the server sees it, and keeps WORKSPACE_KEY from what the server starts', async (t) => {
  const preload = fileURLToPath(new URL('../../codeserver/workspace-identity.cjs', import.meta.url));
  const probe = await new Promise<number>((resolve) => { const s = net.createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as net.AddressInfo).port; s.close(() => resolve(p)); }); });
  // A server that answers everything 200 and reports the WORKSPACE_KEY a child it starts would inherit.
  const server = `require('node:http').createServer((q, s) => { s.end(JSON.stringify({ seen: q.url, key: process.env.WORKSPACE_KEY ?? null })); }).listen(${probe}, '127.0.0.1');`;
  const child = spawn(process.execPath, ['-e', server], {
    env: { PATH: process.env.PATH, WORKSPACE_ID: 'alice', WORKSPACE_PORT: String(probe), WORKSPACE_KEY: 'preload-key', NODE_OPTIONS: `--require="${preload}"` }, stdio: 'ignore',
  });
  t.teardown(() => { child.kill(); });
  const claim = { workspaceId: 'alice', key: 'preload-key' };
  let socket: net.Socket | undefined;
  for (let i = 0; i < 100 && socket === undefined; i++) {
    socket = await provenConnection('127.0.0.1', probe, claim, 1000).catch(() => undefined);
    if (socket === undefined) await new Promise((r) => setTimeout(r, 50));
  }
  t.ok(socket, 'proven by the preload');
  const res = await new Promise<http.IncomingMessage>((resolve) => http.request({ path: '/after', createConnection: () => socket!, headers: { 'x-gateway-workspace': 'alice' } }, resolve).end());
  let body = '';
  for await (const c of res) body += c;
  t.same(JSON.parse(body), { seen: '/after', key: null }, 'the server saw only the request after it, and its environment has no key');
  socket!.destroy();
  await t.rejects(provenConnection('127.0.0.1', probe, { workspaceId: 'alice', key: 'other' }, 1000), { name: 'IdentityFailure', reason: 'unproven' }, 'another key: unproven');
  await t.rejects(provenConnection('127.0.0.1', probe, { workspaceId: 'bob', key: 'preload-key' }, 1000), { name: 'IdentityFailure', reason: 'misdirected' }, 'another workspace: misdirected');
});

t.test('the pool challenges each new connection once: kept-alive requests pay nothing more', async (t) => {
  const { demo, port } = await aliceDemo(t, 'pool-key');
  const requests: string[] = [];
  demo.server.prependListener('request', (req: http.IncomingMessage) => { requests.push(`${req.method} ${req.url}`); });
  const pool = createUpstreamPool({ connectTimeoutMs: 2000, responseTimeoutMs: 5000, maxSockets: 4, idleMs: 4000 });
  t.teardown(() => pool.close());
  const endpoint = { host: '127.0.0.1', port, proves: true as const, claim: { workspaceId: 'alice', key: 'pool-key' } };
  const send = () => new Promise<number>((resolve, reject) => {
    let status = 0;
    const sink: ResponseSink = {
      head: (s) => { status = s; }, data: () => true, flush: () => undefined, end: () => resolve(status), fail: (code) => reject(new Error(code)), drain: () => undefined,
    };
    pool.send(endpoint, { method: 'GET', head: 'GET /headers HTTP/1.1\r\nhost: x\r\nx-gateway-workspace: alice\r\n', body: 'none' }, sink);
  });
  for (let i = 0; i < 5; i++) t.equal(await send(), 200, `request ${i + 1}`);
  t.same(requests, ['OPTIONS *', ...Array(5).fill('GET /headers')], 'one challenge, then five requests on the proven connection');
  t.equal(pool.size(), 1, 'one connection');
});

t.test('a port that refuses the connection is no identity failure: the socket\'s own error', async (t) => {
  // Nothing listens there (a task gone, a process exited): the workspace did not answer, as on the pool's
  // connections; only a server that answered (or accepted and said nothing) is "not the workspace".
  const port = await new Promise<number>((resolve) => { const s = net.createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as net.AddressInfo).port; s.close(() => resolve(p)); }); });
  const error = await provenConnection('127.0.0.1', port, { workspaceId: 'alice', key: 'k' }, 2000).then(() => undefined, (e: unknown) => e as Error & { code?: string });
  t.not(error?.name, 'IdentityFailure');
  t.equal(error?.code, 'ECONNREFUSED');
});

t.test('a failed proof says whether the server answered in full (definitive) or went away before an answer (transient)', async (t) => {
  // gateway/workspaces.ts stops a workspace whose own start answers without a proof, never one that
  // closed or stalled mid-challenge (code-server restarting on SIGUSR1, a task dying): the failure
  // must tell them apart, on a probe's or upgrade's socket (proveSocket) and on the pool's connections.
  const rows: Array<[string, (socket: net.Socket) => void, 'unproven' | 'misdirected', boolean]> = [
    ['a 204 with a wrong proof (another secret\'s key)', (s) => s.write(`HTTP/1.1 204 No Content\r\n${PROOF_FIELD}: ${proof('old-key', 'alice', 'n'.repeat(22))}\r\n\r\n`), 'unproven', true],
    ['a 204 without a proof', (s) => s.write('HTTP/1.1 204 No Content\r\n\r\n'), 'unproven', true],
    ['a 404 from a server without the preload', (s) => s.write('HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n'), 'unproven', true],
    ['a 405 with a body, then a close', (s) => s.end('HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 3\r\nconnection: close\r\n\r\nno\n'), 'unproven', true],
    ['a marked 421: another workspace', (s) => s.end('HTTP/1.1 421 Misdirected Request\r\nx-gateway-misdirected: 1\r\ncontent-length: 0\r\n\r\n'), 'misdirected', true],
    ['a close on reading the challenge', (s) => s.end(), 'unproven', false],
    ['half an answer, then a close', (s) => s.end('HTTP/1.1 204 No Content\r\n'), 'unproven', false],
    ['a reset', (s) => s.resetAndDestroy(), 'unproven', false],
    ['no answer within the timeout', () => undefined, 'unproven', false],
  ];
  for (const [name, answer, reason, answered] of rows) {
    t.test(name, async (t) => {
      const sockets = new Set<net.Socket>();
      const server = net.createServer((s) => {
        sockets.add(s);
        s.on('error', () => undefined);
        let read = '';
        s.on('data', (d) => { read += d.toString('latin1'); if (read.includes('\r\n\r\n')) { read = ''; answer(s); } });
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      t.teardown(() => new Promise<void>((resolve) => { for (const s of sockets) s.destroy(); server.close(() => resolve()); }));
      const port = (server.address() as net.AddressInfo).port;
      const claim = { workspaceId: 'alice', key: 'current-key' };
      await t.rejects(provenConnection('127.0.0.1', port, claim, 300), { name: 'IdentityFailure', reason, answered }, 'a probe\'s or upgrade\'s socket');
      const pool = createUpstreamPool({ connectTimeoutMs: 300, responseTimeoutMs: 5000, maxSockets: 1, idleMs: 4000 });
      t.teardown(() => pool.close());
      const failure = await new Promise<Error>((resolve, reject) => {
        const sink: ResponseSink = {
          head: () => reject(new Error('answered as the workspace')), data: () => true, flush: () => undefined, end: () => reject(new Error('answered as the workspace')), fail: (_code, error) => resolve(error), drain: () => undefined,
        };
        pool.send({ host: '127.0.0.1', port, proves: true, claim }, { method: 'GET', head: 'GET / HTTP/1.1\r\nhost: x\r\nx-gateway-workspace: alice\r\n', body: 'none' }, sink);
      });
      t.match(failure, { name: 'IdentityFailure', reason, answered }, 'the pool\'s connection');
      t.equal(answeredUnproven(failure), reason === 'unproven' && answered, 'what the recheck takes as a definitive non-proof');
    });
  }
});
