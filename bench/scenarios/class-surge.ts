// Issue 7, scenario 4: a class starts at 09:00. 500 students each load their own stopped workspace
// at once; the gateway (a child process with PROVISIONER=ecs and the Redis store) starts them on the
// fake AWS endpoint, which runs in real time and enforces RunTask's rate (20/s, burst 20), the
// Fargate task launch rate (burst 100, refill 20/s), RegisterTaskDefinition's (1/s, burst 20) and
// the bucket of every other ECS category the gateway calls (task definitions read at 20/s, burst 50;
// tasks described at 20/s, burst 100: AWS's ECS API throttling table).
// Compared with the floor those rates allow: nobody can be ready before the last RunTask AWS would
// accept, plus the task's own provisioning and pending time. The class has been here before (their
// task definitions exist); a new class, whose first start registers one each, is a row of its own.
import { Redis } from 'ioredis';
import { startFakeAws } from '../../test/fake-aws/index.js';
import { enrol } from '../../test/fake-aws/harness.js';
import { fakeAwsEnv } from '../../test/fake-aws/config.js';
import { targetLine, type Figure, type ScenarioResult, type Target } from '../result.js';
import { pageLoad } from './b-browser.js';
import { round, startBenchRedis } from '../lib.js';
import { cookieMinter, maxInWindow, parseInfo, quantile, startGatewayChild, type GatewayChild } from './b-util.js';

/** Calls per Redis command since the last CONFIG RESETSTAT (INFO commandstats). */
async function commandCounts(admin: Redis): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const [k, v] of Object.entries(parseInfo(await admin.info('commandstats')))) {
    const m = /^calls=(\d+)/.exec(v);
    if (k.startsWith('cmdstat_') && m) out.set(k.slice(8), Number(m[1]));
  }
  return out;
}

export interface ClassSurgeOptions {
  quick: boolean;
  log: (s: string) => void;
  students?: number;
  provisioningMs?: number;
  pendingMs?: number;
  /** Extra gateway environment (e.g. RUNTASK_RATE) for a variant. */
  env?: Record<string, string>;
  /** Extra node flags for the gateway child (profiling: --cpu-prof). */
  nodeArgs?: string[];
  /** Students of the class before (default 100, quick mode 0: the class meets a fresh process). */
  warmup?: number;
}

/** The workspaces of the class before (their families are registered with the class's). */
const beforeIds = (n: number) => Array.from({ length: n }, (_, i) => `w${String(i).padStart(4, '0')}`);

/**
 * The class before: `n` students of other workspaces through the same replicas, all served, then a
 * pause until AWS's buckets (RunTask, Fargate launches) and ours are full again, so the measured
 * class meets replicas that have served before, as at 09:00, with nothing of AWS's rates used up.
 */
async function classBefore(ports: number[], mint: (id: string) => Promise<string>, n: number): Promise<number> {
  const ids = beforeIds(n);
  const cookies = await Promise.all(ids.map((id) => mint(id)));
  const results = await Promise.all(ids.map((id, i) => pageLoad({ port: ports[i % ports.length], host: `ws-${id}.localhost`, cookie: cookies[i], deadlineMs: 60_000 })));
  const refillMs = Math.max(RUNTASK.burst / RUNTASK.rate, Math.min(n, FARGATE_LAUNCH.burst) / FARGATE_LAUNCH.rate) * 1000;
  await new Promise((r) => setTimeout(r, refillMs + 1000));
  return results.filter((r) => r.ok).length;
}

// AWS's rates as the fake enforces them (ECS API request throttling; Fargate task launch rate).
const RUNTASK = { rate: 20, burst: 20 };
const FARGATE_LAUNCH = { rate: 20, burst: 100 };
const REGISTER = { rate: 1, burst: 20 };

/**
 * Earliest moment (ms after the surge) the last of n tasks can be ready under the buckets; a new
 * class (`registering`) also waits for RegisterTaskDefinition's, one family per student.
 */
export function surgeFloorMs(n: number, provisioningMs: number, pendingMs: number, registering = false): number {
  const lastGrant = (b: { rate: number; burst: number }) => Math.max(0, (n - b.burst) / b.rate) * 1000;
  return Math.max(lastGrant(RUNTASK), lastGrant(FARGATE_LAUNCH), registering ? lastGrant(REGISTER) : 0) + provisioningMs + pendingMs;
}

interface Variant {
  name: string;
  env: Record<string, string>;
  replicas: number;
  /** Students of the class before. */
  warmup: number;
  students?: number;
  /** Students never seen: no task definition family yet. */
  newClass?: boolean;
}

async function surge(opts: ClassSurgeOptions, v: Variant) {
  const { name: variant, env, replicas, warmup } = v;
  const students = v.students ?? opts.students ?? 500;
  const provisioningMs = opts.provisioningMs ?? 1000;
  const pendingMs = opts.pendingMs ?? 1000;
  const redis = await startBenchRedis();
  const fake = await startFakeAws({
    durations: { provisioningMs, pendingMs, stoppingMs: 100 },
    rateLimits: { RunTask: RUNTASK, FargateLaunch: FARGATE_LAUNCH, 'ecs:TaskDefinitionModify': REGISTER },
  });
  const gws: GatewayChild[] = [];
  try {
    const ids = Array.from({ length: students }, (_, i) => `s${String(i).padStart(4, '0')}`);
    // Students who have used the platform before: their task definition families exist.
    await enrol(fake, [...beforeIds(warmup), ...(v.newClass ? [] : ids)]);
    // Replicas share Redis (and so the RunTask bucket); student i always reaches replica i mod n.
    for (let r = 0; r < replicas; r++) gws.push(await startGatewayChild({ ...fakeAwsEnv(fake), REDIS_URL: redis.url, ...env }, 20_000, opts.nodeArgs));
    const cpuMs = async () => (await Promise.all(gws.map((g) => g.cpuMs()))).reduce((a, b) => a + b, 0);
    const mint = cookieMinter();
    const warmed = warmup > 0 ? await classBefore(gws.map((g) => g.port), mint, warmup) : 0;
    if (warmup > 0) opts.log(`class-surge (${variant}): the class before, ${warmup} students: ${warmed} served`);
    const cookies = await Promise.all(ids.map((id) => mint(id)));
    const floorMs = surgeFloorMs(students, provisioningMs, pendingMs, v.newClass);
    opts.log(`class-surge (${variant}): ${students} students at once; AWS floor ${(floorMs / 1000).toFixed(1)} s`);
    const admin = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
    await admin.connect();
    await admin.config('RESETSTAT');
    // Bounded: whoever is not served by then counts as not ready (twice the floor in quick mode).
    const deadlineMs = opts.quick ? floorMs * 2 : floorMs * 3 + 30_000;
    const cpu0 = await cpuMs();
    const benchCpu0 = process.cpuUsage();
    const t0 = Date.now();
    const results = await Promise.all(ids.map((id, i) => pageLoad({
      port: gws[i % replicas].port, host: `ws-${id}.localhost`, cookie: cookies[i], deadlineMs,
    })));
    const elapsed = Date.now() - t0;
    const gatewayCpu = (await cpuMs()) - cpu0;
    const benchCpu = process.cpuUsage(benchCpu0);
    const commands = await commandCounts(admin);
    admin.disconnect();
    const redisCalls = [...commands.values()].reduce((a, b) => a + b, 0);
    const writes = (commands.get('eval') ?? 0) + (commands.get('evalsha') ?? 0);
    const publishes = commands.get('publish') ?? 0;
    const served = results.filter((r) => r.ok);
    const readyAfter = results.filter((r) => r.runningSeenAt !== undefined).map((r) => r.runningSeenAt! - t0);
    const servedAfter = served.map((r) => r.servedAt! - t0);
    // Not everybody in time: the deadline is a lower bound on "all ready".
    const allServed = served.length === students ? Math.max(...servedAfter) : elapsed;
    const allReady = readyAfter.length === students ? Math.max(...readyAfter) : elapsed;
    const complete = served.length === students;

    // The class's own tasks and calls (the class before has its own); a duplicate in either counts.
    const inClass = new Set(ids);
    const tagOf = (t: { tags?: { key: string; value: string }[] }) => t.tags?.find((k) => k.key === 'workspace-id')?.value ?? '?';
    const allTasks = fake.tasks();
    const tasks = allTasks.filter((t: { tags?: { key: string; value: string }[] }) => inClass.has(tagOf(t)));
    const perWorkspace = new Map<string, number>();
    for (const t of allTasks) perWorkspace.set(tagOf(t), (perWorkspace.get(tagOf(t)) ?? 0) + 1);
    const since = (c: { at: number }) => c.at >= t0;
    const runTaskOk = fake.callsOf('RunTask', 'ok').filter(since).length;
    const runTaskThrottled = fake.callsOf('RunTask', 'throttled').filter(since).length;
    const runTaskAt = fake.callsOf('RunTask', 'any').filter(since).map((c: { at: number }) => c.at);
    const maxPerSecond = maxInWindow(runTaskAt, 1000);
    const spanS = runTaskAt.length > 1 ? (Math.max(...runTaskAt) - Math.min(...runTaskAt)) / 1000 : NaN;
    const duplicates = allTasks.length - perWorkspace.size;
    // Every AWS call the class met throttled, by operation (the fake enforces each ECS category's bucket).
    const throttledByOp = new Map<string, number>();
    for (const c of fake.calls.filter((c: { at: number; outcome: string }) => c.at >= t0 && c.outcome === 'throttled')) throttledByOp.set(c.op, (throttledByOp.get(c.op) ?? 0) + 1);
    const throttledAll = [...throttledByOp.values()].reduce((a, b) => a + b, 0);
    // Where the time between the floor and "all ready" goes: AWS's own grants and transitions, then
    // the gateway noticing (DescribeTasks poll, Cloud Map, health probe, the student's long-poll).
    const runningAt = new Map<string, number>();
    let lastCreated = 0;
    let lastRunning = 0;
    for (const t of tasks) {
      const id = tagOf(t);
      if (t.createdAt !== undefined) lastCreated = Math.max(lastCreated, t.createdAt * 1000 - t0);
      if (t.startedAt !== undefined) { runningAt.set(id, t.startedAt * 1000); lastRunning = Math.max(lastRunning, t.startedAt * 1000 - t0); }
    }
    const noticedAfter = results.flatMap((r, i) => {
      const at = runningAt.get(ids[i]);
      return r.runningSeenAt !== undefined && at !== undefined ? [r.runningSeenAt - at] : [];
    });
    // An error a student saw (error page, failed start), not the bench's own deadline running out.
    const seen = (e: string) => !/^(poll|transport):timeout$/.test(e);
    const failedStudents = results.filter((r) => r.errors.some(seen) || r.finalState === 'failed');
    const errorCodes = new Map<string, number>();
    for (const r of results) for (const e of r.errors) errorCodes.set(e, (errorCodes.get(e) ?? 0) + 1);
    const starts = gws.reduce((n, g) => n + g.logs.filter((l) => l.event === 'start.requested' && inClass.has(String(l.workspaceId))).length, 0);
    const ratio = allReady / floorMs;

    const figures: Figure[] = [
      ...(warmup > 0 ? [{ name: `the class before: students served (of ${warmup})`, value: warmed, unit: 'count' }] : []),
      { name: 'students', value: students, unit: 'count' },
      { name: 'AWS floor (last grant AWS\'s rates allow + provisioning + pending)', value: floorMs, unit: 'ms' },
      { name: 'ready within the bench deadline', value: readyAfter.length, unit: 'count' },
      { name: complete ? 'all ready (status said running)' : 'all ready: not within the deadline, at least', value: allReady, unit: 'ms' },
      { name: 'all ready / floor', value: round(ratio, 3), unit: 'x' },
      { name: 'all served the workspace page', value: allServed, unit: 'ms' },
      { name: 'p50 ready', value: quantile(readyAfter, 0.5), unit: 'ms' },
      { name: 'first RunTask call', value: runTaskAt.length ? Math.min(...runTaskAt) - t0 : NaN, unit: 'ms' },
      { name: 'last task created (RunTask accepted)', value: Math.round(lastCreated), unit: 'ms' },
      { name: 'last task RUNNING at AWS', value: Math.round(lastRunning), unit: 'ms' },
      { name: 'task RUNNING -> its student told running, p50', value: Math.round(quantile(noticedAfter, 0.5)), unit: 'ms' },
      { name: 'task RUNNING -> its student told running, max', value: Math.round(Math.max(0, ...noticedAfter)), unit: 'ms' },
      { name: 'starts requested (gateway log)', value: starts, unit: 'count' },
      { name: 'RunTask accepted', value: runTaskOk, unit: 'count' },
      { name: 'RunTask throttled by AWS', value: runTaskThrottled, unit: 'count' },
      { name: 'RegisterTaskDefinition accepted', value: fake.callsOf('RegisterTaskDefinition', 'ok').filter(since).length, unit: 'count' },
      { name: 'RegisterTaskDefinition throttled by AWS', value: fake.callsOf('RegisterTaskDefinition', 'throttled').filter(since).length, unit: 'count' },
      { name: 'AWS calls throttled, every operation', value: throttledAll, unit: 'count' },
      ...[...throttledByOp].filter(([op]) => op !== 'RunTask' && op !== 'RegisterTaskDefinition').map(([op, n]) => ({ name: `${op} throttled by AWS`, value: n, unit: 'count' })),
      { name: 'tasks', value: tasks.length, unit: 'count' },
      { name: 'duplicate tasks (tasks - workspaces with a task)', value: duplicates, unit: 'count' },
      { name: 'most tasks for one workspace', value: Math.max(0, ...perWorkspace.values()), unit: 'count' },
      { name: 'students who met an error (failed start, error page)', value: failedStudents.length, unit: 'count' },
      { name: 'students not served within the bench deadline', value: students - served.length, unit: 'count' },
      { name: 'our max RunTask in any 1 s', value: maxPerSecond, unit: 'count' },
      { name: 'our mean RunTask rate', value: round((runTaskAt.length - 1) / spanS, 1), unit: '/s' },
      { name: 'status long-polls per student (mean)', value: round(results.reduce((a, r) => a + r.polls, 0) / students, 1), unit: 'count' },
      { name: 'Redis commands per student', value: round(redisCalls / students, 1), unit: 'count' },
      { name: 'Redis record writes (EVAL) per student', value: round(writes / students, 1), unit: 'count' },
      { name: 'Redis PUBLISH per student', value: round(publishes / students, 1), unit: 'count' },
      { name: 'gateway CPU during the surge (all replicas)', value: gatewayCpu, unit: 'ms' },
      { name: 'bench process CPU (browsers, fake AWS, task servers)', value: Math.round((benchCpu.user + benchCpu.system) / 1000), unit: 'ms' },
      { name: 'gateway RSS after (largest replica)', value: round(Math.max(...(await Promise.all(gws.map((g) => g.rss())))) / 1048576, 1), unit: 'MB' },
    ];
    const notes: string[] = [];
    if (errorCodes.size) notes.push(`class-surge (${variant}): errors students met: ${[...errorCodes].map(([k, v]) => `${k} x${v}`).join(', ')}`);
    if (writes / students > 10) {
      notes.push(`class-surge (${variant}): ${round(writes / students, 1)} record writes and ${round(results.reduce((a, r) => a + r.polls, 0) / students, 1)} long-polls per student (a start needs about 8): a queued student's position is written (fenced write, PUBLISH, long-poll wake-up) at most once a second (gateway/workspaces.ts), so the extra writes grow with the time spent in the queue, not with the square of the class size.`);
    }
    if (!complete) notes.push(`class-surge (${variant}): only ${served.length} of ${students} students were served within the bench deadline (${Math.round(deadlineMs / 1000)} s); the ratio is a lower bound.`);
    return { figures, ratio, duplicates, failed: failedStudents.length, allReady, floorMs, notes };
  } finally {
    await Promise.all(gws.map((g) => g.close()));
    await fake.close();
    await redis.stop();
  }
}

const FRESH = 'gateway, fresh process (defaults)';
const NEW_CLASS = 'a new class: 60 students never seen (RegisterTaskDefinition 1/s, burst 20)';

export async function run(opts: ClassSurgeOptions): Promise<ScenarioResult> {
  const systems: ScenarioResult['systems'] = [];
  const targets: Target[] = [];
  const notes: string[] = [
    `class-surge: gateway child process (PROVISIONER=ecs, Redis store) against the fake AWS endpoint in real time, RunTask 20/s burst 20, Fargate launch burst 100 refill 20/s, RegisterTaskDefinition 1/s burst 20 and every ECS API category's bucket (DescribeTaskDefinition 20/s burst 50, DescribeTasks and ListTasks 20/s burst 100, RunTask and StopTask 40/s burst 100) enforced; a replica reads each returning student's family (DescribeTaskDefinition) at their first start in that process; each student is a simulated browser (page load, status long-poll, reload).`,
    'class-surge: floor = max((N - 20) / 20 s, (N - 100) / 20 s) + provisioning + pending (RunTask, Fargate launches); the gateway additionally needs one batched DescribeTasks poll (every 250 ms, 100 ms more per 100 tasks followed) and one health probe to see a task ready.',
    'class-surge: the class has used the platform before (its task definition families were registered on an earlier day, as at any 09:00 but a class\'s first); the new-class row (full mode) registers one each at RegisterTaskDefinition\'s 1/s after a burst of 20, floor (N - 20) / 1 s + provisioning + pending.',
  ];
  // Quick mode keeps under five minutes without the class before: its one class meets a fresh process.
  const warmup = opts.warmup ?? (opts.quick ? 0 : 100);
  if (warmup === 0) notes.push('class-surge: the class meets a fresh process (quick mode: no class before).');
  else notes.push(`class-surge: each class but the fresh process's meets replicas that have served a class of ${warmup} before (other workspaces, all served, then a pause until AWS's buckets and ours are full again), as at 09:00; the ratio to the floor is judged on those; duplicate tasks are counted over both classes.`);
  const variants: Variant[] = [{ name: 'gateway (defaults: RUNTASK_RATE=20, RUNTASK_BURST=20, shared in Redis)', env: {}, replicas: 1, warmup }];
  if (!opts.quick) {
    // Two replicas draw from the one bucket: together, not each, at AWS's rate.
    variants.push({ name: '2 gateway replicas (defaults)', env: {}, replicas: 2, warmup });
    // The same class as the first thing a new process serves (V8 compiles its code meanwhile).
    variants.push({ name: FRESH, env: {}, replicas: 1, warmup: 0 });
    // A class on its first day: one RegisterTaskDefinition each, at AWS's 1 a second after its burst.
    variants.push({ name: NEW_CLASS, env: {}, replicas: 1, warmup, students: 60, newClass: true });
  }
  if (opts.env) variants.splice(0, variants.length, { name: 'gateway (custom env)', env: opts.env, replicas: 1, warmup });
  for (const v of variants) {
    const name = v.name;
    const r = await surge(opts, v);
    systems.push({ system: name, figures: r.figures });
    notes.push(...r.notes);
    const tag = variants.length > 1 ? ` [${name}]` : '';
    if (name !== FRESH) targets.push({ name: `class-surge: all ready within 10% of the AWS floor${tag}`, value: round(r.ratio, 3), limit: 1.1, unit: 'x floor', op: '<=', met: r.ratio <= 1.1 });
    else notes.push(`class-surge: ${FRESH}: all ready at ${round(r.ratio, 3)} x the floor (figures only; the ratio is judged on replicas that have served before)`);
    targets.push(
      { name: `class-surge: duplicate starts${tag}`, value: r.duplicates, limit: 0, unit: 'count', op: '<=', met: r.duplicates === 0 },
      { name: `class-surge: students who saw an error${tag}`, value: r.failed, limit: 0, unit: 'count', op: '<=', met: r.failed === 0 },
    );
  }
  for (const t of targets) opts.log(targetLine(t));
  return { scenario: 'class-start surge', systems, targets, notes };
}
