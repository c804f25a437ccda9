// Issue 7, scenario 4: a class starts at 09:00. 500 students each load their own stopped workspace
// at once; the gateway (a child process with PROVISIONER=ecs and the Redis store) starts them on the
// fake AWS endpoint, which runs in real time and enforces RunTask's rate (20/s, burst 20) and the
// Fargate task launch rate (burst 100, refill 20/s). Compared with the floor those rates allow:
// nobody can be ready before the last RunTask AWS would accept, plus the task's own provisioning
// and pending time.
import { Redis } from 'ioredis';
import { startRedis } from '../../test/helpers/redis.js';
import { startFakeAws } from '../../test/fake-aws/index.js';
import { fakeAwsEnv } from '../../test/fake-aws/config.js';
import { targetLine, type Figure, type ScenarioResult, type Target } from '../result.js';
import { pageLoad } from './b-browser.js';
import { round } from '../lib.js';
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
}

// AWS's rates as the fake enforces them (ECS API request throttling; Fargate task launch rate).
const RUNTASK = { rate: 20, burst: 20 };
const FARGATE_LAUNCH = { rate: 20, burst: 100 };

/** Earliest moment (ms after the surge) the last of n tasks can be ready under both buckets. */
export function surgeFloorMs(n: number, provisioningMs: number, pendingMs: number): number {
  const lastGrant = (b: { rate: number; burst: number }) => Math.max(0, (n - b.burst) / b.rate) * 1000;
  return Math.max(lastGrant(RUNTASK), lastGrant(FARGATE_LAUNCH)) + provisioningMs + pendingMs;
}

async function surge(opts: ClassSurgeOptions, variant: string, env: Record<string, string>, replicas = 1) {
  const students = opts.students ?? 500;
  const provisioningMs = opts.provisioningMs ?? 1000;
  const pendingMs = opts.pendingMs ?? 1000;
  const redis = await startRedis();
  const fake = await startFakeAws({
    durations: { provisioningMs, pendingMs, stoppingMs: 100 },
    rateLimits: { RunTask: RUNTASK, FargateLaunch: FARGATE_LAUNCH },
  });
  const gws: GatewayChild[] = [];
  try {
    // Replicas share Redis (and so the RunTask bucket); student i always reaches replica i mod n.
    for (let r = 0; r < replicas; r++) gws.push(await startGatewayChild({ ...fakeAwsEnv(fake), REDIS_URL: redis.url, ...env }, 20_000, opts.nodeArgs));
    const cpuMs = async () => (await Promise.all(gws.map((g) => g.cpuMs()))).reduce((a, b) => a + b, 0);
    const mint = cookieMinter();
    const ids = Array.from({ length: students }, (_, i) => `s${String(i).padStart(4, '0')}`);
    const cookies = await Promise.all(ids.map((id) => mint(id)));
    const floorMs = surgeFloorMs(students, provisioningMs, pendingMs);
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

    const tasks = fake.tasks();
    const perWorkspace = new Map<string, number>();
    for (const t of tasks) {
      const id = t.tags?.find((k: { key: string }) => k.key === 'workspace-id')?.value ?? '?';
      perWorkspace.set(id, (perWorkspace.get(id) ?? 0) + 1);
    }
    const runTaskOk = fake.count('RunTask', 'ok');
    const runTaskThrottled = fake.count('RunTask', 'throttled');
    const runTaskAt = fake.callsOf('RunTask', 'any').map((c: { at: number }) => c.at);
    const maxPerSecond = maxInWindow(runTaskAt, 1000);
    const spanS = runTaskAt.length > 1 ? (Math.max(...runTaskAt) - Math.min(...runTaskAt)) / 1000 : NaN;
    const duplicates = tasks.length - perWorkspace.size;
    // An error a student saw (error page, failed start), not the bench's own deadline running out.
    const seen = (e: string) => !/^(poll|transport):timeout$/.test(e);
    const failedStudents = results.filter((r) => r.errors.some(seen) || r.finalState === 'failed');
    const errorCodes = new Map<string, number>();
    for (const r of results) for (const e of r.errors) errorCodes.set(e, (errorCodes.get(e) ?? 0) + 1);
    const starts = gws.reduce((n, g) => n + g.logs.filter((l) => l.event === 'start.requested').length, 0);
    const ratio = allReady / floorMs;

    const figures: Figure[] = [
      { name: 'students', value: students, unit: 'count' },
      { name: 'AWS floor (last RunTask grant + provisioning + pending)', value: floorMs, unit: 'ms' },
      { name: 'ready within the bench deadline', value: readyAfter.length, unit: 'count' },
      { name: complete ? 'all ready (status said running)' : 'all ready: not within the deadline, at least', value: allReady, unit: 'ms' },
      { name: 'all ready / floor', value: round(ratio, 3), unit: 'x' },
      { name: 'all served the workspace page', value: allServed, unit: 'ms' },
      { name: 'p50 ready', value: quantile(readyAfter, 0.5), unit: 'ms' },
      { name: 'starts requested (gateway log)', value: starts, unit: 'count' },
      { name: 'RunTask accepted', value: runTaskOk, unit: 'count' },
      { name: 'RunTask throttled by AWS', value: runTaskThrottled, unit: 'count' },
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

export async function run(opts: ClassSurgeOptions): Promise<ScenarioResult> {
  const systems: ScenarioResult['systems'] = [];
  const targets: Target[] = [];
  const notes: string[] = [
    'class-surge: gateway child process (PROVISIONER=ecs, Redis store) against the fake AWS endpoint in real time, RunTask 20/s burst 20 and Fargate launch burst 100 refill 20/s enforced; each student is a simulated browser (page load, status long-poll, reload).',
    'class-surge: floor = max((N - 20) / 20 s, (N - 100) / 20 s) + provisioning + pending; the gateway additionally needs one batched DescribeTasks poll (every 250 ms, 100 ms more per 100 tasks followed) and one health probe to see a task ready.',
  ];
  const variants: Array<[string, Record<string, string>, number]> = [['gateway (defaults: RUNTASK_RATE=20, RUNTASK_BURST=20, shared in Redis)', {}, 1]];
  if (!opts.quick) {
    // Two replicas draw from the one bucket: together, not each, at AWS's rate.
    variants.push(['2 gateway replicas (defaults)', {}, 2]);
    // The previous defaults, for comparison: 15 calls/s per replica, evenly spaced.
    variants.push(['gateway (RUNTASK_RATE=15, RUNTASK_BURST=1)', { RUNTASK_RATE: '15', RUNTASK_BURST: '1' }, 1]);
  }
  if (opts.env) variants.splice(0, variants.length, ['gateway (custom env)', opts.env, 1]);
  for (const [name, env, replicas] of variants) {
    const r = await surge(opts, name, env, replicas);
    systems.push({ system: name, figures: r.figures });
    notes.push(...r.notes);
    const tag = variants.length > 1 ? ` [${name}]` : '';
    // The old settings are a comparison row, not a configuration anybody is asked to run.
    if (name.includes('RUNTASK_RATE=15')) { notes.push(`class-surge: ${name}, the defaults before the shared bucket: all ready at ${round(r.ratio, 3)} x the floor (figures only, no target)`); continue; }
    targets.push(
      { name: `class-surge: all ready within 10% of the AWS floor${tag}`, value: round(r.ratio, 3), limit: 1.1, unit: 'x floor', op: '<=', met: r.ratio <= 1.1 },
      { name: `class-surge: duplicate starts${tag}`, value: r.duplicates, limit: 0, unit: 'count', op: '<=', met: r.duplicates === 0 },
      { name: `class-surge: students who saw an error${tag}`, value: r.failed, limit: 0, unit: 'count', op: '<=', met: r.failed === 0 },
    );
  }
  for (const t of targets) opts.log(targetLine(t));
  return { scenario: 'class-start surge', systems, targets, notes };
}
