// Issue 7, scenario 3: the cold-start herd. 1,000 browsers load the page of one stopped workspace at
// the same moment; the gateway (a child process exactly as deployed: Redis store, metrics and
// activity tracking on) must start it exactly once and serve all of them the workspace's page soon
// after it is ready. The workspace is the demo workspace (local provisioner) answering its health
// check only after DEMO_READY_DELAY; the bench finds its port in the gateway's log and probes its
// /healthz itself every 5 ms, so "ready" is the workspace's moment, not the gateway's opinion of it.
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRedis } from '../../test/helpers/redis.js';
import type { Figure, ScenarioResult, Target } from '../result.js';
import { pageLoad, type PageLoadResult } from './b-browser.js';
import { cookieMinter, quantile, round, sleep, startGatewayChild, type GatewayChild } from './b-util.js';

export interface ColdHerdOptions { quick: boolean; log: (s: string) => void; browsers?: number; readyDelayMs?: number }

function healthy(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/healthz', agent: false, timeout: 500 }, (res) => { res.resume(); resolve(res.statusCode === 200); });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

export async function run(opts: ColdHerdOptions): Promise<ScenarioResult> {
  const browsers = opts.browsers ?? 1000;
  const readyDelayMs = opts.readyDelayMs ?? 3000;
  const id = 'herd';
  const host = `ws-${id}.localhost`;
  const redis = await startRedis();
  const dataDir = mkdtempSync(join(tmpdir(), 'wsgw-bench-herd-'));
  let gw: GatewayChild | undefined;
  try {
    gw = await startGatewayChild({
      REDIS_URL: redis.url, LOCAL_WORKSPACE: 'demo', LOCAL_DATA_DIR: dataDir, DEMO_READY_DELAY: `${readyDelayMs}ms`,
    });
    const g = gw;
    const mint = cookieMinter();
    const cookies = await Promise.all(Array.from({ length: browsers }, () => mint(id)));
    opts.log(`cold-herd: ${browsers} page loads of one stopped workspace (ready after ${readyDelayMs} ms)`);

    const deadlineMs = readyDelayMs + 30_000;
    const t0 = Date.now();
    const loads: Promise<PageLoadResult>[] = cookies.map((cookie) => pageLoad({ port: g.port, host, cookie, deadlineMs }));

    // The workspace's own readiness, seen from outside: its port from the provisioner's log line.
    const readyAt = (async () => {
      const started = await g.waitForLog((l) => l.msg === 'workspace process started' && l.workspaceId === id, deadlineMs);
      const port = Number(started.port);
      const until = Date.now() + deadlineMs;
      while (Date.now() < until) {
        if (await healthy(port)) return Date.now();
        await sleep(5);
      }
      return NaN;
    })();
    const results = await Promise.all(loads);
    const tReady = await readyAt;
    const readyLine = g.logs.find((l) => l.event === 'start.ready' && l.workspaceId === id);
    const tNoticed = readyLine ? Number(readyLine.time) : NaN;
    const starts = g.logs.filter((l) => l.event === 'start.requested').length;
    const served = results.filter((r) => r.ok);
    const servedAfter = served.map((r) => r.servedAt! - tReady);
    const lastServed = Math.max(...served.map((r) => r.servedAt!));
    const withErrors = results.filter((r) => r.errors.length > 0);
    const errorCodes = new Map<string, number>();
    for (const r of results) for (const e of r.errors) errorCodes.set(e, (errorCodes.get(e) ?? 0) + 1);
    const rss = await g.rss();

    const noticed = tNoticed - tReady;
    const afterNoticed = lastServed - tNoticed;
    const figures: Figure[] = [
      { name: 'page loads', value: browsers, unit: 'count' },
      { name: 'served the workspace page', value: served.length, unit: 'count' },
      { name: 'starts', value: starts, unit: 'count' },
      { name: 'page loads that met an error page', value: withErrors.length, unit: 'count' },
      { name: 'first page load -> workspace ready', value: tReady - t0, unit: 'ms' },
      { name: 'ready -> gateway noticed (start.ready)', value: noticed, unit: 'ms' },
      { name: 'ready -> first served', value: Math.min(...servedAfter), unit: 'ms' },
      { name: 'ready -> p50 served', value: quantile(servedAfter, 0.5), unit: 'ms' },
      { name: 'ready -> p99 served', value: quantile(servedAfter, 0.99), unit: 'ms' },
      { name: 'ready -> all served', value: lastServed - tReady, unit: 'ms' },
      { name: 'noticed -> all served (gateway overhead)', value: afterNoticed, unit: 'ms' },
      { name: 'status long-polls per page load (mean)', value: round(results.reduce((s, r) => s + r.polls, 0) / browsers, 2), unit: 'count' },
      { name: 'gateway RSS after', value: round(rss / 1048576), unit: 'MB' },
    ];
    const targets: Target[] = [
      { name: 'cold-herd: exactly one start', value: starts, limit: 1, unit: 'count', op: '<=', met: starts === 1 },
      { name: 'cold-herd: all page loads served', value: served.length, limit: browsers, unit: 'count', op: '>=', met: served.length === browsers },
      { name: 'cold-herd: readiness noticed', value: noticed, limit: 250, unit: 'ms', op: '<=', met: noticed <= 250 },
      { name: 'cold-herd: gateway overhead beyond readiness (noticed -> all served)', value: afterNoticed, limit: 100, unit: 'ms', op: '<=', met: afterNoticed <= 100 },
    ];
    const notes = [
      `cold-herd: ${browsers} simulated browsers (own keep-alive connections, navigation headers, session cookie), gateway child process with Redis store, metrics and activity tracking on, LOCAL_WORKSPACE=demo, DEMO_READY_DELAY=${readyDelayMs}ms.`,
      'cold-herd: "ready" is the first 200 from the bench\'s own /healthz probe (every 5 ms) of the workspace port named in the gateway log; "noticed" is the gateway\'s start.ready log time; "overhead" is noticed -> the last of all browsers served the workspace page (long-poll answered, page reloaded through the proxy).',
    ];
    if (errorCodes.size) notes.push(`cold-herd: error pages/poll errors met: ${[...errorCodes].map(([k, v]) => `${k} x${v}`).join(', ')}`);
    for (const t of targets) opts.log(`  ${t.met ? 'met   ' : 'MISSED'} ${t.name}: ${t.value} ${t.unit} (${t.op} ${t.limit})`);
    return { scenario: 'cold-start herd', systems: [{ system: 'gateway', figures }], targets, notes };
  } finally {
    await gw?.close();
    await redis.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}
