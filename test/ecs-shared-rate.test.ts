// AWS rates the ECS API per account, not per gateway (issue 7, class surge): three replicas that
// draw their tokens from one bucket in Redis per AWS bucket (RunTask, RegisterTaskDefinition, and
// the categories of ecs-rates.ts) start a class together at AWS's rates, with their bursts, and the
// fake, which enforces them, throttles next to none of their calls. With a bucket each, the same
// three would ask for three times the rate.
import t from 'tap';
import { systemClock } from '../gateway/clock.js';
import { createRedisStore } from '../gateway/store/redis.js';
import { localTokens, sharedTokens } from '../provisioner/admission.js';
import { createEcsProvisioner } from '../provisioner/ecs.js';
import { startFakeAws } from './fake-aws/index.js';
import { fakeEcsOptions } from './fake-aws/config.js';
import { enrol, startRequest } from './fake-aws/harness.js';
import { startRedis } from './helpers/redis.js';

type Store = Awaited<ReturnType<typeof createRedisStore>>;

/** Every AWS bucket of a replica in `store`, as the entry point builds them (gateway/compose.ts). */
function sharedBuckets(store: Store, onFallback: (err: unknown) => void = () => {}) {
  return (name: string, rate: number, burst: number) =>
    sharedTokens({ take: () => store.takeToken(name, rate, burst) }, localTokens(systemClock, rate, burst), onFallback);
}

const STUDENTS = 120;
const RATE = 20;
const BURST = 20;

t.test('three replicas, one RunTask bucket', async (t) => {
  const redis = await startRedis();
  const fake = await startFakeAws({
    durations: { provisioningMs: 100, pendingMs: 100, stoppingMs: 50 },
    rateLimits: { RunTask: { rate: RATE, burst: BURST }, FargateLaunch: { rate: 20, burst: 100 } },
  });
  const ids = Array.from({ length: STUDENTS }, (_, i) => `class-${String(i).padStart(3, '0')}`);
  await enrol(fake, ids); // returning students: their task definitions exist
  const stores = await Promise.all([0, 1, 2].map(() => createRedisStore({ url: redis.url, prefix: 'rate:', commandTimeoutMs: 1000 })));
  const fallbacks: unknown[] = [];
  const replicas = stores.map((store) => createEcsProvisioner(fakeEcsOptions(fake, { awsCallTimeoutMs: 60_000 }), {
    clock: systemClock,
    tokens: sharedBuckets(store, (err) => fallbacks.push(err)),
  }));
  t.teardown(async () => {
    await Promise.all(replicas.map((p) => p.close()));
    await Promise.all(stores.map((s) => s.close()));
    await fake.close();
    await redis.stop();
  });

  const started = await Promise.allSettled(Array.from({ length: STUDENTS }, (_, i) =>
    replicas[i % 3].start(startRequest(ids[i], 1).req)));
  t.same(started.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason)), [], 'every workspace started');
  t.equal(fake.count('RunTask'), STUDENTS, 'one RunTask each');
  // Running at exactly AWS's rate, a call delayed on its way (event loop, loopback) can meet an
  // empty bucket at AWS and is retried; three bucket-per-replica gateways would meet it for most
  // calls past the burst.
  const throttled = fake.count('RunTask', 'throttled');
  t.ok(throttled <= STUDENTS / 10, `AWS throttled few of the three replicas' calls (${throttled} of ${fake.count('RunTask', 'any')})`);
  t.same(fallbacks, [], 'the shared bucket answered throughout');

  // Together at AWS's pace: the burst, then the rate.
  const at = fake.callsOf('RunTask', 'any').map((c) => c.at).sort((a, b) => a - b);
  const spanS = (at[at.length - 1] - at[0]) / 1000;
  const floorS = (STUDENTS - BURST) / RATE;
  t.ok(spanS >= floorS * 0.95, `no faster than the shared rate allows (${spanS.toFixed(2)} s for ${STUDENTS}, floor ${floorS} s)`);
});

t.test('three replicas, one RegisterTaskDefinition bucket: a new class is registered at AWS\'s 1 a second', async (t) => {
  const redis = await startRedis();
  const fake = await startFakeAws({ durations: { provisioningMs: 100, pendingMs: 100, stoppingMs: 50 } }); // RegisterTaskDefinition: 1/s, burst 20
  const stores = await Promise.all([0, 1, 2].map(() => createRedisStore({ url: redis.url, prefix: 'taskdef:', commandTimeoutMs: 1000 })));
  const replicas = stores.map((store) => createEcsProvisioner(fakeEcsOptions(fake, { awsCallTimeoutMs: 60_000 }), {
    clock: systemClock,
    tokens: sharedBuckets(store),
  }));
  t.teardown(async () => {
    await Promise.all(replicas.map((p) => p.close()));
    await Promise.all(stores.map((s) => s.close()));
    await fake.close();
    await redis.stop();
  });
  const n = 26;
  const started = await Promise.allSettled(Array.from({ length: n }, (_, i) => replicas[i % 3].start(startRequest(`fresh-${i}`, 1).req)));
  t.same(started.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason)), [], 'every new student started');
  t.equal(fake.count('RegisterTaskDefinition'), n, 'one family each');
  // As with RunTask above: at exactly AWS's rate a call delayed on its way can meet AWS's bucket a
  // moment early and is retried; three bucket-per-replica gateways would be throttled past the burst.
  const throttled = fake.count('RegisterTaskDefinition', 'throttled');
  t.ok(throttled <= 3, `AWS throttled few of the three replicas' registrations (${throttled})`);
  const at = fake.callsOf('RegisterTaskDefinition').map((c) => c.at).sort((a, b) => a - b);
  t.ok(at[n - 1] - at[0] >= (n - 20 - 0.5) * 1000, `the burst, then one a second (${at[n - 1] - at[0]} ms for ${n})`);
});

t.test('three fresh replicas meeting a returning class stay within AWS\'s read buckets together', async (t) => {
  // AWS's categories scaled down so the test is short: task definitions read at 10/s, tasks
  // described at 5/s; every replica is told the same (ECS_API_RATES), with a burst two tokens
  // smaller than AWS's so a call reaching AWS a moment early on a loaded machine is not throttled.
  const fake = await startFakeAws({
    durations: { provisioningMs: 100, pendingMs: 100, stoppingMs: 50 },
    rateLimits: { 'ecs:TaskDefinitionRead': { rate: 10, burst: 12 }, 'ecs:ClusterResourceRead': { rate: 5, burst: 7 } },
  });
  const redis = await startRedis();
  const n = 60;
  const ids = Array.from({ length: n }, (_, i) => `back-${String(i).padStart(2, '0')}`);
  await enrol(fake, ids); // families exist, but no replica has read them yet (a deploy overnight)
  const stores = await Promise.all([0, 1, 2].map(() => createRedisStore({ url: redis.url, prefix: 'reads:', commandTimeoutMs: 1000 })));
  const fallbacks: unknown[] = [];
  const replicas = stores.map((store) => createEcsProvisioner(
    fakeEcsOptions(fake, { awsCallTimeoutMs: 60_000 }, { ECS_API_RATES: 'taskdef-read=10/10,task-read=5/5' }),
    { clock: systemClock, tokens: sharedBuckets(store, (err) => fallbacks.push(err)) },
  ));
  t.teardown(async () => {
    await Promise.all(replicas.map((p) => p.close()));
    await Promise.all(stores.map((s) => s.close()));
    await fake.close();
    await redis.stop();
  });
  const t0 = Date.now();
  const started = await Promise.allSettled(ids.map((id, i) => replicas[i % 3].start(startRequest(id, 1).req)));
  t.same(started.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason)), [], 'every student started');
  t.same(fallbacks, [], 'the shared buckets answered throughout');
  const since = (op: string, outcome: 'ok' | 'throttled' | 'any') => fake.callsOf(op, outcome).filter((c) => c.at >= t0).length;
  t.equal(since('DescribeTaskDefinition', 'ok'), n + 3, 'each family read once (and the base once per replica)');
  // At exactly the bucket's rate a call delayed on its way can meet AWS's bucket a moment early; a
  // replica pacing alone (or not at all) would be throttled for most of the class.
  for (const op of ['DescribeTaskDefinition', 'DescribeTasks']) {
    const throttled = since(op, 'throttled');
    t.ok(throttled <= 3, `${op}: AWS throttled next to none (${throttled} of ${since(op, 'any')})`);
  }
  const reads = fake.callsOf('DescribeTasks', 'any').filter((c) => c.at >= t0).map((c) => c.at).sort((a, b) => a - b);
  const spanS = (reads[reads.length - 1] - reads[0]) / 1000;
  t.ok(reads.length <= 5 + 5 * spanS + 2, `the three polled together at the shared rate (${reads.length} DescribeTasks in ${spanS.toFixed(1)} s)`);
});
