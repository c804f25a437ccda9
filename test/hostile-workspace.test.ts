// A stale route's address held by a server that is not the workspace and does not cooperate: student
// A's own program on WORKSPACE_PORT in their container (raced in during code-server's restart) at the
// private IP B's dead task had. It ignores x-gateway-workspace and answers everything 200. The gateway
// must send it nothing of B's student (no path, no body, no upgrade): only the challenge, which it
// cannot answer. Also: a proof replayed from an earlier connection, and a key of an earlier start.
import { createHmac } from 'node:crypto';
import net from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import type { WorkspaceRecord } from '../gateway/store/contract.js';
import type { Endpoint, Provisioner, RunningWorkspace } from '../provisioner/contract.js';
import { startDemoWorkspace } from '../provisioner/demo-workspace.js';
import { createLocalProvisioner } from '../provisioner/local.js';
import { NAVIGATE, TEST_SECRET, XHR, request, startTestGateway, until, waitRunning, type TestGateway } from './helpers/gateway.js';
import { connected, openWs } from './helpers/ws.js';

/** The key the gateway derives for a start (README, "Which workspace answers"), written out here. */
function startKey(id: string, generation: number, secret = TEST_SECRET): string {
  const base = createHmac('sha256', secret).update('workspace-gateway/workspace-identity').digest();
  return createHmac('sha256', base).update(`workspace-identity\0${id}\0${generation}`).digest('base64url');
}
const proofFor = (key: string, id: string, nonce: string) => createHmac('sha256', key).update(`proof\0${id}\0${nonce}`).digest('base64url');

/** The store says `id` runs at `endpoint` (a route whose workspace proves itself), and every replica has it. */
async function routedTo(gw: TestGateway, id: string, endpoint: Endpoint, generation = 7, handle?: string): Promise<void> {
  const now = Date.now();
  const record = { id, state: 'running' as const, generation, since: now, endpoint, startedAt: now, ...(handle ? { handle } : {}) };
  await gw.store.putWorkspace(record);
  await gw.store.publish({ record });
}

interface Hostile { port: number; read(): string; close(): Promise<void> }

/**
 * Answers every request head it reads with 200 (an upgrade with 101), whatever it names; `challenge`
 * may answer the gateway's challenge otherwise. Remembers every byte it was sent.
 */
async function hostileServer(challenge?: (head: string) => string | undefined): Promise<Hostile> {
  let seen = '';
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let buffered = '';
    socket.on('data', (d) => {
      seen += d.toString('latin1');
      buffered += d.toString('latin1');
      for (let end = buffered.indexOf('\r\n\r\n'); end !== -1; end = buffered.indexOf('\r\n\r\n')) {
        const head = buffered.slice(0, end);
        buffered = buffered.slice(end + 4);
        const own = head.startsWith('OPTIONS * ') ? challenge?.(head) : undefined;
        if (own !== undefined) { socket.write(own); continue; }
        if (/\r\nupgrade: *websocket/i.test(head)) {
          socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n');
          continue;
        }
        socket.write('HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 15\r\n\r\nhostile answer\n');
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    read: () => seen,
    close: () => new Promise((resolve) => { for (const s of sockets) s.destroy(); server.close(() => resolve()); }),
  };
}

const stateOf = async (gw: TestGateway, id: string) => (await gw.store.getWorkspace(id))?.state;
const identityFailures = async (gw: TestGateway, reason: string) =>
  Number(new RegExp(`workspace_identity_failures_total\\{reason="${reason}"\\} (\\d+)`).exec(await gw.metrics.registry.metrics())?.[1] ?? NaN);

/** What the server read other than the gateway's challenges (each a head alone, `OPTIONS *`). */
const besidesChallenges = (read: string) => read.split('\r\n\r\n').filter((head) => head !== '' && !/^OPTIONS \* HTTP\/1\.1\r\n/.test(head));

t.test("a server at a stale route's address that answers everything 200 gets nothing of the student's", async (t) => {
  const gw = await startTestGateway();
  t.teardown(() => gw.close());

  const cases: Array<[string, (host: string, cookie: string) => Promise<{ status: number; code: unknown }>]> = [
    ['a page load', async (host, cookie) => {
      const r = await request(gw.port, { host, path: '/secret-file.txt', headers: { ...NAVIGATE, cookie } });
      t.notMatch(r.body, /hostile/, 'nothing of its answer');
      return { status: r.status, code: r.headers['x-gateway-error'] };
    }],
    ['a POST with a body', async (host, cookie) => {
      const r = await request(gw.port, { host, path: '/save', method: 'POST', body: 'STUDENT-KEYSTROKES', headers: { ...XHR, 'sec-fetch-site': 'same-origin', 'content-type': 'text/plain', cookie } });
      return { status: r.status, code: r.headers['x-gateway-error'] };
    }],
    ['a WebSocket upgrade', async (host, cookie) => {
      const e = await connected(openWs(gw.port, '/terminal-socket', { cookie, host })).then(() => undefined, (err: { status?: number; headers?: Record<string, string> }) => err);
      return { status: e?.status ?? 101, code: e?.headers?.['x-gateway-error'] };
    }],
  ];
  for (const [name, send] of cases) {
    t.test(name, async (t) => {
      const hostile = await hostileServer();
      t.teardown(() => hostile.close());
      const id = `stale${cases.findIndex(([n]) => n === name)}`;
      await routedTo(gw, id, { host: '127.0.0.1', port: hostile.port, proves: true });
      const before = await identityFailures(gw, 'unproven');
      const answer = await send(`ws-${id}.localhost`, await gw.cookie(id));
      t.same(answer, { status: 502, code: 'UPSTREAM_UNREACHABLE' }, 'as a workspace that did not answer');
      t.match(hostile.read(), /^OPTIONS \* HTTP\/1\.1\r\n/, 'challenged');
      t.same(besidesChallenges(hostile.read()), [], 'only the challenge reached it');
      t.notMatch(hostile.read(), /secret-file|save|STUDENT-KEYSTROKES|terminal-socket|cookie/i, 'no path, body, upgrade or cookie of the student');
      t.equal(await identityFailures(gw, 'unproven'), before + 1, 'counted as unproven');
      await until(async () => (await stateOf(gw, id)) === 'stopped', 10_000);
      t.pass('the route was re-checked and found gone');
    });
  }
});

t.test('a proof replayed from an earlier connection does not prove the next one (the nonce binds it)', async (t) => {
  const gw = await startTestGateway();
  t.teardown(() => gw.close());
  const key = startKey('replay', 7);
  // Captured from an earlier, real exchange with the workspace: its nonce, its valid proof.
  const captured = proofFor(key, 'replay', 'AAAAAAAAAAAAAAAAAAAAAA');
  const hostile = await hostileServer(() => `HTTP/1.1 204 No Content\r\nx-gateway-proof: ${captured}\r\n\r\n`);
  t.teardown(() => hostile.close());
  await routedTo(gw, 'replay', { host: '127.0.0.1', port: hostile.port, proves: true });
  const r = await request(gw.port, { host: 'ws-replay.localhost', path: '/private', headers: { ...XHR, cookie: await gw.cookie('replay') } });
  t.same([r.status, r.headers['x-gateway-error']], [502, 'UPSTREAM_UNREACHABLE']);
  t.match(hostile.read(), /^OPTIONS \* HTTP\/1\.1\r\n/, 'challenged');
  t.same(besidesChallenges(hostile.read()), [], 'only the challenge reached it');
  t.notMatch(hostile.read(), /private/);
});

t.test("a workspace holding generation N-1's key does not prove generation N; N's key does", async (t) => {
  const gw = await startTestGateway();
  t.teardown(() => gw.close());
  const dir = mkdtempSync(join(tmpdir(), 'proof-gen-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const [generation, status] of [[6, 502], [7, 200]] as const) {
    const demo = startDemoWorkspace({ port: 0, host: '127.0.0.1', dataDir: dir, id: 'gen', readyDelayMs: 0, key: startKey('gen', generation) } as Parameters<typeof startDemoWorkspace>[0]);
    const port = await demo.listen();
    await routedTo(gw, 'gen', { host: '127.0.0.1', port, proves: true }, 7);
    const r = await request(gw.port, { host: 'ws-gen.localhost', path: '/headers', headers: { ...XHR, cookie: await gw.cookie('gen') } });
    t.equal(r.status, status, `key of generation ${generation}, route of generation 7: ${status}`);
    // The failure's re-check finds the route gone; the next route is written after it.
    if (status === 502) await until(async () => (await stateOf(gw, 'gen')) === 'stopped', 10_000);
    await demo.close();
  }
});

t.test('a route whose port refuses connections failed as unreachable, never counted as an identity failure', async (t) => {
  // A workspace that is gone (its process exited, its task stopped): nothing answered, so nothing at
  // the address claimed to be it. The identity counter and log line are for servers that did answer.
  const gw = await startTestGateway();
  t.teardown(() => gw.close());
  const port = await new Promise<number>((resolve) => { const s = net.createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as net.AddressInfo).port; s.close(() => resolve(p)); }); });
  await routedTo(gw, 'gonews', { host: '127.0.0.1', port, proves: true });
  await routedTo(gw, 'goneweb', { host: '127.0.0.1', port, proves: true });
  const before = [await identityFailures(gw, 'unproven'), await identityFailures(gw, 'misdirected')];
  const e = await connected(openWs(gw.port, '/terminal-socket', { cookie: await gw.cookie('gonews'), host: 'ws-gonews.localhost' }))
    .then(() => undefined, (err: { status?: number; headers?: Record<string, string> }) => err);
  t.same([e?.status, e?.headers?.['x-gateway-error']], [502, 'UPSTREAM_UNREACHABLE'], 'a WebSocket: as a workspace that did not answer');
  const r = await request(gw.port, { host: 'ws-goneweb.localhost', path: '/', headers: { ...XHR, cookie: await gw.cookie('goneweb') } });
  t.same([r.status, r.headers['x-gateway-error']], [502, 'UPSTREAM_UNREACHABLE'], 'a request: the same');
  t.same([await identityFailures(gw, 'unproven'), await identityFailures(gw, 'misdirected')], before, 'no identity failure counted');
});

// ------------------------------------------------------------------ a workspace that cannot prove itself
// Its own start answers the challenge, but not with this gateway's key: GATEWAY_SECRET rotated since it
// started, a task rediscovered from before the proof, an image without the preload. Left running, every
// request got 502 and the recheck kept the route (the provisioner finds it running) until MAX_SESSION.

/** A server the test runs in a workspace's place: where it listens, and how to stop it. */
interface Placed { port: number; close(): Promise<unknown> }

/**
 * The local provisioner (it starts real demo workspaces), except that it reports each `placed`
 * workspace running at the given generation and endpoint, as DescribeTasks reports the task a record
 * names; stopping one stops its server, as StopTask would.
 */
function placing(dataDir: string, placed: Map<string, { running: RunningWorkspace; server: Placed }>): Provisioner & { describes: string[] } {
  const inner = createLocalProvisioner({ workspace: 'demo', dataDir, codeServerBin: '', demoReadyDelayMs: 0, parentEnv: { PATH: process.env.PATH } });
  const describes: string[] = [];
  return {
    kind: inner.kind,
    describes,
    start: (req) => inner.start(req),
    async stop(id, handle, reason) {
      const here = placed.get(id);
      if (here && handle === here.running.handle) { placed.delete(id); await here.server.close(); return; }
      return inner.stop(id, handle, reason);
    },
    async describe(id) { describes.push(id); return placed.get(id)?.running ?? inner.describe(id); },
    list: () => inner.list(),
    close: () => inner.close(),
  };
}

async function placingGateway(t: Test, placed: Map<string, { running: RunningWorkspace; server: Placed }>) {
  const dataDir = mkdtempSync(join(tmpdir(), 'unproven-'));
  const provisioner = placing(dataDir, placed);
  // A short connect timeout: the challenge of a server that says nothing fails within it.
  const gw = await startTestGateway({ provisioner, dataDir, env: { UPSTREAM_CONNECT_TIMEOUT: '500ms' } });
  t.teardown(async () => { await gw.close(); for (const { server } of placed.values()) await server.close(); rmSync(dataDir, { recursive: true, force: true }); });
  return { gw, describes: provisioner.describes };
}

/** Puts `server` in place of `id`'s recorded start (generation 7): the store's route and the provisioner agree. */
async function place(gw: TestGateway, placed: Map<string, { running: RunningWorkspace; server: Placed }>, id: string, server: Placed, at: Endpoint = { host: '127.0.0.1', port: server.port, proves: true }) {
  const handle = `task-${id}`;
  placed.set(id, { running: { workspaceId: id, generation: 7, endpoint: at, handle }, server });
  await routedTo(gw, id, { host: '127.0.0.1', port: server.port, proves: true }, 7, handle);
}

const demoWith = async (id: string, key: string | undefined): Promise<Placed> => {
  const dir = mkdtempSync(join(tmpdir(), 'unproven-demo-'));
  const demo = startDemoWorkspace({ port: 0, host: '127.0.0.1', dataDir: dir, id, readyDelayMs: 0, ...(key ? { key } : {}) });
  const port = await demo.listen();
  let closed: Promise<unknown> | undefined;
  return { port, close: () => (closed ??= demo.close().finally(() => rmSync(dir, { recursive: true, force: true }))) };
};

const once = <T>(f: () => Promise<T>) => { let p: Promise<T> | undefined; return () => (p ??= f()); };

t.test('a workspace whose own start answers without a valid proof is stopped, and the next page load starts it afresh', async (t) => {
  const placed = new Map<string, { running: RunningWorkspace; server: Placed }>();
  const { gw } = await placingGateway(t, placed);
  const cases: Array<[string, (id: string) => Promise<Placed>, (host: string, cookie: string) => Promise<{ status: number; code: unknown }>]> = [
    ['started under another GATEWAY_SECRET (a page load)', (id) => demoWith(id, startKey(id, 7, 'an-earlier-secret-0123456789-0123456789')), async (host, cookie) => {
      const r = await request(gw.port, { host, path: '/', headers: { ...NAVIGATE, cookie } });
      return { status: r.status, code: r.headers['x-gateway-error'] };
    }],
    ['started without a key, before the proof (a WebSocket upgrade)', (id) => demoWith(id, undefined), async (host, cookie) => {
      const e = await connected(openWs(gw.port, '/echo', { cookie, host })).then(() => undefined, (err: { status?: number; headers?: Record<string, string> }) => err);
      return { status: e?.status ?? 101, code: e?.headers?.['x-gateway-error'] };
    }],
    ['an image without the preload: 200 to everything (a page load)', async () => { const h = await hostileServer(); return { port: h.port, close: once(() => h.close()) }; }, async (host, cookie) => {
      const r = await request(gw.port, { host, path: '/', headers: { ...NAVIGATE, cookie } });
      return { status: r.status, code: r.headers['x-gateway-error'] };
    }],
  ];
  for (const [name, serve, send] of cases) {
    t.test(name, async (t) => {
      const id = `unproven${cases.findIndex(([n]) => n === name)}`;
      const host = `ws-${id}.localhost`;
      const cookie = await gw.cookie(id);
      await place(gw, placed, id, await serve(id));
      t.same(await send(host, cookie), { status: 502, code: 'UPSTREAM_UNREACHABLE' }, 'the first request: as a workspace that did not answer');
      const stopped = await until(async () => { const r = await gw.store.getWorkspace(id); return r?.state === 'stopped' ? r : undefined; }, 10_000) as WorkspaceRecord;
      t.equal(stopped.reasonCode, 'unproven', 'stopped as a workspace that cannot prove itself');
      t.match(stopped.reason, /GATEWAY_SECRET/, 'the reason names the likely causes');
      t.same(gw.provisioner.stops.filter((s) => s === id), [id], 'its task stopped once, through the normal stop path');
      t.same(gw.logs.filter((l) => l.event === 'workspace.unproven' && l.workspaceId === id).map((l) => [l.generation, l.outcome]), [[7, 'stopped']], 'one line says why');
      const next = await request(gw.port, { host, path: '/', headers: { ...NAVIGATE, cookie } });
      t.equal(next.status, 200, 'the next page load gets the starting page');
      t.equal(next.headers['x-gateway-cold-start'], '1', 'a new start');
      t.ok(gw.provisioner.starts.some((s) => s.workspaceId === id && s.generation > 7), 'a new generation, with a key this gateway derives');
      t.equal((await waitRunning(gw.port, cookie, host)).state, 'running');
      const served = await request(gw.port, { host, path: '/', headers: { ...NAVIGATE, cookie } });
      t.same([served.status, /Demo workspace/.test(served.body)], [200, true], 'and it proves itself: the workspace answers');
    });
  }
});

t.test('a workspace that closes, resets or stalls mid-challenge is not stopped (code-server restarting, a task dying)', async (t) => {
  const placed = new Map<string, { running: RunningWorkspace; server: Placed }>();
  const { gw, describes } = await placingGateway(t, placed);
  const cases: Array<[string, (socket: net.Socket) => void]> = [
    ['closes on reading the challenge', (s) => s.end()],
    ['half an answer, then a close', (s) => s.end('HTTP/1.1 204 No Content\r\n')],
    ['resets the connection', (s) => s.resetAndDestroy()],
    ['says nothing until the connect timeout', () => undefined],
  ];
  for (const [name, answer] of cases) {
    t.test(name, async (t) => {
      const id = `transient${cases.findIndex(([n]) => n === name)}`;
      const host = `ws-${id}.localhost`;
      const sockets = new Set<net.Socket>();
      const server = net.createServer((s) => {
        sockets.add(s);
        s.on('error', () => undefined);
        s.once('data', () => answer(s));
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const close = once(() => new Promise<void>((resolve) => { for (const s of sockets) s.destroy(); server.close(() => resolve()); }));
      await place(gw, placed, id, { port: (server.address() as net.AddressInfo).port, close });
      const r = await request(gw.port, { host, path: '/', headers: { ...NAVIGATE, cookie: await gw.cookie(id) } });
      t.equal(r.status, 502, 'the request fails');
      // The recheck found it running and, keeping it, asks again a recheck interval later.
      await until(() => describes.filter((d) => d === id).length >= 2, 10_000);
      t.equal((await gw.store.getWorkspace(id))?.state, 'running', 'still running');
      t.same(gw.provisioner.stops.filter((s) => s === id), [], 'not stopped');
      t.same(gw.logs.filter((l) => l.event === 'workspace.unproven' && l.workspaceId === id), [], 'no unproven line');
    });
  }
});

t.test('a server without a proof at a stale address: the recorded workspace is marked gone or kept, nobody stopped as unproven', async (t) => {
  const placed = new Map<string, { running: RunningWorkspace; server: Placed }>();
  const { gw, describes } = await placingGateway(t, placed);
  const cases: Array<[string, (port: number) => RunningWorkspace | undefined, 'stopped' | 'running']> = [
    ['the provisioner finds the workspace gone', () => undefined, 'stopped'],
    ['the provisioner finds it at another generation', (port) => ({ workspaceId: '', generation: 8, endpoint: { host: '127.0.0.1', port, proves: true }, handle: 'task-new' }), 'stopped'],
    ['the provisioner finds it at another endpoint', (port) => ({ workspaceId: '', generation: 7, endpoint: { host: '127.0.0.1', port: port + 1, proves: true }, handle: 'task-stale' }), 'running'],
  ];
  for (const [name, found, state] of cases) {
    t.test(name, async (t) => {
      const id = `elsewhere${cases.findIndex(([n]) => n === name)}`;
      const host = `ws-${id}.localhost`;
      const hostile = await hostileServer();
      t.teardown(() => hostile.close());
      const running = found(hostile.port);
      await place(gw, placed, id, { port: hostile.port, close: once(() => hostile.close()) });
      if (running) placed.set(id, { running: { ...running, workspaceId: id }, server: placed.get(id)!.server });
      else placed.delete(id);
      const r = await request(gw.port, { host, path: '/', headers: { ...NAVIGATE, cookie: await gw.cookie(id) } });
      t.same([r.status, r.headers['x-gateway-error']], [502, 'UPSTREAM_UNREACHABLE']);
      if (state === 'stopped') {
        const record = await until(async () => { const w = await gw.store.getWorkspace(id); return w?.state === 'stopped' ? w : undefined; }, 10_000) as WorkspaceRecord;
        t.equal(record.reasonCode, 'gone', 'marked gone, as before');
      } else {
        await until(() => describes.filter((d) => d === id).length >= 2, 10_000);
        t.equal((await gw.store.getWorkspace(id))?.state, 'running', 'kept, as before');
      }
      t.same(gw.provisioner.stops.filter((s) => s === id), [], 'nothing stopped');
      t.same(gw.logs.filter((l) => l.event === 'workspace.unproven' && l.workspaceId === id), [], 'no unproven line');
    });
  }
});
