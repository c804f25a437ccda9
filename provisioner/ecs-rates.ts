// AWS throttles the ECS API per account and Region in token buckets shared by categories of
// operations (API Reference, "Request throttling for the Amazon ECS API"). RunTask (Fargate's own
// 20/s) and RegisterTaskDefinition (1/s) have lines of their own in admission.ts; every other call
// the provisioner makes spends one of the buckets below, so each call waits for a token of its
// category first, and with Redis every replica draws from the same one (issue 7, class surge: a
// class meeting a fresh replica read 500 task definitions at once against a bucket of 50
// refilled at 20/s, and 54 students' starts failed after their retries).

export type EcsApiBucket = 'task-read' | 'task-modify' | 'taskdef-read';

export interface Rate {
  /** Tokens added per second (AWS's sustained rate). */
  rate: number;
  /** Tokens the bucket holds (AWS's burst). */
  burst: number;
}

/** AWS's category of each operation the provisioner calls, where it has a bucket of its own here. */
const BUCKET_OF: Readonly<Record<string, EcsApiBucket>> = {
  DescribeTasks: 'task-read', // "Cluster resource read actions", with ListTasks
  ListTasks: 'task-read',
  RunTask: 'task-modify', // "Cluster resource modify actions", with StopTask (RunTask also has Fargate's line)
  StopTask: 'task-modify',
  DescribeTaskDefinition: 'taskdef-read', // "Task definition read actions"
};

/** AWS's default burst and sustained rate of each category (the throttling page's table). */
export const ECS_API_RATE_DEFAULTS: Readonly<Record<EcsApiBucket, Rate>> = {
  'task-read': { rate: 20, burst: 100 },
  'task-modify': { rate: 40, burst: 100 },
  'taskdef-read': { rate: 20, burst: 50 },
};

/** The bucket an ECS operation spends, or undefined for one paced elsewhere (or not ECS). */
export function ecsApiBucket(operation: string): EcsApiBucket | undefined {
  return Object.hasOwn(BUCKET_OF, operation) ? BUCKET_OF[operation] : undefined;
}

/**
 * Parses `ECS_API_RATES` ("task-read=20/100,taskdef-read=40/100": bucket=rate/burst, for an
 * account whose quotas AWS raised) over the defaults; throws a message naming the fault.
 */
export function parseEcsApiRates(text: string | undefined): Record<EcsApiBucket, Rate> {
  const out: Record<EcsApiBucket, Rate> = { ...ECS_API_RATE_DEFAULTS };
  if (text === undefined || text.trim() === '') return out;
  const seen = new Set<string>();
  for (const item of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^([a-z-]+)=(\d+(?:\.\d+)?)\/(\d+)$/.exec(item);
    if (!m) throw new Error(`${JSON.stringify(item)} is not bucket=rate/burst (e.g. task-read=20/100)`);
    const [, name, rate, burst] = m;
    if (!Object.hasOwn(ECS_API_RATE_DEFAULTS, name)) {
      throw new Error(`unknown bucket ${JSON.stringify(name)}; the buckets are ${Object.keys(ECS_API_RATE_DEFAULTS).join(', ')}`);
    }
    if (seen.has(name)) throw new Error(`${name} is given twice`);
    seen.add(name);
    const r = Number(rate);
    const b = Number(burst);
    if (!(r > 0) || b < 1 || b > 100_000) throw new Error(`${name}: the rate must be above 0 and the burst between 1 and 100000`);
    out[name as EcsApiBucket] = { rate: r, burst: b };
  }
  return out;
}
