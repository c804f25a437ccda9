// The entry points' own process policy, on the built entry points in their own processes: the
// standalone reaper's shutdown is bounded by SHUTDOWN_TIMEOUT like the gateway's, and a fault the code
// did not catch (an unhandled rejection, an uncaught exception) is one structured log line and a
// graceful drain, not a bare stack on stderr with every connection dropped at once.
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { createRedisStore } from '../gateway/store/redis.js';
import { startFakeAws } from './fake-aws/index.js';
import { fakeAwsEnv } from './fake-aws/config.js';
import { NAVIGATE, TEST_SECRET, request, sessionCookie, until, waitRunning } from './helpers/gateway.js';
import { spawnGateway, spawnReaper } from './helpers/process.js';
import { startRedis } from './helpers/redis.js';
import { closed, connected, openWs } from './helpers/ws.js';

/** `node --import` of a fixture that provokes a fault on SIGUSR2: no hook in the product itself. */
const PROVOKE = { NODE_OPTIONS: `--import=${new URL('./fixtures/process/provoke-fault.js', import.meta.url).href}` };

/** The exit code, or 'still running' when the process has not exited within `ms` (a liveness bound, not a timing). */
const exitWithin = (exited: Promise<number | null>, ms: number) => Promise.race([
  exited, new Promise<'still running'>((r) => { setTimeout(() => r('still running'), ms).unref(); }),
]);

t.test('standalone reaper: SIGTERM during a pass stuck on AWS exits non-zero after SHUTDOWN_TIMEOUT, once', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const fake = await startFakeAws();
  t.teardown(() => fake.close());
  // Every AWS call hangs; the per-call deadline is far beyond the shutdown limit.
  fake.fault('*', 'stall');
  const store = await createRedisStore({ url: redis.url, prefix: 'wsgw:', commandTimeoutMs: 1000 });
  t.teardown(() => store.close());
  const hourAgo = Date.now() - 3_600_000;
  await store.putWorkspace({
    id: 'alice', state: 'running', generation: 1, since: hourAgo, startedAt: hourAgo,
    handle: `arn:aws:ecs:${fake.region}:123456789012:task/workspaces/0123456789abcdef0123456789abcdef`,
  });
  await store.recordActivity([['alice', hourAgo]]);

  const reaper = await spawnReaper({
    ...fakeAwsEnv(fake), REDIS_URL: redis.url, IDLE_TIMEOUT: '1m', REAP_INTERVAL: '200ms', SHUTDOWN_TIMEOUT: '6s', AWS_CALL_TIMEOUT: '10m',
  });
  t.teardown(() => { if (reaper.child.exitCode === null && reaper.child.signalCode === null) reaper.child.kill('SIGKILL'); });
  await until(() => fake.calls.some((c) => c.outcome === 'fault'), 20_000);
  t.pass('a pass is stuck in an AWS call');

  reaper.child.kill('SIGTERM');
  reaper.child.kill('SIGTERM');
  const code = await exitWithin(reaper.exited, 30_000);
  t.not(code, 'still running', `the reaper exits (stderr: ${reaper.stderr().slice(-300)})`);
  t.not(code, 0, 'non-zero: the close did not finish');
  t.equal(reaper.logs.filter((l) => l.event === 'shutdown.timeout').length, 1, 'one structured line says why');
  t.equal(reaper.logs.filter((l) => l.event === 'shutdown').length, 1, 'the second SIGTERM started no second close');
});

for (const [fault, event] of [['rejection', 'process.unhandled_rejection'], ['exception', 'process.uncaught_exception']] as const) {
  t.test(`gateway: an unhandled ${fault} is one structured line, then the SIGTERM drain, then exit 1`, async (t) => {
    const dataDir = mkdtempSync(join(tmpdir(), 'wsgw-fault-'));
    t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
    const gw = await spawnGateway({ ...PROVOKE, PROVOKE_FAULT: fault, LOCAL_DATA_DIR: dataDir, DRAIN_PERIOD: '2s' });
    t.teardown(() => gw.stop('SIGKILL'));
    const cookie = await sessionCookie('demo');
    await request(gw.port, { headers: { ...NAVIGATE, cookie } });
    t.equal((await waitRunning(gw.port, cookie)).state, 'running');
    const ws = await connected(openWs(gw.port, '/echo', { cookie }));
    const wsClosed = closed(ws);

    // A response in flight (100 server-sent events, 20 ms apart) when the fault happens.
    const events = 100;
    const streamed = new Promise<{ status: number; body: string; complete: boolean }>((resolve) => {
      let provoked = false;
      const req = http.get({ host: '127.0.0.1', port: gw.port, path: `/sse?count=${events}`, agent: false, headers: { host: 'ws-demo.localhost', cookie } }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => {
          body += c.toString();
          if (!provoked) { provoked = true; gw.child.kill('SIGUSR2'); }
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, complete: res.complete }));
        res.on('error', () => resolve({ status: res.statusCode ?? 0, body, complete: false }));
      });
      req.on('error', () => resolve({ status: 0, body: '', complete: false }));
    });

    const line = await gw.waitFor((l) => l.event === event);
    t.equal(line.level, 50, 'at error level');
    t.notOk(JSON.stringify(line).includes(TEST_SECRET), 'scrubbed by the configured logger');
    t.match(line, { err: { message: /provoked fault/, stack: /provoke-fault/ } }, "the error's message and stack");
    const sse = await streamed;
    t.equal(sse.status, 200);
    t.ok(sse.complete, 'the in-flight response completes');
    t.equal(sse.body.match(/^data: /gm)?.length, events, 'every event delivered');
    t.equal((await wsClosed).code, 1001, 'open WebSockets closed as going away, as on SIGTERM');
    t.equal(await gw.exited, 1, `exit non-zero (stderr: ${gw.stderr().slice(-300)})`);
    t.match(gw.logs.find((l) => l.event === 'shutdown'), { cause: event }, 'the drain says what started it');
  });
}

t.test('standalone reaper: an unhandled rejection is one structured line and exit 1', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const reaper = await spawnReaper({ ...PROVOKE, PROVOKE_FAULT: 'rejection', REDIS_URL: redis.url, REAP_INTERVAL: '10m' });
  t.teardown(() => { if (reaper.child.exitCode === null && reaper.child.signalCode === null) reaper.child.kill('SIGKILL'); });
  reaper.child.kill('SIGUSR2');
  const line = await reaper.waitFor((l) => l.event === 'process.unhandled_rejection');
  t.equal(line.level, 50);
  t.notOk(JSON.stringify(line).includes(TEST_SECRET), 'scrubbed');
  t.equal(await reaper.exited, 1);
  t.ok(reaper.logs.some((l) => l.event === 'stopped'), 'after a graceful close');
});
