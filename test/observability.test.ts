// Issue 6 end to end: a real Prometheus scrapes two in-process gateways (one starts the demo
// workspace, one whose code-server is /bin/false so its starts really fail), and the test reads
// the values back through Prometheus's query API. Then: promtool accepts the exposition with no
// warnings, label cardinality does not grow with 1,000 workspaces, and the JSON logs carry the
// request id and no credential.
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import t from 'tap';
import { createGateway } from '../gateway/app.js';
import { systemClock } from '../gateway/clock.js';
import { loggerFromConfig } from '../gateway/compose.js';
import { loadConfig, type Env } from '../gateway/config.js';
import { createMetrics } from '../gateway/metrics.js';
import { createMemoryStore } from '../gateway/store/memory.js';
import { createLocalProvisioner } from '../provisioner/local.js';
import { NAVIGATE, TEST_ADMIN_TOKEN, TEST_SECRET, XHR, gatewayCookie, request, waitRunning } from './helpers/gateway.js';
import { promtoolCheckMetrics, startPrometheus, type Sample } from './helpers/prometheus.js';
import { startRecordingUpstream } from './helpers/upstream.js';
import { closed, connected, nextMessage, openWs } from './helpers/ws.js';

/** A gateway as main.ts builds one (default process metrics, secrets given to the logger), logs captured. */
async function startObservedGateway(env: Env) {
  const dataDir = mkdtempSync(join(tmpdir(), 'wsgw-obs-'));
  const config = loadConfig({
    GATEWAY_PORT: '0', ADMIN_PORT: '0', LOG_LEVEL: 'debug', GATEWAY_SECRET: TEST_SECRET, ADMIN_TOKEN: TEST_ADMIN_TOKEN,
    LOCAL_DATA_DIR: dataDir, DEMO_READY_DELAY: '0ms', REAPER: 'off', ...env,
  });
  let text = '';
  const sink = new Writable({ write(chunk, _enc, cb) { text += chunk.toString(); cb(); } });
  const logger = loggerFromConfig(config, sink);
  const metrics = createMetrics({ enabled: true, defaultMetrics: true });
  const store = createMemoryStore(systemClock);
  const provisioner = createLocalProvisioner({
    workspace: config.local.workspace, dataDir, codeServerBin: config.local.codeServerBin, demoReadyDelayMs: config.local.demoReadyDelayMs,
    log: (obj, msg) => logger.info(obj, msg), parentEnv: { ...process.env, ...config.env },
  });
  const gateway = await createGateway({ config, store, provisioner, metrics, logger });
  const { gatewayPort, adminPort } = await gateway.listen();
  return {
    gateway, store, metrics, port: gatewayPort, adminPort,
    /** A session cookie for `id`, under the name this gateway reads. */
    cookie: (id: string) => gatewayCookie(gateway, config, id),
    logText: () => text,
    logLines: () => text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>),
    exposition: async () => (await request(adminPort, { host: '127.0.0.1', path: '/metrics' })).body,
    async close() {
      await gateway.close();
      await provisioner.close();
      await store.close();
      metrics.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Series (sample lines) per metric family prefix, from an exposition text. */
const series = (text: string, prefix: RegExp) => text.split('\n').filter((l) => l && !l.startsWith('#') && prefix.test(l));
const one = (s: Sample[]) => (s.length === 1 ? s[0].value : NaN);

t.test('metrics through a real Prometheus, promtool, cardinality and logs', async (t) => {
  const a = await startObservedGateway({ LOCAL_WORKSPACE: 'demo' });
  t.teardown(() => a.close());
  const b = await startObservedGateway({ LOCAL_WORKSPACE: 'code-server', CODE_SERVER_BIN: '/bin/false' });
  t.teardown(() => b.close());
  const prom = await startPrometheus([
    { address: `127.0.0.1:${a.adminPort}`, labels: { gw: 'a' } },
    { address: `127.0.0.1:${b.adminPort}`, labels: { gw: 'b' } },
  ]);
  t.teardown(() => prom.close());

  // A real sign-in: the one-time link from the admin API, then the session cookie it sets.
  const link = await request(a.adminPort, {
    host: '127.0.0.1', method: 'POST', path: '/api/workspaces/demo/login-url', body: '{}',
    headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}`, 'content-type': 'application/json' },
  });
  t.equal(link.status, 200);
  const loginUrl = new URL(JSON.parse(link.body).url as string);
  const loginToken = loginUrl.searchParams.get('token')!;
  const signin = await request(a.port, { path: `${loginUrl.pathname}${loginUrl.search}`, headers: NAVIGATE });
  t.equal(signin.status, 303);
  const cookie = String(signin.headers['set-cookie']).split(';')[0];
  const sessionValue = cookie.slice(cookie.indexOf('=') + 1);
  // The same link again is a replay; a garbage token is malformed: two sign-in failures.
  t.equal((await request(a.port, { path: `${loginUrl.pathname}${loginUrl.search}`, headers: NAVIGATE })).status, 401);
  t.equal((await request(a.port, { path: '/__gateway/login?token=not-a-jwt', headers: NAVIGATE })).status, 401);

  // Cold start of the demo workspace.
  const cold = await request(a.port, { headers: { ...NAVIGATE, cookie } });
  t.equal(cold.headers['x-gateway-cold-start'], '1', 'a cold-start response says so');
  const coldRequestId = String(cold.headers['x-request-id']);
  t.match(coldRequestId, /^[0-9a-f]{12}-[0-9a-z]+$/, "the request id: this process's prefix and a counter (gateway/request-id.ts)");
  t.equal((await waitRunning(a.port, cookie)).state, 'running');

  // Warm traffic: pages, a workspace 500, and one WebSocket held open.
  for (let i = 0; i < 5; i++) t.equal((await request(a.port, { headers: { ...XHR, cookie } })).status, 200);
  t.equal((await request(a.port, { path: '/status?code=500', headers: { ...XHR, cookie } })).status, 500);
  const ws = await connected(openWs(a.port, '/echo', { cookie }));
  ws.send('hello');
  t.equal((await nextMessage(ws)).data.toString(), 'hello');

  // A start that really fails: code-server is /bin/false on gateway b.
  const failCookie = await b.cookie('broken');
  t.equal((await request(b.port, { host: 'ws-broken.localhost', headers: { ...NAVIGATE, cookie: failCookie } })).headers['x-gateway-cold-start'], '1');
  t.equal((await waitRunning(b.port, failCookie, 'ws-broken.localhost')).state, 'failed');

  t.test('values read back through the Prometheus query API', async (t) => {
    await prom.waitFor('up{job="workspace-gateway"}', (s) => s.length === 2 && s.every((x) => x.value === 1));
    t.equal(one(await prom.waitFor('sum(wsgw_cold_starts_total{gw="a",outcome="ready"})', (s) => one(s) === 1)), 1, 'one cold start ready');
    t.equal(one(await prom.waitFor('sum(wsgw_cold_starts_total{gw="b",outcome="failed"})', (s) => one(s) === 1)), 1, 'one cold start failed');
    const failures = await prom.waitFor('wsgw_start_failures_total{gw="b"} > 0', (s) => s.length === 1);
    t.not(failures[0].metric.code, 'other', `failure code ${failures[0].metric.code} is a StartFailure code`);
    t.ok(failures[0].metric.stage, 'with the stage it reached');
    t.equal(one(await prom.waitFor('wsgw_cold_start_duration_seconds_count{gw="a"}', (s) => one(s) === 1)), 1);
    const stages = await prom.waitFor('wsgw_start_stage_duration_seconds_count{gw="a"} > 0', (s) => s.length >= 1);
    t.ok(stages.every((s) => ['queued', 'provisioning', 'pending', 'running', 'probing'].includes(s.metric.stage)), 'per-stage histograms');
    t.ok(one(await prom.waitFor('sum(wsgw_proxy_requests_total{gw="a",kind="web",status_class="2xx"})', (s) => one(s) >= 5)) >= 5);
    t.equal(one(await prom.waitFor('sum(wsgw_proxy_requests_total{gw="a",kind="web",status_class="5xx"})', (s) => one(s) === 1)), 1, 'a workspace 500 is counted as 5xx');
    t.equal(one(await prom.waitFor('sum(wsgw_proxy_requests_total{gw="a",kind="ws",status_class="1xx"})', (s) => one(s) === 1)), 1);
    t.equal(one(await prom.waitFor('wsgw_websockets_open{gw="a"}', (s) => one(s) === 1)), 1, 'the open WebSocket');
    const p99 = one(await prom.waitFor('histogram_quantile(0.99, sum by (le) (wsgw_proxy_request_duration_seconds_bucket{gw="a"}))', (s) => s.length === 1 && Number.isFinite(s[0].value)));
    t.ok(p99 > 0 && p99 < 10, `warm p99 ${p99}s`);
    t.ok(one(await prom.waitFor('sum(wsgw_route_cache_lookups_total{gw="a",result="hit"})', (s) => one(s) >= 1)) >= 1, 'route cache hits');
    t.equal(one(await prom.waitFor('wsgw_workspaces{gw="a",state="running"}', (s) => one(s) === 1)), 1, 'running workspaces from the store');
    t.equal(one(await prom.waitFor('wsgw_workspaces{gw="b",state="running"}', (s) => one(s) === 0)), 0);
    await prom.waitFor('wsgw_store_up', (s) => s.length === 2 && s.every((x) => x.value === 1));
    t.pass('store_up is 1 on both');
    t.equal(one(await prom.waitFor('sum(wsgw_signin_failures_total{gw="a",reason="replayed"})', (s) => one(s) === 1)), 1);
    t.equal(one(await prom.waitFor('sum(wsgw_signin_failures_total{gw="a",reason="malformed"})', (s) => one(s) === 1)), 1);
    t.ok(one(await prom.waitFor('process_resident_memory_bytes{gw="a"}', (s) => one(s) > 0)) > 0, "Node's default process metrics");
    ws.close();
    await closed(ws);
    t.equal(one(await prom.waitFor('wsgw_websockets_open{gw="a"}', (s) => one(s) === 0)), 0, 'back to 0 when it closes');
  });

  t.test('promtool check metrics: no errors, no warnings', async (t) => {
    for (const gw of [a, b]) {
      const r = promtoolCheckMetrics(await gw.exposition());
      t.equal(r.status, 0, r.output);
      t.equal(r.output.trim(), '', 'nothing printed');
    }
  });

  t.test('series count unchanged by traffic to 1,000 workspaces', async (t) => {
    // One workspace server for every id, answering whichever workspace is named: the demo workspace
    // refuses requests named for another one (x-gateway-workspace, 421).
    const up = await startRecordingUpstream();
    const endpoint = { host: '127.0.0.1', port: up.port };
    const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
    t.teardown(async () => { agent.destroy(); await up.close(); });
    // Each id: running (pointing at that server) with one warm request on its own path, and a
    // program request (its session's id) to a stopped workspace, which the gateway refuses itself.
    const traffic = async (id: string, stoppedId: string) => {
      const now = Date.now();
      await a.store.putWorkspace({ id, state: 'running', generation: 1, since: now, endpoint, startedAt: now });
      const host = `ws-${id}.localhost`;
      const c = await a.cookie(id);
      const warm = await request(a.port, { host, path: `/x/${id}?q=${id}`, headers: { ...XHR, cookie: c }, agent });
      if (warm.status !== 404 && warm.status !== 200) throw new Error(`${id}: ${warm.status}`);
      const sc = await a.cookie(stoppedId);
      await request(a.port, { host: `ws-${stoppedId}.localhost`, headers: { ...XHR, cookie: sc }, agent });
    };
    for (let i = 0; i < 3; i++) await traffic(`warmup${i}`, `warmupstopped${i}`);
    const ours = /^(wsgw_|process_)/;
    const before = series(await a.exposition(), ours);
    const ids = Array.from({ length: 1000 }, (_, i) => `w${String(i).padStart(4, '0')}`);
    for (let i = 0; i < ids.length; i += 32) await Promise.all(ids.slice(i, i + 32).map((id) => traffic(id, `s${id}`)));
    const text = await a.exposition();
    const after = series(text, ours);
    t.equal(after.length, before.length, `${before.length} wsgw_/process_ series before and after`);
    t.same(after.map((l) => l.replace(/ \S+$/, '')), before.map((l) => l.replace(/ \S+$/, '')), 'the same series');
    t.notOk(/w0\d{3}|127\.0\.0\.1|\/x\//.test(text), 'no workspace id, address or path anywhere in the exposition');
    const routeHits = await prom.waitFor('sum(wsgw_proxy_requests_total{gw="a",kind="web"})', (s) => one(s) >= 1000);
    t.ok(one(routeHits) >= 1000, 'the 1,000 requests were proxied');
  });

  t.test('logs: JSON, request id on start.requested, no credential anywhere', async (t) => {
    const lines = a.logLines();
    t.ok(lines.length > 5, 'every line is JSON');
    const requested = lines.find((l) => l.event === 'start.requested' && l.workspaceId === 'demo');
    t.ok(requested, 'start.requested logged');
    t.equal(requested?.requestId, coldRequestId, 'with the request id of the cold-start response');
    t.equal(typeof requested?.generation, 'number');
    const ready = lines.find((l) => l.event === 'start.ready' && l.workspaceId === 'demo');
    t.equal(ready?.requestId, coldRequestId, 'start.ready carries it too');
    const failed = b.logLines().find((l) => l.event === 'start.failed' && l.workspaceId === 'broken');
    t.ok(failed?.code, 'start.failed with its code');
    t.ok(lines.some((l) => l.event === 'admin.request' && l.route === '/api/workspaces/:id/login-url'), 'admin requests are logged');
    for (const [name, text] of [['a', a.logText()], ['b', b.logText()]] as const) {
      for (const [what, secret] of [['session cookie', sessionValue], ['login token', loginToken], ['GATEWAY_SECRET', TEST_SECRET], ['ADMIN_TOKEN', TEST_ADMIN_TOKEN]]) {
        t.notOk(text.includes(secret), `gateway ${name}: no ${what} in the logs`);
      }
    }
  });
});
