// Which workspace a request is for (cross-tenant misrouting): the gateway names it in
// x-gateway-workspace on every request it forwards, on both lanes and on WebSocket upgrades, and a
// client can never set that field itself. The workspace side refuses a request meant for another.
import http from 'node:http';
import t from 'tap';
import { XHR, request } from './helpers/gateway.js';
import { gatewayWithRecordedWorkspaces, type Recorded } from './helpers/upstream.js';
import { connected, openWs } from './helpers/ws.js';

/** Every x-gateway-workspace value the workspace received, in order. */
const named = (r: Recorded) => {
  const out: string[] = [];
  for (let i = 0; i < r.rawHeaders.length; i += 2) if (r.rawHeaders[i].toLowerCase() === 'x-gateway-workspace') out.push(r.rawHeaders[i + 1]);
  return out;
};

t.test('the gateway names the workspace a request is for, and only the gateway does', async (t) => {
  const { gw, ups, cookies } = await gatewayWithRecordedWorkspaces(t, ['alpha']);
  const host = 'ws-alpha.localhost';
  // Two fields of its own, as a client may send them.
  const spoof = { 'x-gateway-workspace': ['beta', 'gamma'] };

  // node:http's path: a connection that closes after its one request.
  const byNode = await request(gw.port, { host, path: '/node', headers: { cookie: cookies.alpha, ...XHR, ...spoof } });
  t.equal(byNode.status, 200);
  // The warm lane: the same request again on a kept-alive connection, once the route is cached.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  for (const path of ['/warm-1', '/warm-2']) {
    const r = await request(gw.port, { host, path, agent, headers: { cookie: cookies.alpha, ...XHR, ...spoof } });
    t.equal(r.status, 200, path);
  }
  // A WebSocket upgrade (node:http's client makes the handshake).
  const ws = await connected(openWs(gw.port, '/socket', { cookie: cookies.alpha, host, headers: { 'X-Gateway-Workspace': 'beta' } }));
  ws.terminate();

  const seen = ups.alpha.requests;
  t.same(seen.map((r) => r.url), ['/node', '/warm-1', '/warm-2', '/socket']);
  for (const r of seen) t.same(named(r), ['alpha'], `${r.url}: exactly one, the workspace's own id, the client's dropped`);
});
