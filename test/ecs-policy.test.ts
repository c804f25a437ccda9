// Table tests of the ECS provisioner's pure decisions: retry policy, error classes, the token
// bucket, FIFO admission, configuration parsing, clientToken and Cloud Map service choice.
import t from 'tap';
import { createManualClock } from '../gateway/clock.js';
import { Admission, TokenLine, localTokens, sharedTokens, takeToken, type TokenSource } from '../provisioner/admission.js';
import { pollIntervalMs } from '../provisioner/ecs-tasks.js';
import { ECS_API_RATE_DEFAULTS, ecsApiBucket, parseEcsApiRates } from '../provisioner/ecs-rates.js';
import { ecsOptionsFromEnv } from '../provisioner/ecs-config.js';
import { durationMs } from '../gateway/duration.js';
import { runTaskToken, serviceIndex } from '../provisioner/ecs.js';
import { classifyAwsError, DEFAULT_RETRY_POLICY, retryDecision, type ErrorClass } from '../provisioner/retry.js';
import { anySignal, type Timers } from '../provisioner/timers.js';
import { getEventListeners } from 'node:events';

t.test('retryDecision: jittered exponential backoff, capped, attempts by error class', async (t) => {
  const policy = { throttledAttempts: 5, transientAttempts: 3, baseMs: 100, capMs: 1000, throttledBaseMs: 200 };
  const cases: [ErrorClass, number, number, ReturnType<typeof retryDecision>][] = [
    // class, attempt that failed, random, decision
    ['fatal', 1, 0.5, { retry: false }],
    ['transient', 1, 0.5, { retry: true, delayMs: 50 }], // ceiling 100
    ['transient', 2, 0.5, { retry: true, delayMs: 100 }], // ceiling 200
    ['transient', 3, 0.5, { retry: false }], // 3 attempts made
    ['timeout', 1, 0.999, { retry: true, delayMs: 99 }],
    ['timeout', 3, 0.1, { retry: false }],
    ['throttled', 1, 0.5, { retry: true, delayMs: 100 }], // ceiling 200
    ['throttled', 3, 0.5, { retry: true, delayMs: 400 }], // ceiling 800
    ['throttled', 4, 0.5, { retry: true, delayMs: 500 }], // ceiling capped at 1000
    ['throttled', 4, 0, { retry: true, delayMs: 0 }], // full jitter reaches zero
    ['throttled', 5, 0.5, { retry: false }],
  ];
  for (const [cls, attempt, r, want] of cases) {
    t.same(retryDecision(cls, attempt, policy, () => r), want, `${cls} attempt ${attempt} random ${r}`);
  }
  t.ok(DEFAULT_RETRY_POLICY.throttledAttempts > DEFAULT_RETRY_POLICY.transientAttempts, 'throttling is given more patience');
});

t.test('classifyAwsError', async (t) => {
  const err = (name: string, extra: object = {}) => Object.assign(new Error('x'), { name, ...extra });
  const cases: [unknown, ErrorClass][] = [
    [err('ThrottlingException', { $metadata: { httpStatusCode: 400 } }), 'throttled'],
    [err('RequestLimitExceeded'), 'throttled'],
    [err('TooManyRequestsException'), 'throttled'],
    [err('Whatever', { $metadata: { httpStatusCode: 429 } }), 'throttled'],
    [err('ServerException', { $metadata: { httpStatusCode: 500 } }), 'transient'],
    [err('InternalServerError', { $metadata: { httpStatusCode: 500 } }), 'transient'],
    [err('Unknown', { $metadata: { httpStatusCode: 503 } }), 'transient'],
    [Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }), 'transient'],
    // The route to AWS or to the task-role credentials endpoint (169.254.170.2) gone for a moment.
    [Object.assign(new Error('connect EHOSTUNREACH'), { code: 'EHOSTUNREACH' }), 'transient'],
    [Object.assign(new Error('connect ENETUNREACH'), { code: 'ENETUNREACH' }), 'transient'],
    [err('CredentialsProviderError'), 'transient'],
    [err('TimeoutError'), 'timeout'],
    [err('ClientException', { $metadata: { httpStatusCode: 400 } }), 'fatal'],
    [err('AccessDeniedException', { $metadata: { httpStatusCode: 400 } }), 'fatal'],
    [err('ConflictException', { $metadata: { httpStatusCode: 400 } }), 'fatal'],
    // Cloud Map: another operation on the instance is in progress; it ends by itself.
    [err('DuplicateRequest', { $metadata: { httpStatusCode: 400 } }), 'throttled'],
    [err('InvalidParameterException', { $metadata: { httpStatusCode: 400 } }), 'fatal'],
    [undefined, 'fatal'],
  ];
  for (const [e, want] of cases) t.equal(classifyAwsError(e), want, `${(e as Error)?.name ?? e}: ${want}`);
});

t.test('takeToken: a token bucket step', async (t) => {
  const cases: [{ tokens: number; at: number }, number, boolean, number, number][] = [
    // state, now, granted, waitMs, tokens after
    [{ tokens: 1, at: 0 }, 0, true, 0, 0],
    [{ tokens: 0, at: 0 }, 0, false, 100, 0], // rate 10/s: a token every 100 ms
    [{ tokens: 0, at: 0 }, 50, false, 50, 0.5],
    [{ tokens: 0, at: 0 }, 100, true, 0, 0],
    [{ tokens: 0, at: 0 }, 10_000, true, 0, 2], // refills only up to the burst (3)
  ];
  for (const [state, now, granted, waitMs, after] of cases) {
    const r = takeToken(state, now, 10, 3);
    t.equal(r.granted, granted, `granted at ${now}`);
    t.equal(r.waitMs, waitMs, `wait at ${now}`);
    t.equal(Math.round(r.state.tokens * 1000) / 1000, after, `tokens after ${now}`);
  }
});

/** Timers driven by a manual clock: advancing fires what is due. */
function manualTimers() {
  const clock = createManualClock(0);
  let pending: { at: number; fn: () => void; id: number }[] = [];
  let next = 0;
  const timers: Timers = {
    setTimeout(fn, ms) {
      const id = ++next;
      pending.push({ at: clock.now() + ms, fn, id });
      return id;
    },
    clearTimeout(h) {
      pending = pending.filter((p) => p.id !== h);
    },
  };
  return {
    clock,
    timers,
    async advance(ms: number) {
      const end = clock.now() + ms;
      for (;;) {
        pending.sort((a, b) => a.at - b.at);
        const due = pending[0];
        if (!due || due.at > end) break;
        pending.shift();
        clock.set(due.at);
        due.fn();
        await new Promise((r) => setImmediate(r));
      }
      clock.set(end);
      await new Promise((r) => setImmediate(r));
    },
  };
}

t.test('Admission: FIFO slots with positions, FIFO RunTask tokens at the configured rate', async (t) => {
  const m = manualTimers();
  const depths: number[] = [];
  const a = new Admission({ maxInFlight: 2, tokens: localTokens(m.clock, 2, 1) }, m.timers, (n) => depths.push(n));
  const never = new AbortController().signal;
  const positions: Record<string, number[]> = { a: [], b: [], c: [], d: [] };
  const granted: string[] = [];
  const releases: Record<string, () => void> = {};
  for (const id of ['a', 'b', 'c', 'd']) {
    void a.acquireSlot(never, (p) => positions[id].push(p)).then((r) => {
      granted.push(id);
      releases[id] = r;
    });
  }
  await m.advance(0);
  t.same(granted, ['a', 'b'], 'two slots');
  t.same(positions, { a: [], b: [], c: [1], d: [2] });
  releases.b();
  releases.b(); // releasing twice frees one slot only
  await m.advance(0);
  t.same(granted, ['a', 'b', 'c']);
  t.same(positions.d, [2, 1], 'moved forward');

  // A waiter that gives up leaves the queue and the others move up.
  const ac = new AbortController();
  const gaveUp = a.acquireSlot(ac.signal, () => {}).catch((e) => e);
  const e = a.acquireSlot(never, (p) => positions.d.push(p * 10));
  ac.abort(new Error('deadline'));
  t.match(await gaveUp, /deadline/);
  releases.a();
  releases.c();
  await m.advance(0);
  t.same(granted, ['a', 'b', 'c', 'd']);
  await e;
  t.ok(depths.includes(0) && Math.max(...depths) >= 2, 'queue depth observed');

  // Tokens: 2 per second, evenly spaced.
  const got: [string, number][] = [];
  for (const id of ['t1', 't2', 't3', 't4']) void a.takeRunTaskToken(never, () => {}).then(() => got.push([id, m.clock.now()]));
  await m.advance(0);
  t.same(got, [['t1', 0]]);
  await m.advance(1500);
  t.same(got, [['t1', 0], ['t2', 500], ['t3', 1000], ['t4', 1500]], 'first come, first served, 500 ms apart');
  a.close();
});

t.test('Admission: the burst goes at once, then the rate; positions from 2 on', async (t) => {
  const m = manualTimers();
  const a = new Admission({ maxInFlight: 10, tokens: localTokens(m.clock, 10, 3) }, m.timers);
  const never = new AbortController().signal;
  const got: [number, number][] = [];
  const positions: number[][] = [[], [], [], [], []];
  for (let i = 0; i < 5; i++) void a.takeRunTaskToken(never, (p) => positions[i].push(p)).then(() => got.push([i, m.clock.now()]));
  await m.advance(0);
  t.same(got, [[0, 0], [1, 0], [2, 0]], 'three at once');
  await m.advance(200);
  t.same(got.slice(3), [[3, 100], [4, 200]], 'then one per 100 ms');
  t.same(positions[0], [], 'the head of the line is not shown a queue');
  t.same(positions[4], [5, 4, 3, 2], 'the fifth moved forward');
  a.close();
});

t.test('Admission: a token source that fails is asked again, in order', async (t) => {
  const m = manualTimers();
  let failures = 2;
  const flaky: TokenSource = { take: async () => { if (failures-- > 0) throw new Error('redis away'); return { granted: true, waitMs: 0 }; } };
  const a = new Admission({ maxInFlight: 10, tokens: flaky }, m.timers);
  const never = new AbortController().signal;
  const got: string[] = [];
  for (const id of ['x', 'y']) void a.takeRunTaskToken(never, () => {}).then(() => got.push(id));
  await m.advance(0);
  t.same(got, []);
  await m.advance(2000);
  t.same(got, ['x', 'y']);
  a.close();
});

t.test('TokenLine: tryTake takes a free token, never one from the line nor one not there', async (t) => {
  const m = manualTimers();
  const line = new TokenLine(localTokens(m.clock, 1, 2), m.timers);
  const never = new AbortController().signal;
  t.equal(await line.tryTake(), true, 'the burst has one');
  t.equal(await line.tryTake(), true, 'and another');
  t.equal(await line.tryTake(), false, 'empty: not now');
  const got: number[] = [];
  void line.take(never, () => {}).then(() => got.push(m.clock.now()));
  await m.advance(0);
  await m.advance(500);
  t.equal(await line.tryTake(), false, 'someone waits: never ahead of them');
  await m.advance(1000);
  t.same(got, [1000], 'the one in line got the next token');
  await m.advance(1000);
  t.equal(await line.tryTake(), true, 'refilled, nobody waiting');
  const failing = new TokenLine({ take: async () => { throw new Error('redis away'); } }, m.timers);
  t.equal(await failing.tryTake(), false, 'a source that fails is a no');
  line.close();
  failing.close();
});

t.test('sharedTokens: the shared bucket while it answers, the local one while it does not', async (t) => {
  const clock = createManualClock();
  let up = true;
  const shared: TokenSource = { take: async () => { if (!up) throw new Error('down'); return { granted: false, waitMs: 7 }; } };
  const seen: unknown[] = [];
  const src = sharedTokens(shared, localTokens(clock, 1, 1), (e) => seen.push((e as Error).message));
  t.same(await src.take(), { granted: false, waitMs: 7 }, 'shared answer');
  up = false;
  t.same(await src.take(), { granted: true, waitMs: 0 }, 'local bucket');
  t.same(await src.take(), { granted: false, waitMs: 1000 }, 'local bucket empty');
  t.same(seen, ['down', 'down']);
});

t.test('ecsApiBucket: the AWS category each operation spends', async (t) => {
  const table: [string, string | undefined][] = [
    ['DescribeTasks', 'task-read'],
    ['ListTasks', 'task-read'],
    ['RunTask', 'task-modify'], // also Fargate's own RunTask line (admission.ts)
    ['StopTask', 'task-modify'],
    ['DescribeTaskDefinition', 'taskdef-read'],
    ['RegisterTaskDefinition', undefined], // its own line (TASKDEF_RATE)
    ['RegisterInstance', undefined], // Cloud Map
    ['CreateAccessPoint', undefined], // EFS
    ['toString', undefined], // not an inherited property
  ];
  for (const [op, want] of table) t.equal(ecsApiBucket(op), want, op);
});

t.test('parseEcsApiRates: bucket=rate/burst over AWS\'s defaults', async (t) => {
  t.same(parseEcsApiRates(undefined), ECS_API_RATE_DEFAULTS, 'unset: the defaults');
  t.same(parseEcsApiRates(' '), ECS_API_RATE_DEFAULTS, 'blank: the defaults');
  t.same(parseEcsApiRates('task-read=40/200, taskdef-read=2.5/10'), {
    ...ECS_API_RATE_DEFAULTS, 'task-read': { rate: 40, burst: 200 }, 'taskdef-read': { rate: 2.5, burst: 10 },
  });
  const bad: [string, RegExp][] = [
    ['task-read', /not bucket=rate\/burst/],
    ['task-read=20', /not bucket=rate\/burst/],
    ['task-read=20/1.5', /not bucket=rate\/burst/],
    ['runtask=20/20', /unknown bucket "runtask"/], // RUNTASK_RATE / RUNTASK_BURST
    ['task-read=0/10', /rate must be above 0/],
    ['task-read=20/0', /burst between 1/],
    ['task-read=20/100,task-read=40/100', /given twice/],
  ];
  for (const [text, want] of bad) t.throws(() => parseEcsApiRates(text), want, text);
});

t.test('TokenLine: closing it rejects whoever still waits', async (t) => {
  const m = manualTimers();
  const line = new TokenLine(localTokens(m.clock, 1, 1), m.timers);
  const never = new AbortController().signal;
  await line.take(never, () => {});
  const waiting = line.take(never, () => {});
  line.close();
  await t.rejects(waiting, /token line closed/);
  t.equal(line.waiting, 0);
});

t.test('pollIntervalMs: at most ten DescribeTasks a second, never below the minimum', async (t) => {
  const cases: [watched: number, minMs: number, want: number][] = [
    [1, 250, 250], [100, 250, 250], [300, 250, 300], [500, 250, 500], [1000, 250, 1000], [5, 30, 100], [0, 250, 250],
  ];
  for (const [n, min, want] of cases) t.equal(pollIntervalMs(n, min), want, `${n} tasks, min ${min}`);
});

t.test('durationMs (the grammar of every duration setting)', async (t) => {
  const cases: [string, number | undefined][] = [
    ['250ms', 250], ['30s', 30_000], ['5m', 300_000], ['12h', 43_200_000], ['90', 90_000], ['1.5', 1500], ['0.5s', 500],
    ['', undefined], ['5 minutes', undefined], ['-1s', undefined], ['1d', undefined],
  ];
  for (const [text, want] of cases) t.equal(durationMs(text), want, JSON.stringify(text));
});

t.test('ecsOptionsFromEnv: defaults, and errors that name the variable', async (t) => {
  const env = {
    AWS_REGION: 'eu-west-1',
    ECS_CLUSTER: 'workspaces',
    ECS_SUBNETS: 'subnet-1, subnet-2',
    ECS_SECURITY_GROUPS: 'sg-1',
    ECS_BASE_TASK_DEFINITION: 'code-server:3',
    EFS_FILE_SYSTEM_ID: 'fs-0123456789abcdef0',
    CLOUDMAP_SERVICE_IDS: 'srv-abc,srv-def',
  };
  t.same(ecsOptionsFromEnv(env), {
    region: 'eu-west-1',
    endpoint: undefined,
    cluster: 'workspaces',
    subnets: ['subnet-1', 'subnet-2'],
    securityGroups: ['sg-1'],
    baseTaskDefinition: 'code-server:3',
    taskFamilyPrefix: 'ws',
    containerName: 'code-server',
    capacity: 'spot-first',
    startedBy: 'workspace-gateway',
    efsFileSystemIds: ['fs-0123456789abcdef0'],
    efsRootDir: '/students',
    efsPosixUid: 1000,
    efsPosixGid: 1000,
    cloudMapServiceIds: ['srv-abc', 'srv-def'],
    workspacePort: 8080,
    startMaxInFlight: 100,
    runTaskRate: 20,
    runTaskBurst: 20,
    taskDefRate: 1,
    taskDefBurst: 20,
    apiRates: { 'task-read': { rate: 20, burst: 100 }, 'task-modify': { rate: 40, burst: 100 }, 'taskdef-read': { rate: 20, burst: 50 } },
    startDeadlineMs: 300_000,
    awsCallTimeoutMs: 10_000,
    reconcileIntervalMs: 60_000,
  });
  const o = ecsOptionsFromEnv({
    ...env,
    AWS_ENDPOINT_URL: 'http://127.0.0.1:4566',
    ECS_CAPACITY: 'fargate',
    ECS_BASE_TASK_DEFINITION: 'arn:aws:ecs:eu-west-1:123456789012:task-definition/code-server:7',
    START_DEADLINE: '2m',
    AWS_CALL_TIMEOUT: '2500ms',
    RECONCILE_INTERVAL: '30',
    RUNTASK_RATE: '7.5',
    TASKDEF_RATE: '0.5',
    TASKDEF_BURST: '5',
    ECS_API_RATES: 'task-read=40/200',
    EFS_ROOT_DIR: '/home/',
  });
  t.equal(o.endpoint, 'http://127.0.0.1:4566');
  t.equal(o.capacity, 'fargate');
  t.equal(o.startDeadlineMs, 120_000);
  t.equal(o.awsCallTimeoutMs, 2500);
  t.equal(o.reconcileIntervalMs, 30_000);
  t.equal(o.runTaskRate, 7.5);
  t.equal(o.taskDefRate, 0.5);
  t.equal(o.taskDefBurst, 5);
  t.same(o.apiRates['task-read'], { rate: 40, burst: 200 }, 'a raised quota');
  t.same(o.apiRates['taskdef-read'], { rate: 20, burst: 50 }, 'the others at AWS\'s defaults');
  t.equal(o.efsRootDir, '/home');

  const bad: [Record<string, string | undefined>, RegExp][] = [
    [{ AWS_REGION: undefined }, /^AWS_REGION: is required/],
    [{ AWS_REGION: 'Ireland' }, /^AWS_REGION:/],
    [{ AWS_ENDPOINT_URL: 'localhost:4566' }, /^AWS_ENDPOINT_URL:/],
    [{ ECS_CLUSTER: '' }, /^ECS_CLUSTER: is required/],
    [{ ECS_SUBNETS: undefined }, /^ECS_SUBNETS:/],
    [{ ECS_SECURITY_GROUPS: ' , ' }, /^ECS_SECURITY_GROUPS: must list/],
    [{ ECS_BASE_TASK_DEFINITION: 'a b' }, /^ECS_BASE_TASK_DEFINITION:/],
    [{ ECS_CAPACITY: 'spot' }, /^ECS_CAPACITY:/],
    [{ ECS_TASK_FAMILY_PREFIX: 'w s' }, /^ECS_TASK_FAMILY_PREFIX:/],
    [{ ECS_STARTED_BY: 'x'.repeat(129) }, /^ECS_STARTED_BY:/],
    [{ EFS_FILE_SYSTEM_ID: 'fs1' }, /^EFS_FILE_SYSTEM_ID:/],
    [{ EFS_ROOT_DIR: 'students' }, /^EFS_ROOT_DIR:/],
    [{ EFS_POSIX_UID: '-1' }, /^EFS_POSIX_UID:/],
    [{ EFS_POSIX_GID: 'abc' }, /^EFS_POSIX_GID:/],
    [{ CLOUDMAP_SERVICE_IDS: 'ns-123' }, /^CLOUDMAP_SERVICE_IDS:/],
    [{ WORKSPACE_PORT: '70000' }, /^WORKSPACE_PORT:/],
    [{ START_MAX_IN_FLIGHT: '0' }, /^START_MAX_IN_FLIGHT:/],
    [{ RUNTASK_RATE: '0' }, /^RUNTASK_RATE:/],
    [{ TASKDEF_RATE: '-1' }, /^TASKDEF_RATE:/],
    [{ TASKDEF_BURST: '0' }, /^TASKDEF_BURST:/],
    [{ ECS_API_RATES: 'task-read:20/100' }, /^ECS_API_RATES: .* is not bucket=rate\/burst/],
    [{ ECS_API_RATES: 'describe=20/100' }, /^ECS_API_RATES: unknown bucket "describe"/],
    [{ START_DEADLINE: 'soon' }, /^START_DEADLINE:/],
    [{ AWS_CALL_TIMEOUT: '0s' }, /^AWS_CALL_TIMEOUT:/],
    [{ RECONCILE_INTERVAL: '1w' }, /^RECONCILE_INTERVAL:/],
  ];
  for (const [over, want] of bad) t.throws(() => ecsOptionsFromEnv({ ...env, ...over }), want, JSON.stringify(over));
});

t.test('runTaskToken: deterministic, at most 64 characters with the fallback suffix, printable ASCII', async (t) => {
  t.equal(runTaskToken('alice', 3), 'alice.3');
  t.equal(runTaskToken('alice', 3), runTaskToken('alice', 3));
  t.not(runTaskToken('alice', 3), runTaskToken('alice', 4));
  const long = 'x'.repeat(120);
  const tok = runTaskToken(long, 1);
  t.ok(`${tok}-od`.length <= 64, 'room for the on-demand suffix');
  t.match(tok, /^[\x21-\x7e]+$/);
  t.not(runTaskToken(long, 1), runTaskToken(long, 2));
});

t.test('serviceIndex: stable, in range, spread', async (t) => {
  t.equal(serviceIndex('alice', 1), 0);
  t.equal(serviceIndex('alice', 7), serviceIndex('alice', 7));
  const counts = [0, 0, 0, 0];
  for (let i = 0; i < 4000; i++) counts[serviceIndex(`student-${i}`, 4)]++;
  t.ok(counts.every((c) => c > 800 && c < 1200), `roughly even: ${counts}`);
});

t.test('anySignal aborts with the first source and detaches from long-lived sources on dispose', async (t) => {
  const life = new AbortController();
  const short = new AbortController();
  const linked = anySignal([life.signal, undefined, short.signal]);
  t.equal(getEventListeners(life.signal, 'abort').length, 1);
  short.abort(new Error('deadline'));
  t.ok(linked.signal.aborted);
  t.match(String(linked.signal.reason), 'deadline');
  linked.dispose();
  t.equal(getEventListeners(life.signal, 'abort').length, 0, 'nothing left on the lifetime signal');
  for (let i = 0; i < 1000; i++) anySignal([life.signal]).dispose();
  t.equal(getEventListeners(life.signal, 'abort').length, 0);
  const already = anySignal([AbortSignal.abort(new Error('gone')), life.signal]);
  t.ok(already.signal.aborted);
});
