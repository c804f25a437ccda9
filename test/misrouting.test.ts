// Cross-tenant misrouting: the gateway's route for workspace A names an address where workspace B
// now answers (A's Fargate task died and AWS gave its private IP to B's new task; locally, a port A
// freed taken by B's process), and the gateway has not noticed yet. B's workspace refuses requests
// named for A with a marked 421 (codeserver/workspace-identity.cjs); the gateway must take that as A
// being unreachable: never show B's answer, re-check A's route, and so let A's next page load start
// A. Real processes throughout: the gateway, the local provisioner and B's demo workspace.
import http from 'node:http';
import net from 'node:net';
import t from 'tap';
import type { Endpoint, Provisioner } from '../provisioner/contract.js';
import { decide, refuse } from '../codeserver/workspace-identity.cjs';
import { createManualClock } from '../gateway/clock.js';
import { NAVIGATE, XHR, request, startTestGateway, until, waitRunning, type TestGateway } from './helpers/gateway.js';
import { gatewayWithRecordedWorkspaces } from './helpers/upstream.js';
import { connected, openWs } from './helpers/ws.js';

/** The store says `id` runs at `endpoint`, and every replica has it cached, as after its own start. */
async function routedTo(gw: TestGateway, id: string, endpoint: Endpoint): Promise<void> {
  const now = Date.now();
  const record = { id, state: 'running' as const, generation: 1, since: now, endpoint, startedAt: now };
  await gw.store.putWorkspace(record);
  await gw.store.publish({ record });
}

const stateOf = async (gw: TestGateway, id: string) => (await gw.store.getWorkspace(id))?.state;

t.test("a stale route to another workspace's address: B is never shown, A's route is re-checked", async (t) => {
  const gw = await startTestGateway();
  t.teardown(() => gw.close());
  const bCookie = await gw.cookie('bravo');
  await request(gw.port, { host: 'ws-bravo.localhost', headers: { ...NAVIGATE, cookie: bCookie } });
  t.equal((await waitRunning(gw.port, bCookie, 'ws-bravo.localhost')).state, 'running');
  const bravo = (await gw.store.getWorkspace('bravo'))!.endpoint!;
  const notB = (body: string) => !/bravo/.test(body);

  t.test('a page load (node:http): an error page, then the starting page', async (t) => {
    await routedTo(gw, 'page', bravo);
    const host = 'ws-page.localhost';
    const cookie = await gw.cookie('page');
    const first = await request(gw.port, { host, headers: { ...NAVIGATE, cookie } });
    t.same([first.status, first.headers['x-gateway-error']], [502, 'UPSTREAM_UNREACHABLE'], 'as if A did not answer');
    t.equal(first.headers['x-gateway-misdirected'], undefined, "B's refusal is not passed on");
    t.ok(notB(first.body), "nothing of B's in the answer");
    t.match(first.body, /<html/i, 'a page for a person');
    await until(async () => (await stateOf(gw, 'page')) === 'stopped', 10_000);
    t.pass('the re-check found A gone');
    const again = await request(gw.port, { host, headers: { ...NAVIGATE, cookie } });
    t.same([again.status, again.headers['x-gateway-cold-start']], [200, '1'], "A's own start");
    t.match(again.body, /Starting your workspace/);
  });

  t.test('an XHR (node:http): a coded error, then WORKSPACE_STOPPED', async (t) => {
    await routedTo(gw, 'xhr', bravo);
    const host = 'ws-xhr.localhost';
    const cookie = await gw.cookie('xhr');
    const first = await request(gw.port, { host, path: '/headers', headers: { ...XHR, cookie } });
    t.same([first.status, first.headers['x-gateway-error']], [502, 'UPSTREAM_UNREACHABLE']);
    t.match(JSON.parse(first.body), { error: { code: 'UPSTREAM_UNREACHABLE' } });
    t.ok(notB(first.body));
    await until(async () => (await stateOf(gw, 'xhr')) === 'stopped', 10_000);
    const again = await request(gw.port, { host, path: '/headers', headers: { ...XHR, cookie } });
    t.same([again.status, again.headers['x-gateway-error']], [503, 'WORKSPACE_STOPPED'], 'only a page load starts it');
  });

  t.test('a WebSocket upgrade: refused with a coded error, then WORKSPACE_STOPPED', async (t) => {
    await routedTo(gw, 'socket', bravo);
    const host = 'ws-socket.localhost';
    const cookie = await gw.cookie('socket');
    const refused = await connected(openWs(gw.port, '/echo', { cookie, host })).then(() => undefined, (e: { status?: number; headers?: Record<string, string> }) => e);
    t.same([refused?.status, refused?.headers?.['x-gateway-error']], [502, 'UPSTREAM_UNREACHABLE'], "B's echo never opened for A");
    await until(async () => (await stateOf(gw, 'socket')) === 'stopped', 10_000);
    const again = await connected(openWs(gw.port, '/echo', { cookie, host })).then(() => undefined, (e: { status?: number; headers?: Record<string, string> }) => e);
    t.same([again?.status, again?.headers?.['x-gateway-error']], [503, 'WORKSPACE_STOPPED']);
  });

  t.test('the warm lane (a kept-alive connection): a coded error, then the re-check', async (t) => {
    // One connection, as a load balancer keeps it: first a request the lane answers (the connection
    // is on the lane), then one for A, whose session is verified and whose route is cached.
    const { gw: gw2, ups, cookies } = await gatewayWithRecordedWorkspaces(t, ['other']);
    await routedTo(gw2, 'warm', bravo);
    const cookie = await gw2.cookie('warm');
    // Sessions verified once on node:http's path (the lane takes only a session it verified before).
    t.equal((await request(gw2.port, { host: 'ws-other.localhost', path: '/first', headers: { cookie: cookies.other } })).status, 200);
    t.equal((await request(gw2.port, { host: 'ws-warm.localhost', path: '/__gateway/status', headers: { cookie, ...XHR } })).status, 200);
    const c = await lane(t, gw2.port);
    c.socket.write(`GET /on-the-lane HTTP/1.1\r\nHost: ws-other.localhost\r\nCookie: ${cookies.other}\r\n\r\n`);
    await until(() => c.text.includes('"n":2'), 5000);
    t.notMatch(c.text, /\r\nkeep-alive:/i, 'answered by the warm lane (node:http would add Keep-Alive)');
    c.socket.write(`GET /headers HTTP/1.1\r\nHost: ws-warm.localhost\r\nCookie: ${cookie}\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Dest: empty\r\nAccept: application/json\r\n\r\n`);
    await until(() => c.closed, 5000);
    const second = c.text.slice(c.text.indexOf('HTTP/1.1', 1));
    t.match(second, /^HTTP\/1\.1 502 [^]*\r\nx-gateway-error: UPSTREAM_UNREACHABLE\r\n/i, 'a coded error, as for a workspace that did not answer');
    t.notMatch(second, /bravo|x-gateway-misdirected/i, "nothing of B's");
    t.equal(ups.other.requests.length, 2, 'the other workspace got only its own requests');
    await until(async () => (await stateOf(gw2, 'warm')) === 'stopped', 10_000);
    t.pass('the re-check found A gone');
  });

  t.test("a 421 without the marker (a student's own app) is passed on as it is, on both lanes", async (t) => {
    const host = 'ws-bravo.localhost';
    const byNode = await request(gw.port, { host, path: '/status?code=421', headers: { ...XHR, cookie: bCookie } });
    t.same([byNode.status, byNode.body], [421, 'status 421'], 'node:http');
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    t.teardown(() => agent.destroy());
    for (let i = 0; i < 2; i++) {
      const warm = await request(gw.port, { host, path: '/status?code=421', agent, headers: { ...XHR, cookie: bCookie } });
      t.same([warm.status, warm.body], [421, 'status 421'], `kept-alive request ${i + 1}`);
    }
    t.equal(await stateOf(gw, 'bravo'), 'running', 'no re-check: the workspace answered');
  });
});

/** A raw kept-alive connection to the gateway: what came back so far, and whether it closed. */
async function lane(t: { teardown(fn: () => unknown): void }, port: number) {
  const socket = net.connect(port, '127.0.0.1');
  t.teardown(() => socket.destroy());
  socket.on('error', () => undefined);
  const c = { socket, text: '', closed: false };
  socket.on('data', (d) => { c.text += d.toString('latin1'); });
  socket.on('close', () => { c.closed = true; });
  await new Promise<void>((r) => socket.once('connect', () => r()));
  return c;
}

t.test("a burst of requests on a stale route: each asks B once, the route is re-checked once", async (t) => {
  // B: another workspace at the address A's route names, refusing what is meant for A, counting.
  const seen: string[] = [];
  const b = http.createServer((req, res) => {
    seen.push(String(req.headers['x-gateway-workspace']));
    if (decide(req.headers['x-gateway-workspace'], 'bravo', req.url) !== 'allow') { refuse(res); return; }
    res.end('bravo');
  });
  await new Promise<void>((r) => b.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => { b.closeAllConnections(); b.close(() => r()); }));
  // The provisioner no longer knows A (its task is gone); it counts how often it is asked. The clock
  // stands still, so a re-check is never due again during the test (RECHECK_EVERY_MS).
  const describes: string[] = [];
  const provisioner: Provisioner = {
    kind: 'fake', start: () => Promise.reject(new Error('not in this test')), stop: async () => undefined,
    describe: async (id) => { describes.push(id); return undefined; }, list: async () => [], close: async () => undefined,
  };
  const gw = await startTestGateway({ provisioner, clock: createManualClock(Date.now()) });
  t.teardown(() => gw.close());
  await routedTo(gw, 'alpha', { host: '127.0.0.1', port: (b.address() as net.AddressInfo).port });
  const cookie = await gw.cookie('alpha');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  t.teardown(() => agent.destroy());
  const burst = () => Promise.all(Array.from({ length: 4 }, (_, i) =>
    request(gw.port, { host: 'ws-alpha.localhost', path: `/r${i}`, agent, headers: { ...XHR, cookie } })));
  const answers = [...await burst(), ...await burst()];
  const refused = answers.filter((a) => a.headers['x-gateway-error'] === 'UPSTREAM_UNREACHABLE');
  t.ok(refused.length >= 1, 'at least the first is refused as unreachable');
  for (const a of answers) t.ok(a.status === 502 || a.status === 503, `a coded error (${a.headers['x-gateway-error']}), never B's answer`);
  t.equal(seen.length, refused.length, 'B asked once per refused request: no retry');
  t.ok(seen.every((w) => w === 'alpha'), 'each named for A');
  await until(async () => (await stateOf(gw, 'alpha')) === 'stopped', 10_000);
  t.same(describes, ['alpha'], 'one re-check');
  const errors = gw.logs.filter((l) => l.event === 'upstream.error');
  t.equal(errors.length, refused.length, 'one log line per refused request');
  t.match(await gw.metrics.registry.metrics(), new RegExp(`upstream_errors_total\\{code="UPSTREAM_UNREACHABLE"\\} ${refused.length}\\n`), 'counted as unreachable');
});
