// A WebSocket upgrade's wait for the workspace (gateway/proxy.ts): connecting, the workspace's proof and
// the 101 share one UPSTREAM_CONNECT_TIMEOUT from the moment the upstream connection is begun. Each
// phase used to get its own, so a workspace slow to prove itself and then slow to answer held a
// browser's upgrade for up to twice the limit. Short limits; outcomes and order, not timings.
import { createHash } from 'node:crypto';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import t, { type Test } from 'tap';
import { forwardedFields } from '../gateway/http-fields.js';
import { createForwarder } from '../gateway/proxy.js';
import { createUpstreamPool } from '../gateway/upstream-pool.js';
import { CHALLENGE_FIELD, PROOF_FIELD, proof } from '../gateway/workspace-proof.js';
import { onRequests } from './helpers/upstream.js';

const LIMIT_MS = 600;
const KEY = 'deadline-key';

/** How long the workspace takes to answer the challenge and the upgrade; undefined: it never does. */
interface Pace { proofMs?: number; upgradeMs?: number }

/** A raw workspace that answers the challenge (with a valid proof) and then the upgrade at the pace given. */
async function slowWorkspace(pace: Pace) {
  const sockets = new Set<net.Socket>();
  const timers = new Set<NodeJS.Timeout>();
  const later = (ms: number | undefined, fn: () => void) => { if (ms !== undefined) timers.add(setTimeout(fn, ms)); };
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
    onRequests(s, (method, _path, head) => {
      const field = (name: string) => new RegExp(`\\r\\n${name}: *([^\\r]*)`, 'i').exec(head)?.[1] ?? '';
      if (method === 'OPTIONS') {
        const answer = proof(KEY, 'alice', field(CHALLENGE_FIELD));
        later(pace.proofMs, () => s.write(`HTTP/1.1 204 No Content\r\n${PROOF_FIELD}: ${answer}\r\n\r\n`));
        return;
      }
      const accept = createHash('sha1').update(`${field('sec-websocket-key')}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
      later(pace.upgradeMs, () => s.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((r) => { for (const tm of timers) clearTimeout(tm); for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}

/**
 * One upgrade through the forwarder to a workspace of that pace: '101', or the failure's code; and
 * whether it came before `witnessMs` (set when twice the limit, as before, would not have been).
 */
async function upgradeThrough(t: Test, pace: Pace, proves: boolean, witnessMs: number) {
  const ws = await slowWorkspace(pace);
  const pool = createUpstreamPool({ connectTimeoutMs: LIMIT_MS, responseTimeoutMs: 5000, maxSockets: 1, idleMs: 4000 });
  const forwarder = createForwarder({ connectTimeoutMs: LIMIT_MS, pool });
  const endpoint = proves ? { host: '127.0.0.1', port: ws.port, proves: true as const, claim: { workspaceId: 'alice', key: KEY } } : { host: '127.0.0.1', port: ws.port };
  let settle!: (outcome: string) => void;
  const outcome = new Promise<string>((r) => { settle = r; });
  const front = http.createServer();
  front.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => undefined);
    forwarder.ws(req, socket, head, endpoint, 'alice', forwardedFields('127.0.0.1', 'http', 'ws-alice.localhost'), undefined, {
      onFailure(f) { settle(f.code); socket.destroy(); },
      onUpgrade(upstream) { settle('101'); upstream.destroy(); socket.destroy(); return false; },
    });
  });
  await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
  const client = net.connect((front.address() as AddressInfo).port, '127.0.0.1');
  client.on('error', () => undefined);
  t.teardown(async () => {
    client.destroy(); pool.close(); forwarder.close(); front.closeAllConnections();
    await Promise.all([new Promise<void>((r) => { front.close(() => r()); }), ws.close()]);
  });
  client.write('GET /socket HTTP/1.1\r\nhost: ws-alice.localhost\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
  let witnessed = false;
  const witness = setTimeout(() => { witnessed = true; }, witnessMs);
  const code = await Promise.race([outcome, new Promise<string>((r) => setTimeout(() => r('still waiting'), 4 * LIMIT_MS))]);
  clearTimeout(witness);
  return { code, beforeWitness: !witnessed };
}

t.test('proof and 101 together past the limit: 504 UPSTREAM_TIMEOUT, though each alone was within it', async (t) => {
  // Proof at 0.75 of the limit, the 101 half a limit after it: 1.25 limits in all. With a limit per
  // phase this upgrade went through.
  const r = await upgradeThrough(t, { proofMs: LIMIT_MS * 0.75, upgradeMs: LIMIT_MS * 0.5 }, true, 10 * LIMIT_MS);
  t.equal(r.code, 'UPSTREAM_TIMEOUT');
});

t.test('proof late in the limit, then no 101: UPSTREAM_TIMEOUT at the one deadline, not a second limit later', async (t) => {
  // A limit per phase failed it at 1.75 limits; the witness fires at 1.4.
  const r = await upgradeThrough(t, { proofMs: LIMIT_MS * 0.75 }, true, LIMIT_MS * 1.4);
  t.equal(r.code, 'UPSTREAM_TIMEOUT');
  t.ok(r.beforeWitness, 'failed before 1.4 limits');
});

t.test('proof and 101 within the limit together: the upgrade goes through', async (t) => {
  const r = await upgradeThrough(t, { proofMs: LIMIT_MS * 0.2, upgradeMs: LIMIT_MS * 0.2 }, true, 10 * LIMIT_MS);
  t.equal(r.code, '101');
});

t.test('no proof at all: the server is not taken for the workspace (UPSTREAM_UNREACHABLE), within the limit', async (t) => {
  // README ("Which workspace answers"): silence past UPSTREAM_CONNECT_TIMEOUT fails as a marked 421 does.
  const r = await upgradeThrough(t, {}, true, LIMIT_MS * 1.4);
  t.equal(r.code, 'UPSTREAM_UNREACHABLE');
  t.ok(r.beforeWitness, 'failed before 1.4 limits');
});

t.test('a route that is not asked for a proof, no 101: UPSTREAM_TIMEOUT within the limit', async (t) => {
  const r = await upgradeThrough(t, {}, false, LIMIT_MS * 1.4);
  t.equal(r.code, 'UPSTREAM_TIMEOUT');
  t.ok(r.beforeWitness, 'failed before 1.4 limits');
});
