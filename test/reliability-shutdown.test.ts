// The entry points' own process policy, on the built entry points in their own processes: the
// standalone reaper's shutdown is bounded by SHUTDOWN_TIMEOUT like the gateway's, and a fault the code
// did not catch (an unhandled rejection, an uncaught exception) is one structured log line and a
// graceful drain, not a bare stack on stderr with every connection dropped at once.
import t from 'tap';
import { createRedisStore } from '../gateway/store/redis.js';
import { startFakeAws } from './fake-aws/index.js';
import { fakeAwsEnv } from './fake-aws/config.js';
import { until } from './helpers/gateway.js';
import { spawnReaper } from './helpers/process.js';
import { startRedis } from './helpers/redis.js';

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
