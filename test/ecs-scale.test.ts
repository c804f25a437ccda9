// 300 students open their workspaces at once while the fake enforces RunTask's 20 calls per second
// and Fargate's launch rate (burst 100, refill 20/s): everybody starts, nobody twice, our RunTask
// rate stays under the limit, queue positions are shown first-come-first-served, and no
// throttling error reaches a student. The provisioner and the fake share a clock running 10x
// faster than real time (CPU permitting): the behaviour is defined per (clock) second, the test just runs faster.
// They are returning students: their task definitions were registered on an earlier day (a class
// of new students, registered at AWS's 1 a second, is in ecs-provisioner.test.ts).
import t from 'tap';
import { createEcsProvisioner } from '../provisioner/ecs.js';
import { createScaledTime } from '../provisioner/timers.js';
import { startFakeAws } from './fake-aws/index.js';
import { fakeEcsOptions } from './fake-aws/config.js';
import { enrol, startRequest } from './fake-aws/harness.js';

const STUDENTS = 300;

t.test('300 students at 09:00', async (t) => {
  const { clock, timers } = createScaledTime(6);
  const fake = await startFakeAws({
    clock,
    durations: { provisioningMs: 1_000, pendingMs: 1_000, stoppingMs: 1_000 },
    rateLimits: { RunTask: { rate: 20, burst: 20 }, FargateLaunch: { rate: 20, burst: 100 } },
  });
  const ids = Array.from({ length: STUDENTS }, (_, i) => `student-${String(i).padStart(3, '0')}`);
  await enrol(fake, ids);
  let maxDepth = 0;
  const p = createEcsProvisioner(
    fakeEcsOptions(fake, { describePollMs: 1_000, probeIntervalMs: 250, awsCallTimeoutMs: 120_000 }, { START_MAX_IN_FLIGHT: '100', RUNTASK_RATE: '15', RUNTASK_BURST: '1' }),
    { clock, timers, observer: { awsCall: () => {}, queueDepth: (n) => (maxDepth = Math.max(maxDepth, n)), stage: () => {} } },
  );
  t.teardown(async () => {
    await p.close();
    await fake.close();
  });

  const starts = ids.map((id) => startRequest(id, 1));
  const results = await Promise.allSettled(starts.map((s) => p.start(s.req)));
  const failed = results.filter((r) => r.status === 'rejected');
  t.same(failed.map((f) => String((f as PromiseRejectedResult).reason)), [], 'every workspace started, no error surfaced');

  const tasks = fake.tasks();
  t.equal(tasks.length, STUDENTS, 'one task per student, none twice');
  t.equal(new Set(tasks.map((x) => x.tags!.find((k) => k.key === 'workspace-id')!.value)).size, STUDENTS);
  t.equal(fake.count('RunTask'), STUDENTS);
  t.equal(fake.count('RunTask', 'throttled'), 0, 'RunTask was never throttled');
  t.equal(fake.instances().length, STUDENTS, 'all registered in Cloud Map');
  t.equal(fake.accessPoints().length, STUDENTS, 'one access point per student');
  t.equal(fake.taskDefinitions().length, 1 + STUDENTS, 'one family per student, plus the base');
  // The base definition is read once for the whole class (plus retries of that one read on a loaded
  // machine), never once per student.
  const baseReads = fake.callsOf('DescribeTaskDefinition', 'any').filter((c) => c.input.taskDefinition === fake.baseFamily).length;
  t.ok(baseReads < 10, `base read ${baseReads} time(s) for ${STUDENTS} students`);

  // Our RunTask rate, measured by the fake: never more than its 20 per (clock) second.
  const at = fake.callsOf('RunTask', 'any').map((c) => c.at).sort((a, b) => a - b);
  let maxPerSecond = 0;
  for (let i = 0, j = 0; i < at.length; i++) {
    while (at[i] - at[j] >= 1000) j++;
    maxPerSecond = Math.max(maxPerSecond, i - j + 1);
  }
  t.ok(maxPerSecond <= 20, `at most 20 RunTask calls in any second (saw ${maxPerSecond})`);
  const seconds = (at[at.length - 1] - at[0]) / 1000;
  t.ok(STUDENTS / seconds <= 16, `average RunTask rate at most RUNTASK_RATE (${(STUDENTS / seconds).toFixed(1)}/s)`);

  // Queue positions: shown, and first-come-first-served: the k-th student beyond the 100
  // admitted first waited at position k - 99 in the admission queue, then only moved forward.
  const firstPositions = starts.map((s) => s.stages.find((x) => x.stage === 'queued' && x.queuePosition !== undefined)?.queuePosition);
  t.ok(firstPositions.filter((x) => x !== undefined).length >= STUDENTS - 100, 'queue positions reported');
  for (let k = 100; k < STUDENTS; k++) {
    if (firstPositions[k] !== k - 99) {
      t.fail(`student ${k} first queued at ${firstPositions[k]}, expected ${k - 99}`);
      break;
    }
  }
  const forwardOnly = starts.every((s) => {
    const slotPositions = s.stages.filter((x) => x.queuePosition !== undefined).map((x) => x.queuePosition!);
    return slotPositions.every((v, i) => i === 0 || v < slotPositions[i - 1] || v <= 100);
  });
  t.ok(forwardOnly, 'positions only move forward while waiting for a slot');
  t.ok(maxDepth >= STUDENTS - 100, `queue depth observed (${maxDepth})`);
  t.ok(starts.every((s) => s.stages.at(-1)?.stage === 'ready'));
});
