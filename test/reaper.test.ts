// Two gateways and two reapers on one Redis, with a manual clock (issue 5): idle workspaces are
// stopped exactly once, an active one never; a dead leader is replaced; after Redis is emptied,
// nothing is reaped until a full idle window has passed since the workspace was seen again.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { createManualClock } from '../gateway/clock.js';
import { createLogger } from '../gateway/log.js';
import { createMetrics } from '../gateway/metrics.js';
import { LEADER_KEY, createReaper } from '../reaper/reaper.js';
import { NAVIGATE, XHR, request, startTestGateway, waitRunning } from './helpers/gateway.js';
import { startRedis } from './helpers/redis.js';

const IDLE = 15 * 60_000;

t.test('two reapers on one Redis', async (t) => {
  const redis = await startRedis();
  const dataDir = mkdtempSync(join(tmpdir(), 'wsgw-reap-'));
  const clock = createManualClock(Date.now());
  const env = { IDLE_TIMEOUT: '15m', ACTIVITY_FLUSH_INTERVAL: '1h' };
  const a = await startTestGateway({ redisUrl: redis.url, clock, dataDir, env });
  const b = await startTestGateway({ redisUrl: redis.url, clock, dataDir, env });
  t.teardown(async () => { await a.close(); await b.close(); await redis.stop(); rmSync(dataDir, { recursive: true, force: true }); });
  const log = createLogger('silent');
  const reaper = (gw: typeof a, ttl = 60_000) => createReaper({
    store: gw.store, workspaces: gw.gateway.workspaces, clock, metrics: createMetrics({ enabled: false, defaultMetrics: false }), log,
    instanceId: `reaper-${gw.port}`, idleTimeoutMs: IDLE, maxSessionMs: 12 * 3_600_000, intervalMs: 1000, autoStart: false, leaderLeaseTtlMs: ttl,
  });

  // Three running workspaces, started through the gateways.
  const ids = ['idle1', 'idle2', 'busy'];
  const cookies: Record<string, string> = {};
  for (const id of ids) {
    cookies[id] = await a.cookie(id);
    await request(a.port, { host: `ws-${id}.localhost`, headers: { ...NAVIGATE, cookie: cookies[id] } });
    await waitRunning(a.port, cookies[id], `ws-${id}.localhost`);
  }

  t.test('each idle workspace stopped exactly once, the active one never', async (t) => {
    const ra = reaper(a);
    const rb = reaper(b);
    clock.advance(IDLE - 60_000);
    // The student keeps working on "busy" through replica b.
    await request(b.port, { host: 'ws-busy.localhost', path: '/headers', headers: { ...XHR, cookie: cookies.busy } });
    await b.gateway.activity.flush();
    clock.advance(60_001);
    const [pa, pb] = await Promise.all([ra.pass(), rb.pass()]);
    t.equal([pa, pb].filter((p) => p.leader).length, 1, 'one leader');
    const stopped = [...pa.stopped, ...pb.stopped].map((s) => s.id).sort();
    t.same(stopped, ['idle1', 'idle2']);
    t.equal(a.provisioner.stops.length + b.provisioner.stops.length, 2, 'each stopped once');
    for (const id of ['idle1', 'idle2']) {
      const r = await a.store.getWorkspace(id);
      t.equal(r?.state, 'stopped');
      t.equal(r?.reasonCode, 'idle');
    }
    t.equal((await a.store.getWorkspace('busy'))?.state, 'running', 'the active workspace keeps running');
    const again = await Promise.all([ra.pass(), rb.pass()]);
    t.same(again.flatMap((p) => p.stopped), [], 'a second pass stops nothing more');

    // After reaping, the open tab's requests get 503 and never restart the workspace.
    const xhr = await request(a.port, { host: 'ws-idle1.localhost', headers: { ...XHR, cookie: cookies.idle1 } });
    t.equal(xhr.headers['x-gateway-error'], 'WORKSPACE_STOPPED');
    const page = await request(a.port, { host: 'ws-idle1.localhost', headers: { ...NAVIGATE, cookie: cookies.idle1 } });
    t.match(page.body, /"previousStop":"idle"/, 'the starting page says it was stopped after being idle');
    await waitRunning(a.port, cookies.idle1, 'ws-idle1.localhost');
    await ra.close();
    await rb.close();
  });

  t.test('the leader dies, another takes over', async (t) => {
    const dead = reaper(a, 300);
    t.equal((await dead.pass()).leader, true);
    const heir = reaper(b, 300);
    t.equal((await heir.pass()).leader, false, 'not while the lease is held');
    // The dead leader never renews (it is gone); its lease lapses.
    await new Promise((r) => setTimeout(r, 400));
    t.equal((await heir.pass()).leader, true, 'the lease moved');
    await heir.close();
  });

  t.test('a lease already held in its own name (an acquire whose answer was lost) is taken up, not waited out', async (t) => {
    const r = reaper(a);
    t.equal(await a.store.acquireLease(LEADER_KEY, `reaper-${a.port}`, 60_000), true);
    t.equal((await r.pass()).leader, true);
    await r.close();
    t.equal(await a.store.leaseOwner(LEADER_KEY), undefined, 'and released on close');
  });

  t.test('Redis restarted empty: nothing reaped for a full idle window', async (t) => {
    await redis.restart();
    await new Promise((r) => setTimeout(r, 1200)); // ioredis reconnects within its 1 s ceiling
    const r = reaper(b);
    clock.advance(2 * IDLE);
    t.same((await r.pass()).stopped, [], 'activity unknown: nothing reaped');
    // The student's next page load finds the workspace running (describe) and records it again.
    const adopted = b.gateway.workspaces.nextChange('busy', 10_000);
    const page = await request(b.port, { host: 'ws-busy.localhost', headers: { ...NAVIGATE, cookie: cookies.busy } });
    t.equal((await adopted)?.state, 'running', 'recorded again in the store');
    t.match(page.body, /Demo workspace <code>busy<\/code>/, 'found again, not restarted');
    t.equal(b.provisioner.starts.length + a.provisioner.starts.length, 4, 'no second start');
    clock.advance(IDLE - 1000);
    t.same((await r.pass()).stopped, [], 'a full idle window from the moment it was seen');
    // A workspace nobody requests is recorded again by the periodic reconcile (it runs on a: its process).
    t.equal(await a.store.getWorkspace('idle1'), undefined, 'idle1 is unknown to the emptied store');
    await a.gateway.reconcile();
    t.equal((await a.store.getWorkspace('idle1'))?.state, 'running', 'adopted from the provisioner, not started again');
    t.ok((await a.store.getActivity('idle1')) !== undefined, 'with a full idle window from now');
    clock.advance(2000);
    const last = await r.pass();
    t.same(last.stopped.map((s) => s.id), ['busy'], JSON.stringify(last));
    await r.close();
  });
});
