// An AWS endpoint that stalls, drops connections, answers 500 or throttles: every call has a
// deadline that really aborts it, transient failures and throttling are retried, and a start
// against a dead endpoint fails with BACKEND_UNAVAILABLE well inside its start deadline.
import t from 'tap';
import { systemClock } from '../gateway/clock.js';
import { createEcsProvisioner } from '../provisioner/ecs.js';
import { FAILED_POLLS_TOLERATED, MISSING_TOLERATED_MS, missingForTooLong } from '../provisioner/ecs-tasks.js';
import type { AwsCallOutcome, EcsProvisionerOptions } from '../provisioner/ecs-types.js';
import { startFakeAws, type FakeAwsOptions } from './fake-aws/index.js';
import { fakeEcsOptions } from './fake-aws/config.js';
import { startRequest, until } from './fake-aws/harness.js';

async function setup(t: { teardown(fn: () => unknown): void }, fakeOpts: FakeAwsOptions = {}, over: Partial<EcsProvisionerOptions> = {}) {
  const fake = await startFakeAws({ durations: { provisioningMs: 30, pendingMs: 30, stoppingMs: 10 }, ...fakeOpts });
  const outcomes: [string, AwsCallOutcome][] = [];
  const stageTimes: [string, number][] = [];
  const p = createEcsProvisioner(
    fakeEcsOptions(fake, {
      describePollMs: 30,
      awsCallTimeoutMs: 250,
      startDeadlineMs: 20_000,
      retry: { baseMs: 10, capMs: 50, throttledBaseMs: 20 },
      ...over,
    }),
    {
      clock: systemClock,
      observer: { awsCall: (op, o) => outcomes.push([op, o]), queueDepth: () => {}, stage: (st, sec) => stageTimes.push([st, sec]) },
    },
  );
  t.teardown(async () => {
    await p.close();
    await fake.close();
  });
  return { fake, p, outcomes, stageTimes };
}

t.test('an endpoint that never answers fails the start with BACKEND_UNAVAILABLE, not a frozen start', async (t) => {
  const { fake, p, outcomes } = await setup(t);
  fake.fault('*', 'stall');
  const err = await p.start(startRequest('stalled', 1).req).catch((e) => e);
  t.equal(err.code, 'BACKEND_UNAVAILABLE', 'failed by the call deadlines, before the 20 s start deadline');
  t.match(err.message, /AWS DescribeTaskDefinition did not answer in time after 3 attempts/);
  // Each of the 3 attempts was aborted by its deadline (the observer saw them); on a loaded machine an
  // attempt may be aborted before its request even reaches the endpoint, so the fake may see fewer.
  const reached = fake.count('DescribeTaskDefinition', 'fault');
  t.ok(reached >= 1 && reached <= 3, `each attempt was aborted and retried (${reached} reached the endpoint)`);
  t.same(outcomes, [
    ['DescribeTaskDefinition', 'timeout'],
    ['DescribeTaskDefinition', 'timeout'],
    ['DescribeTaskDefinition', 'timeout'],
  ]);
});

t.test('RunTask stalling is retried with the same clientToken, then fails BACKEND_UNAVAILABLE', async (t) => {
  const { fake, p } = await setup(t);
  fake.fault('RunTask', 'stall');
  const err = await p.start(startRequest('stalled-run', 1).req).catch((e) => e);
  t.equal(err.code, 'BACKEND_UNAVAILABLE');
  t.match(err.message, 'AWS RunTask did not answer in time');
  const tokens = new Set(fake.callsOf('RunTask', 'any').map((c) => c.input.clientToken));
  t.same([...tokens], ['stalled-run.1'], 'retries reuse the token, so they can never launch a second task');
});

t.test('a dropped connection is retried, and fails BACKEND_UNAVAILABLE when it keeps happening', async (t) => {
  const { fake, p, outcomes } = await setup(t);
  fake.fault('RunTask', 'drop', 1);
  const r = await p.start(startRequest('dropped-once', 1).req);
  t.ok(r.handle);
  t.equal(fake.count('RunTask', 'fault'), 1);
  t.equal(fake.count('RunTask'), 1);
  t.equal(fake.tasks().length, 1);
  t.same(outcomes.filter(([op]) => op === 'RunTask').map(([, o]) => o), ['error', 'ok']);

  fake.fault('CreateAccessPoint', 'drop');
  const err = await p.start(startRequest('dropped-always', 1).req).catch((e) => e);
  t.equal(err.code, 'BACKEND_UNAVAILABLE');
  t.match(err.message, 'AWS CreateAccessPoint failed after 3 attempts');
});

t.test('a 500 from AWS is retried, for every service', async (t) => {
  const { fake, p, stageTimes } = await setup(t, {}, { awsCallTimeoutMs: 5000 }); // not a timeout test: a loaded machine must not retry
  for (const op of ['DescribeTaskDefinition', 'CreateAccessPoint', 'RegisterTaskDefinition', 'RunTask', 'DescribeTasks', 'RegisterInstance']) fake.fault(op, 500, 1);
  const r = await p.start(startRequest('flaky', 1).req);
  t.ok(r.handle);
  for (const op of ['CreateAccessPoint', 'RegisterTaskDefinition', 'RunTask', 'RegisterInstance']) {
    t.equal(fake.count(op, 'fault'), 1, `${op} failed once`);
    t.equal(fake.count(op), 1, `${op} then succeeded once`);
  }
  t.equal(fake.tasks().length, 1);
  // (pending can pass between two polls on a loaded machine)
  t.same(stageTimes.map(([st]) => st).filter((st) => st !== 'pending'), ['queued', 'provisioning', 'running', 'probing', 'ready'], 'each stage timed for the observer');
  t.ok(stageTimes.every(([, sec]) => sec >= 0));
});

t.test('a dropped DescribeTasks poll does not fail the start', async (t) => {
  const { fake, p } = await setup(t, {}, { awsCallTimeoutMs: 5000 }); // not a timeout test: a loaded machine must not retry
  fake.fault('DescribeTasks', 'drop', 2);
  const r = await p.start(startRequest('poll-drop', 1).req);
  t.ok(r.handle);
  t.equal(fake.count('DescribeTasks', 'fault'), 2);
});

t.test('a DescribeTasks poll that fails after its retries leaves the start waiting for the next; a lasting failure fails it', async (t) => {
  const { fake, p } = await setup(t, {}, { awsCallTimeoutMs: 5000, retry: { baseMs: 1, capMs: 5 } });
  // Three attempts (DEFAULT_RETRY_POLICY.transientAttempts): one whole poll fails.
  fake.fault('DescribeTasks', 500, 3);
  const r = await p.start(startRequest('poll-fails-once', 1).req);
  t.ok(r.handle, 'started: the next poll saw the task');
  t.equal(fake.count('DescribeTasks', 'fault'), 3);
  t.equal(fake.tasks().filter((x) => x.lastStatus === 'RUNNING').length, 1, 'its task was not stopped');

  fake.fault('DescribeTasks', 500);
  const err = await p.start(startRequest('poll-fails-always', 1).req).catch((e) => e);
  fake.clearFaults();
  t.equal(err.code, 'BACKEND_UNAVAILABLE');
  t.match(err.message, 'AWS DescribeTasks failed after 3 attempts');
  t.equal(fake.count('DescribeTasks', 'fault'), 3 + 3 * FAILED_POLLS_TOLERATED, `given up after ${FAILED_POLLS_TOLERATED} polls in a row`);
});

t.test('a task DescribeTasks does not know yet (eventual consistency) is waited for, not failed', async (t) => {
  // Polls every 30 ms: two seconds of MISSING are about 60 polls.
  const { fake, p } = await setup(t, { describeLagMs: 2000 });
  const r = await p.start(startRequest('not-yet-visible', 1).req);
  t.ok(r.handle, 'started once DescribeTasks showed the task');
  t.equal(fake.count('StopTask'), 0);
  t.equal(fake.count('RunTask'), 1);
});

t.test('how long a MISSING task is waited for', async (t) => {
  const rows: Array<[string, number, boolean]> = [
    ['just now', 0, false],
    ['a couple of seconds (five polls gave up here)', 2000, false],
    ['one ms short', MISSING_TOLERATED_MS - 1, false],
    ['the whole window', MISSING_TOLERATED_MS, true],
  ];
  for (const [name, elapsed, giveUp] of rows) t.equal(missingForTooLong(1_000_000, 1_000_000 + elapsed), giveUp, name);
});

t.test('throttling is retried with backoff and never surfaces', async (t) => {
  const { fake, p, outcomes } = await setup(
    t,
    { rateLimits: { 'ecs:TaskDefinitionModify': { rate: 20, burst: 2 }, RegisterInstance: { rate: 20, burst: 2 } } },
    // Backoff with room to wait out the fake's refill (up to about 2 s over 8 attempts).
    { retry: { baseMs: 10, capMs: 400, throttledBaseMs: 50 }, awsCallTimeoutMs: 5000 },
  );
  const ids = ['t1', 't2', 't3', 't4', 't5', 't6'];
  const results = await Promise.all(ids.map((id) => p.start(startRequest(id, 1).req)));
  t.equal(results.length, ids.length, 'every start succeeded');
  t.ok(fake.count('RegisterTaskDefinition', 'throttled') + fake.count('RegisterInstance', 'throttled') > 0, 'the fake did throttle');
  t.ok(outcomes.some(([, o]) => o === 'throttled'), 'observed as throttled');
  t.equal(fake.count('RegisterTaskDefinition'), ids.length);
  t.equal(fake.count('RegisterInstance'), ids.length);
});

t.test('a misconfigured base task definition is BAD_CONFIG', async (t) => {
  const { p } = await setup(t, {}, { baseTaskDefinition: 'no-such-family' });
  const err = await p.start(startRequest('cfg', 1).req).catch((e) => e);
  t.equal(err.code, 'BAD_CONFIG');
  t.match(err.message, 'ECS_BASE_TASK_DEFINITION no-such-family cannot be described');
});

t.test('Cloud Map answering DuplicateRequest (another operation on the instance in progress) is waited out', async (t) => {
  // RegisterInstance retried after a timeout while AWS still runs the first attempt, or while the
  // previous generation's deregistration runs, answers DuplicateRequest. Failing there stopped a
  // task that had passed its probe.
  const { fake, p } = await setup(t, {}, { awsCallTimeoutMs: 5000 });
  fake.fault('RegisterInstance', { error: 'DuplicateRequest' }, 2);
  const r = await p.start(startRequest('dup', 1).req).catch((e) => e);
  t.notOk(r.code, `started (${r.code ?? 'ok'})`);
  t.equal(fake.count('RegisterInstance'), 1, 'registered once it was let through');
  t.equal(fake.count('StopTask'), 0, 'its task was not stopped');

  fake.fault('DeregisterInstance', { error: 'DuplicateRequest' }, 1);
  await p.stop('dup', r.handle, 'idle');
  t.equal(fake.instances().length, 0, 'deregistered after waiting');
  t.same(fake.liveTasks('dup'), [], 'and the task stopped');
});

t.test('close() ends calls waiting out a backoff, and leaves no timer behind', async (t) => {
  const live = new Set<unknown>();
  const timers = {
    setTimeout(fn: () => void, ms: number) {
      const h = setTimeout(() => { live.delete(h); fn(); }, ms);
      live.add(h);
      return h;
    },
    clearTimeout(h: unknown) {
      live.delete(h);
      clearTimeout(h as ReturnType<typeof setTimeout>);
    },
  };
  const fake = await startFakeAws();
  t.teardown(() => fake.close());
  // A long backoff: the call is asleep between its attempts when the provisioner closes.
  const p = createEcsProvisioner(fakeEcsOptions(fake, { retry: { baseMs: 60_000, capMs: 60_000 } }), { clock: systemClock, timers, random: () => 0.99 });
  fake.fault('GetInstance', 500);
  const described = p.describe('late').then(() => 'resolved', (e) => e);
  await until(() => fake.count('GetInstance', 'fault') === 1, 5000, 'the first attempt failed');
  await until(() => live.size > 0, 5000, 'the backoff asleep');
  await p.close();
  const settled = await Promise.race([described, new Promise((r) => setImmediate(() => r('still pending')))]);
  t.equal((settled as { code?: string }).code, 'ABORTED', 'the call ended with the provisioner');
  t.equal(live.size, 0, 'no timer left');
});

t.test('a refusal AWS will not change its mind about fails at once with BAD_CONFIG, one attempt', async (t) => {
  const { fake, p } = await setup(t, {}, { awsCallTimeoutMs: 5000 });
  const rows: [string, string][] = [['RunTask', 'AccessDeniedException'], ['RunTask', 'InvalidParameterException'], ['RegisterInstance', 'AccessDeniedException'], ['DescribeTasks', 'AccessDeniedException']];
  for (const [i, [op, error]] of rows.entries()) {
    fake.clearFaults();
    fake.fault(op, { error });
    const err = await p.start(startRequest(`refused-${i}`, 1).req).catch((e) => e);
    t.equal(err.code, 'BAD_CONFIG', `${op} ${error}: BAD_CONFIG`);
    t.equal(fake.count(op, 'fault'), i === 0 || rows[i - 1][0] !== op ? 1 : 2, `${op} ${error}: not retried`);
  }
});

t.test('a Cloud Map deregistration that fails (throttled past its retries, or refused) never keeps the task running', async (t) => {
  // stop() deregistered first and gave up on its error: StopTask was never sent and the task ran on,
  // billed, until a reaper pass tried again. Reconcile stopping an unclaimed task did the same.
  const { fake, p } = await setup(t, {}, { retry: { baseMs: 10, capMs: 20, throttledBaseMs: 10 } });
  const modes: [string, { error: string; status?: number }][] = [
    ['throttled', { error: 'ThrottlingException' }],
    ['refused', { error: 'AccessDeniedException' }],
    ['failing', { error: 'InternalFailure', status: 500 }],
  ];
  for (const [i, [name, mode]] of modes.entries()) {
    const id = `dereg-${i}`;
    const r = await p.start(startRequest(id, 1).req);
    fake.clearFaults();
    fake.fault('DeregisterInstance', mode);
    const err = await p.stop(id, r.handle, 'idle').then(() => undefined, (e) => e);
    t.equal(err, undefined, `${name}: stop resolved (${err?.message ?? 'ok'})`);
    t.ok(fake.count('DeregisterInstance', 'fault') >= 1, `${name}: deregistration was tried`);
    const task = fake.tasks().find((x) => x.taskArn === r.handle)!;
    t.equal(task.lastStatus, 'STOPPED', `${name}: the task stopped`);
    t.equal(await p.describe(id), undefined, `${name}: its leftover registration is no route`);
  }
  fake.clearFaults();
  const sum = await p.reconcile(() => ({ state: 'stopped' }));
  t.same(sum.deregistered.map((d) => d.workspaceId).sort(), modes.map((_, i) => `dereg-${i}`), 'the next reconcile removes the leftovers');
  t.same(fake.instances(), []);

  // Reconcile stopping a task whose workspace the store says is stopped.
  const r = await p.start(startRequest('dereg-rec', 1).req);
  fake.fault('DeregisterInstance', { error: 'AccessDeniedException' });
  await p.reconcile(() => ({ state: 'stopped' }));
  await until(() => fake.tasks().find((x) => x.taskArn === r.handle)!.desiredStatus === 'STOPPED', 5000, 'reconcile stopped the task');
  t.pass('reconcile stopped the unclaimed task though its deregistration failed');
});
