// A fake AWS endpoint for ECS, Cloud Map and EFS that the real @aws-sdk v3 clients talk to over
// loopback HTTP: ECS and Cloud Map speak awsJson1_1 (POST /, X-Amz-Target), EFS speaks REST-JSON
// (/2015-02-01/access-points). It models what the provisioner relies on: task lifecycle on a
// controllable clock, RunTask clientToken idempotency (ECS_Idempotency.html: same token + other
// parameters -> ConflictException), per-operation throttling (token buckets), Spot capacity
// failures, tasks dying while starting, and injected faults (stall, dropped connection, 500).
// Signatures are not verified. Every call is recorded so tests can count them.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { randomBytes } from 'node:crypto';
import type { Clock } from '../../gateway/clock.js';
import { systemClock } from '../../gateway/clock.js';
import { freePort } from '../helpers/redis.js';
import { takeToken, type BucketState } from '../../provisioner/admission.js';
import { tinyWorkspace, type WorkspaceFactory, type WorkspaceInstance } from './workspace.js';

export { demoTasks, tinyWorkspace } from './workspace.js';
export type { WorkspaceFactory, WorkspaceInstance, WorkspaceTaskInfo } from './workspace.js';

/** `{ error }`: answers that AWS error type (status 400 unless given), e.g. Cloud Map's DuplicateRequest. */
export type FaultMode = 'stall' | 'drop' | 500 | { error: string; status?: number };

export interface FakeCall {
  service: 'ecs' | 'cloudmap' | 'efs';
  op: string;
  input: any;
  /** Fake clock time the call arrived. */
  at: number;
  outcome: 'ok' | 'error' | 'throttled' | 'fault';
  error?: string;
}

export interface RateLimit {
  rate: number;
  burst: number;
}

/**
 * AWS's ECS API buckets ("Request throttling for the Amazon ECS API", the API Reference): every
 * operation in a category shares one bucket per account and Region, so DescribeTasks and ListTasks
 * spend the same tokens, RegisterTaskDefinition and DeregisterTaskDefinition too.
 */
export const ECS_CATEGORY_OF: Readonly<Record<string, string>> = {
  DescribeClusters: 'ecs:ClusterRead', ListClusters: 'ecs:ClusterRead',
  RegisterTaskDefinition: 'ecs:TaskDefinitionModify', DeregisterTaskDefinition: 'ecs:TaskDefinitionModify',
  DescribeTaskDefinition: 'ecs:TaskDefinitionRead', ListTaskDefinitions: 'ecs:TaskDefinitionRead', ListTaskDefinitionFamilies: 'ecs:TaskDefinitionRead',
  TagResource: 'ecs:TagModify', UntagResource: 'ecs:TagModify',
  ListTagsForResource: 'ecs:TagRead',
  RunTask: 'ecs:ClusterResourceModify', StartTask: 'ecs:ClusterResourceModify', StopTask: 'ecs:ClusterResourceModify',
  DescribeTasks: 'ecs:ClusterResourceRead', ListTasks: 'ecs:ClusterResourceRead',
};

/** Burst and sustained rate of each category, as that page gives them. */
export const ECS_CATEGORY_LIMITS: Readonly<Record<string, RateLimit>> = {
  'ecs:ClusterRead': { rate: 20, burst: 50 },
  'ecs:TaskDefinitionModify': { rate: 1, burst: 20 },
  'ecs:TaskDefinitionRead': { rate: 20, burst: 50 },
  'ecs:TagModify': { rate: 10, burst: 20 },
  'ecs:TagRead': { rate: 20, burst: 50 },
  'ecs:ClusterResourceModify': { rate: 40, burst: 100 },
  'ecs:ClusterResourceRead': { rate: 20, burst: 100 },
};

export interface TaskPlan {
  /** The task stops instead of entering this status. */
  dieAt: 'PENDING' | 'RUNNING';
  stopCode?: string;
  stoppedReason?: string;
  exitCode?: number;
  containerReason?: string;
}

export interface FakeAwsOptions {
  /** Drives task transitions and rate windows. Default: the system clock. */
  clock?: Clock;
  region?: string;
  accountId?: string;
  /** Clock ms a task spends in PROVISIONING, PENDING, and stopping. Defaults 100, 100, 50. */
  durations?: { provisioningMs?: number; pendingMs?: number; stoppingMs?: number };
  /** Started when a task enters RUNNING, closed when it stops. Default: tinyWorkspace. */
  workspace?: WorkspaceFactory;
  /** The port every task's workspace listens on (its container port). Default: a free port. */
  workspacePort?: number;
  /**
   * Rate limits (token buckets), by operation or by ECS category (below); a call takes a token from
   * its operation's bucket, if it has one, and its category's. Defaults: `ECS_CATEGORY_LIMITS`,
   * RunTask on Fargate 20/s burst 20, and `FargateLaunch`, the Fargate task launch rate (burst 100,
   * refill 20/s), applied to each launched task.
   */
  rateLimits?: Record<string, RateLimit>;
  spotCapacity?: boolean;
  fargateCapacity?: boolean;
  /** Seeds: EFS file systems, Cloud Map services and a base task definition. */
  fileSystemIds?: string[];
  serviceIds?: string[];
  /** Registered as `<family>:1`; default family `workspace-base` with an EFS volume `home`. */
  baseTaskDefinition?: any;
  /** Cloud Map instances per service (AWS: 1,000). */
  maxInstancesPerService?: number;
  /** EFS access points per file system (AWS: 10,000). */
  maxAccessPointsPerFileSystem?: number;
  /**
   * Clock ms after RunTask during which DescribeTasks still reports a new task MISSING: the ECS API is
   * eventually consistent (RunTask API reference: describe "starting with a couple of seconds of wait
   * time and increasing gradually up to five minutes"). Default 0.
   */
  describeLagMs?: number;
}

export const SPOT_CAPACITY_REASON = 'Capacity is unavailable at this time. Please try again later or in a different availability zone';

interface FakeTask {
  taskArn: string;
  clusterArn: string;
  taskDefinitionArn: string;
  family: string;
  startedBy?: string;
  group?: string;
  tags: { key: string; value: string }[];
  capacityProviderName: string;
  launchType: 'FARGATE';
  overrides: any;
  ip: string;
  eniId: string;
  createdAt: number;
  startedAt?: number;
  stoppingAt?: number;
  /**
   * Told to stop (desiredStatus STOPPED) while its container still runs: ECS keeps lastStatus
   * RUNNING through the container's stop timeout (SIGTERM, up to 2 minutes for a Spot reclaim).
   */
  draining?: boolean;
  stoppedAt?: number;
  lastStatus: string;
  desiredStatus: string;
  stopCode?: string;
  stoppedReason?: string;
  exitCode?: number;
  containerReason?: string;
  plan?: TaskPlan;
  workspace?: Promise<WorkspaceInstance | undefined>;
  containerName: string;
  environment: Record<string, string>;
}

class AwsError extends Error {
  constructor(readonly type: string, message: string, readonly status = 400, readonly extra: Record<string, unknown> = {}) {
    super(message);
  }
}

const ECS_TARGET = 'AmazonEC2ContainerServiceV20141113.';
const CLOUDMAP_TARGET = 'Route53AutoNaming_v20170314.';

export const DEFAULT_BASE_TASK_DEFINITION = {
  family: 'workspace-base',
  networkMode: 'awsvpc',
  requiresCompatibilities: ['FARGATE'],
  cpu: '1024',
  memory: '2048',
  executionRoleArn: 'arn:aws:iam::123456789012:role/workspace-execution',
  taskRoleArn: 'arn:aws:iam::123456789012:role/workspace-task',
  containerDefinitions: [
    {
      name: 'code-server',
      image: '123456789012.dkr.ecr.eu-west-1.amazonaws.com/code-server:4.96.4',
      essential: true,
      portMappings: [{ containerPort: 8080, protocol: 'tcp' }],
      mountPoints: [{ sourceVolume: 'home', containerPath: '/home/coder' }],
      environment: [{ name: 'EXAMPLE', value: 'base' }],
    },
  ],
  volumes: [{ name: 'home', efsVolumeConfiguration: { fileSystemId: 'fs-00000000', rootDirectory: '/' } }],
};

function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v).sort().filter((k) => (v as any)[k] !== undefined).map((k) => `${JSON.stringify(k)}:${canonical((v as any)[k])}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

function hex(n: number): string {
  return randomBytes(Math.ceil(n / 2)).toString('hex').slice(0, n);
}

export async function startFakeAws(opts: FakeAwsOptions = {}) {
  const clock = opts.clock ?? systemClock;
  const region = opts.region ?? 'eu-west-1';
  const account = opts.accountId ?? '123456789012';
  const dur = { provisioningMs: 100, pendingMs: 100, stoppingMs: 50, ...opts.durations };
  const workspaceFactory = opts.workspace ?? tinyWorkspace;
  const workspacePort = opts.workspacePort ?? (await freePort());
  const limits: Record<string, RateLimit> = {
    ...ECS_CATEGORY_LIMITS, RunTask: { rate: 20, burst: 20 }, FargateLaunch: { rate: 20, burst: 100 }, ...opts.rateLimits,
  };
  const capacity = { spot: opts.spotCapacity ?? true, fargate: opts.fargateCapacity ?? true };
  const maxInstances = opts.maxInstancesPerService ?? 1000;
  const maxAccessPoints = opts.maxAccessPointsPerFileSystem ?? 10_000;
  // A random second octet keeps two fakes (parallel test files) on distinct task addresses.
  const ipOctet = 16 + Math.floor(Math.random() * 200);
  let ipCounter = 0;

  const calls: FakeCall[] = [];
  const buckets = new Map<string, BucketState>();
  const faults = new Map<string, { mode: FaultMode; times: number }>();
  const plans: { match: (workspaceId: string | undefined) => boolean; plan: TaskPlan; times: number }[] = [];
  const stalled = new Set<ServerResponse>();
  // Operations whose requests wait, unanswered and not yet handled, until the test lets them go.
  const held = new Map<string, (() => void)[]>();

  const taskDefs = new Map<string, any[]>(); // family -> revisions (index = revision - 1)
  const taskDefTags = new Map<string, { key: string; value: string }[]>(); // arn -> tags
  const tasks = new Map<string, FakeTask>();
  const runTokens = new Map<string, { params: string; response: any }>(); // cluster|token
  const services = new Map<string, Map<string, Record<string, string>>>();
  for (const id of opts.serviceIds ?? ['srv-workspaces0001']) services.set(id, new Map());
  const operations = new Map<string, any>();
  const fileSystems = new Map<string, any[]>(); // fs id -> access points
  for (const id of opts.fileSystemIds ?? ['fs-0123456789abcdef0']) fileSystems.set(id, []);
  const apTokens = new Map<string, { params: string; ap: any }>();

  // ---------- helpers ----------
  const clusterArn = (c: string) => (c.startsWith('arn:') ? c : `arn:aws:ecs:${region}:${account}:cluster/${c || 'default'}`);

  /** Takes a token from each named bucket that has a limit, or from none of them. */
  function takeRate(...names: (string | undefined)[]): boolean {
    const now = clock.now();
    const steps: [string, BucketState][] = [];
    for (const name of names) {
      const lim = name === undefined ? undefined : limits[name];
      if (name === undefined || !lim) continue;
      const r = takeToken(buckets.get(name) ?? { tokens: lim.burst, at: now }, now, lim.rate, lim.burst);
      if (!r.granted) return false;
      steps.push([name, r.state]);
    }
    for (const [name, state] of steps) buckets.set(name, state);
    return true;
  }

  function registerTaskDef(input: any, tags?: { key: string; value: string }[]) {
    if (!input?.family) throw new AwsError('ClientException', 'Family is required.');
    if (!Array.isArray(input.containerDefinitions) || input.containerDefinitions.length === 0) {
      throw new AwsError('ClientException', 'Container list cannot be empty.');
    }
    const revs = taskDefs.get(input.family) ?? [];
    const revision = revs.length + 1;
    const arn = `arn:aws:ecs:${region}:${account}:task-definition/${input.family}:${revision}`;
    const { tags: _t, ...rest } = input;
    const td = { ...rest, taskDefinitionArn: arn, revision, status: 'ACTIVE', compatibilities: ['EC2', 'FARGATE'], registeredAt: clock.now() / 1000 };
    revs.push(td);
    taskDefs.set(input.family, revs);
    if (tags?.length) taskDefTags.set(arn, tags);
    return td;
  }
  registerTaskDef(opts.baseTaskDefinition ?? DEFAULT_BASE_TASK_DEFINITION);

  function resolveTaskDef(ref: string): any {
    let family = ref;
    let rev: number | undefined;
    const arn = /^arn:aws[a-z-]*:ecs:[^:]+:\d+:task-definition\/([^:]+):(\d+)$/.exec(ref);
    if (arn) { family = arn[1]; rev = Number(arn[2]); }
    else {
      const fr = /^([^:]+):(\d+)$/.exec(ref);
      if (fr) { family = fr[1]; rev = Number(fr[2]); }
    }
    const revs = taskDefs.get(family);
    if (!revs?.length) return undefined;
    return rev === undefined ? revs[revs.length - 1] : revs[rev - 1];
  }

  function tagValue(t: FakeTask, key: string): string | undefined {
    return t.tags.find((x) => x.key === key)?.value;
  }

  function stopNow(t: FakeTask, at: number) {
    t.lastStatus = 'STOPPED';
    t.desiredStatus = 'STOPPED';
    t.stoppedAt = at;
    const ws = t.workspace;
    t.workspace = Promise.resolve(undefined);
    void ws?.then((w) => w?.close()).catch(() => {});
  }

  function startWorkspace(t: FakeTask) {
    const gen = tagValue(t, 'generation');
    t.workspace = workspaceFactory({
      taskArn: t.taskArn,
      workspaceId: tagValue(t, 'workspace-id'),
      generation: gen === undefined ? undefined : Number(gen),
      host: t.ip,
      port: workspacePort,
      environment: t.environment,
    }).catch((err) => {
      // The container could not start: it "exits", as an essential container would.
      if (t.lastStatus !== 'STOPPED') {
        t.stopCode = 'EssentialContainerExited';
        t.stoppedReason = 'Essential container in task exited';
        t.exitCode = 1;
        t.containerReason = String(err?.message ?? err);
        stopNow(t, clock.now());
      }
      return undefined;
    });
  }

  /** Moves a task along its lifecycle to where the clock says it is. */
  function refresh(t: FakeTask) {
    if (t.lastStatus === 'STOPPED') return;
    const now = clock.now();
    if (t.stoppingAt !== undefined) {
      if (t.draining) return;
      if (now >= t.stoppingAt + dur.stoppingMs) stopNow(t, t.stoppingAt + dur.stoppingMs);
      else t.lastStatus = 'DEPROVISIONING';
      return;
    }
    const pendingAt = t.createdAt + dur.provisioningMs;
    const runningAt = pendingAt + dur.pendingMs;
    const target = now >= runningAt ? 'RUNNING' : now >= pendingAt ? 'PENDING' : 'PROVISIONING';
    if (t.plan && (target === t.plan.dieAt || (target === 'RUNNING' && t.plan.dieAt === 'PENDING'))) {
      t.stopCode = t.plan.stopCode ?? 'EssentialContainerExited';
      t.stoppedReason = t.plan.stoppedReason ?? 'Essential container in task exited';
      t.exitCode = t.plan.exitCode ?? 1;
      t.containerReason = t.plan.containerReason;
      stopNow(t, t.plan.dieAt === 'PENDING' ? pendingAt : runningAt);
      return;
    }
    if (target === 'RUNNING' && t.lastStatus !== 'RUNNING') {
      t.startedAt = runningAt;
      t.lastStatus = 'RUNNING';
      startWorkspace(t);
      return;
    }
    t.lastStatus = target;
  }

  function refreshAll() {
    for (const t of tasks.values()) refresh(t);
  }

  function taskView(t: FakeTask, withTags: boolean) {
    const s = (ms: number | undefined) => (ms === undefined ? undefined : ms / 1000);
    const eniStatus = t.lastStatus === 'PROVISIONING' ? 'PRECREATED' : t.lastStatus === 'STOPPED' ? 'DELETED' : 'ATTACHED';
    const attachmentId = `${t.eniId}-att`;
    return {
      taskArn: t.taskArn,
      clusterArn: t.clusterArn,
      taskDefinitionArn: t.taskDefinitionArn,
      lastStatus: t.lastStatus,
      desiredStatus: t.desiredStatus,
      launchType: t.launchType,
      capacityProviderName: t.capacityProviderName,
      platformVersion: '1.4.0',
      availabilityZone: `${region}a`,
      startedBy: t.startedBy,
      group: t.group,
      cpu: '1024',
      memory: '2048',
      createdAt: s(t.createdAt),
      startedAt: s(t.startedAt),
      stoppingAt: s(t.stoppingAt),
      stoppedAt: s(t.stoppedAt),
      stopCode: t.stopCode,
      stoppedReason: t.stoppedReason,
      overrides: t.overrides,
      tags: withTags ? t.tags : undefined,
      attachments: [
        {
          id: attachmentId,
          type: 'ElasticNetworkInterface',
          status: eniStatus,
          details: [
            { name: 'subnetId', value: 'subnet-0fake' },
            { name: 'networkInterfaceId', value: t.eniId },
            { name: 'macAddress', value: '0a:00:00:00:00:01' },
            { name: 'privateDnsName', value: `ip-${t.ip.replace(/\./g, '-')}.${region}.compute.internal` },
            { name: 'privateIPv4Address', value: t.ip },
          ],
        },
      ],
      containers: [
        {
          containerArn: `${t.taskArn.replace(':task/', ':container/')}/${t.containerName}`,
          taskArn: t.taskArn,
          name: t.containerName,
          lastStatus: t.lastStatus === 'DEPROVISIONING' ? 'STOPPED' : t.lastStatus,
          exitCode: t.lastStatus === 'STOPPED' ? t.exitCode : undefined,
          reason: t.containerReason,
          networkInterfaces: [{ attachmentId, privateIpv4Address: t.ip }],
        },
      ],
    };
  }

  // ---------- ECS ----------
  const ecs: Record<string, (input: any) => any> = {
    RegisterTaskDefinition(input) {
      const td = registerTaskDef(input, input.tags);
      return { taskDefinition: td, tags: input.tags ?? [] };
    },
    DescribeTaskDefinition(input) {
      const td = resolveTaskDef(String(input.taskDefinition ?? ''));
      if (!td) throw new AwsError('ClientException', 'Unable to describe task definition.');
      const withTags = (input.include ?? []).includes('TAGS');
      return { taskDefinition: td, tags: withTags ? taskDefTags.get(td.taskDefinitionArn) ?? [] : undefined };
    },
    RunTask(input) {
      const token: string | undefined = input.clientToken;
      const cArn = clusterArn(input.cluster ?? 'default');
      const { clientToken: _c, ...params } = input;
      const key = `${cArn}|${token}`;
      if (token !== undefined) {
        if (token.length > 64) throw new AwsError('InvalidParameterException', 'clientToken must be at most 64 characters.');
        const prev = runTokens.get(key);
        if (prev) {
          if (prev.params !== canonical(params)) {
            throw new AwsError('ConflictException', 'The specified client token has already been used with different parameters.');
          }
          return prev.response;
        }
      }
      const td = resolveTaskDef(String(input.taskDefinition ?? ''));
      if (!td) throw new AwsError('InvalidParameterException', 'TaskDefinition not found.');
      const vpc = input.networkConfiguration?.awsvpcConfiguration;
      if (td.networkMode === 'awsvpc' && !vpc?.subnets?.length) {
        throw new AwsError('InvalidParameterException', "Network Configuration must be provided when networkMode 'awsvpc' is specified.");
      }
      const strategy: { capacityProvider: string }[] = input.capacityProviderStrategy ?? [];
      if (strategy.length && input.launchType) {
        throw new AwsError('InvalidParameterException', 'Specifying both a launch type and capacity provider strategy is not supported.');
      }
      const provider = strategy[0]?.capacityProvider ?? 'FARGATE';
      const count = input.count ?? 1;
      let response: any;
      if ((provider === 'FARGATE_SPOT' && !capacity.spot) || (provider === 'FARGATE' && !capacity.fargate)) {
        // RunTask reports capacity shortage per task in `failures`, not as an exception.
        response = { tasks: [], failures: Array.from({ length: count }, () => ({ reason: SPOT_CAPACITY_REASON })) };
      } else {
        const created: any[] = [];
        for (let i = 0; i < count; i++) {
          if (!takeRate('FargateLaunch')) throw new AwsError('ThrottlingException', 'Rate exceeded');
          ipCounter++;
          const container = td.containerDefinitions[0];
          const envOver = (input.overrides?.containerOverrides ?? []).find((o: any) => o.name === container.name)?.environment ?? [];
          const environment: Record<string, string> = {};
          for (const e of [...(container.environment ?? []), ...envOver]) environment[e.name] = e.value;
          const t: FakeTask = {
            taskArn: `arn:aws:ecs:${region}:${account}:task/${cArn.split('/').pop()}/${hex(32)}`,
            clusterArn: cArn,
            taskDefinitionArn: td.taskDefinitionArn,
            family: td.family,
            startedBy: input.startedBy,
            group: input.group ?? `family:${td.family}`,
            tags: input.tags ?? [],
            capacityProviderName: provider,
            launchType: 'FARGATE',
            overrides: input.overrides ?? {},
            ip: `127.${ipOctet}.${(ipCounter >> 8) & 255}.${ipCounter & 255}`,
            eniId: `eni-${hex(17)}`,
            createdAt: clock.now(),
            lastStatus: 'PROVISIONING',
            desiredStatus: 'RUNNING',
            containerName: container.name,
            environment,
          };
          const plan = plans.find((p) => p.times !== 0 && p.match(tagValue(t, 'workspace-id')));
          if (plan) {
            plan.times--;
            t.plan = plan.plan;
          }
          tasks.set(t.taskArn, t);
          created.push(taskView(t, false));
        }
        response = { tasks: created, failures: [] };
      }
      if (token !== undefined) runTokens.set(key, { params: canonical(params), response });
      return response;
    },
    DescribeTasks(input) {
      const arns: string[] = input.tasks ?? [];
      if (arns.length > 100) throw new AwsError('InvalidParameterException', 'Tasks cannot be more than 100.');
      const withTags = (input.include ?? []).includes('TAGS');
      const out: any[] = [];
      const failures: any[] = [];
      for (const arn of arns) {
        const t = tasks.get(arn) ?? [...tasks.values()].find((x) => x.taskArn.endsWith(`/${arn}`));
        if (t && clock.now() - t.createdAt >= (opts.describeLagMs ?? 0)) out.push(taskView(t, withTags));
        else failures.push({ arn, reason: 'MISSING' });
      }
      return { tasks: out, failures };
    },
    StopTask(input) {
      const t = tasks.get(String(input.task));
      if (!t) throw new AwsError('InvalidParameterException', 'The referenced task was not found.');
      if (t.desiredStatus !== 'STOPPED' || t.lastStatus !== 'STOPPED') {
        if (t.stoppingAt === undefined && t.lastStatus !== 'STOPPED') {
          t.stoppingAt = clock.now();
          t.desiredStatus = 'STOPPED';
          t.stopCode = 'UserInitiated';
          t.stoppedReason = input.reason ?? 'Task stopped by user';
          refresh(t);
        }
      }
      return { task: taskView(t, false) };
    },
    ListTasks(input) {
      const desired = input.desiredStatus ?? 'RUNNING';
      const cArn = clusterArn(input.cluster ?? 'default');
      const all = [...tasks.values()].filter(
        (t) =>
          t.clusterArn === cArn &&
          t.desiredStatus === desired &&
          (input.startedBy === undefined || t.startedBy === input.startedBy) &&
          (input.family === undefined || t.family === input.family),
      );
      const max = Math.min(100, input.maxResults ?? 100);
      const from = input.nextToken ? Number(input.nextToken) : 0;
      const page = all.slice(from, from + max);
      return { taskArns: page.map((t) => t.taskArn), nextToken: from + max < all.length ? String(from + max) : undefined };
    },
  };

  // ---------- Cloud Map ----------
  function service(id: string) {
    const s = services.get(id);
    if (!s) throw new AwsError('ServiceNotFound', `Service not found: ${id}`);
    return s;
  }
  function operation(type: string, instanceId: string, serviceId: string) {
    const id = hex(32);
    const now = clock.now() / 1000;
    operations.set(id, { Id: id, Type: type, Status: 'SUCCESS', CreateDate: now, UpdateDate: now, Targets: { INSTANCE: instanceId, SERVICE: serviceId } });
    return { OperationId: id };
  }
  const cloudmap: Record<string, (input: any) => any> = {
    RegisterInstance(input) {
      const s = service(input.ServiceId);
      if (!s.has(input.InstanceId) && s.size >= maxInstances) {
        throw new AwsError('ResourceLimitExceeded', 'The resource can\'t be created because you\'ve reached the quota on the number of instances.');
      }
      s.set(String(input.InstanceId), { ...(input.Attributes ?? {}) });
      return operation('REGISTER_INSTANCE', input.InstanceId, input.ServiceId);
    },
    DeregisterInstance(input) {
      const s = service(input.ServiceId);
      if (!s.delete(String(input.InstanceId))) throw new AwsError('InstanceNotFound', `Instance not found: ${input.InstanceId}`);
      return operation('DEREGISTER_INSTANCE', input.InstanceId, input.ServiceId);
    },
    GetInstance(input) {
      const attrs = service(input.ServiceId).get(String(input.InstanceId));
      if (!attrs) throw new AwsError('InstanceNotFound', `Instance not found: ${input.InstanceId}`);
      return { Instance: { Id: input.InstanceId, Attributes: attrs } };
    },
    ListInstances(input) {
      const all = [...service(input.ServiceId).entries()];
      const max = Math.min(100, input.MaxResults ?? 100);
      const from = input.NextToken ? Number(input.NextToken) : 0;
      return {
        Instances: all.slice(from, from + max).map(([Id, Attributes]) => ({ Id, Attributes })),
        NextToken: from + max < all.length ? String(from + max) : undefined,
      };
    },
    GetOperation(input) {
      const op = operations.get(String(input.OperationId));
      if (!op) throw new AwsError('OperationNotFound', 'Operation not found.');
      return { Operation: op };
    },
  };

  // ---------- EFS (REST-JSON) ----------
  function createAccessPoint(body: any) {
    const aps = fileSystems.get(body.FileSystemId);
    if (!aps) throw new AwsError('FileSystemNotFound', `File system '${body.FileSystemId}' does not exist.`, 404, { ErrorCode: 'FileSystemNotFound' });
    const params = canonical({ ...body, ClientToken: undefined });
    const prev = body.ClientToken ? apTokens.get(body.ClientToken) : undefined;
    if (prev) {
      if (prev.params === params) return prev.ap;
      throw new AwsError('AccessPointAlreadyExists', 'An access point with the specified client token already exists.', 409, {
        ErrorCode: 'AccessPointAlreadyExists',
        AccessPointId: prev.ap.AccessPointId,
      });
    }
    if (aps.length >= maxAccessPoints) {
      throw new AwsError('AccessPointLimitExceeded', 'You have reached the maximum number of access points for this file system.', 403, { ErrorCode: 'AccessPointLimitExceeded' });
    }
    const id = `fsap-${hex(17)}`;
    const ap = {
      ClientToken: body.ClientToken,
      Name: body.Tags?.find((t: any) => t.Key === 'Name')?.Value,
      Tags: body.Tags ?? [],
      AccessPointId: id,
      AccessPointArn: `arn:aws:elasticfilesystem:${region}:${account}:access-point/${id}`,
      FileSystemId: body.FileSystemId,
      PosixUser: body.PosixUser,
      RootDirectory: body.RootDirectory,
      OwnerId: account,
      LifeCycleState: 'available',
    };
    aps.push(ap);
    if (body.ClientToken) apTokens.set(body.ClientToken, { params, ap });
    return ap;
  }
  function describeAccessPoints(q: URLSearchParams) {
    const apId = q.get('AccessPointId');
    const fsId = q.get('FileSystemId');
    if (apId) {
      for (const aps of fileSystems.values()) {
        const ap = aps.find((a) => a.AccessPointId === apId);
        if (ap) return { AccessPoints: [ap] };
      }
      throw new AwsError('AccessPointNotFound', `Access point '${apId}' does not exist.`, 404, { ErrorCode: 'AccessPointNotFound' });
    }
    if (!fsId) throw new AwsError('BadRequest', 'FileSystemId or AccessPointId is required.', 400, { ErrorCode: 'BadRequest' });
    const aps = fileSystems.get(fsId);
    if (!aps) throw new AwsError('FileSystemNotFound', `File system '${fsId}' does not exist.`, 404, { ErrorCode: 'FileSystemNotFound' });
    const max = Math.min(1000, Number(q.get('MaxResults') ?? 100));
    const from = Number(q.get('NextToken') ?? 0);
    return { AccessPoints: aps.slice(from, from + max), NextToken: from + max < aps.length ? String(from + max) : undefined };
  }

  // ---------- HTTP ----------
  function sendJson(res: ServerResponse, status: number, body: unknown, contentType: string, errType?: string) {
    const text = JSON.stringify(body ?? {});
    const headers: Record<string, string> = {
      'content-type': contentType,
      'content-length': String(Buffer.byteLength(text)),
      'x-amzn-requestid': hex(32),
    };
    if (errType) headers['x-amzn-errortype'] = errType;
    res.writeHead(status, headers);
    res.end(text);
  }

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const target = String(req.headers['x-amz-target'] ?? '');
      const url = new URL(req.url ?? '/', 'http://fake');
      let service: FakeCall['service'];
      let op: string;
      let input: any = {};
      let handler: (() => any) | undefined;
      const json = target ? 'application/x-amz-json-1.1' : 'application/json';
      try {
        input = text ? JSON.parse(text) : {};
      } catch {
        input = {};
      }
      if (target.startsWith(ECS_TARGET)) {
        service = 'ecs';
        op = target.slice(ECS_TARGET.length);
        const h = ecs[op];
        if (h) handler = () => h(input);
      } else if (target.startsWith(CLOUDMAP_TARGET)) {
        service = 'cloudmap';
        op = target.slice(CLOUDMAP_TARGET.length);
        const h = cloudmap[op];
        if (h) handler = () => h(input);
      } else {
        service = 'efs';
        if (req.method === 'POST' && url.pathname === '/2015-02-01/access-points') {
          op = 'CreateAccessPoint';
          handler = () => createAccessPoint(input);
        } else if (req.method === 'GET' && url.pathname === '/2015-02-01/access-points') {
          op = 'DescribeAccessPoints';
          input = Object.fromEntries(url.searchParams);
          handler = () => describeAccessPoints(url.searchParams);
        } else {
          op = `${req.method} ${url.pathname}`;
        }
      }
      const queue = held.get(op);
      if (queue) {
        queue.push(() => answer(service, op, input, handler, json, req, res));
        return;
      }
      answer(service, op, input, handler, json, req, res);
    });
  });

  function answer(service: FakeCall['service'], op: string, input: any, handler: (() => any) | undefined, json: string, req: IncomingMessage, res: ServerResponse) {
    const call: FakeCall = { service, op, input, at: clock.now(), outcome: 'ok' };
    calls.push(call);

    const fault = faults.get(op) ?? faults.get('*');
    if (fault && fault.times !== 0) {
      fault.times--;
      call.outcome = 'fault';
      if (fault.mode === 'stall') {
        stalled.add(res);
        res.on('close', () => stalled.delete(res));
        return;
      }
      if (fault.mode === 'drop') {
        req.socket.destroy();
        return;
      }
      const type = typeof fault.mode === 'object' ? fault.mode.error
        : service === 'efs' ? 'InternalServerError' : service === 'ecs' ? 'ServerException' : 'InternalFailure';
      const status = typeof fault.mode === 'object' ? fault.mode.status ?? 400 : 500;
      call.error = type;
      sendJson(res, status, service === 'efs' ? { ErrorCode: type, Message: 'Injected error' } : { __type: type, message: 'Injected error' }, json, type);
      return;
    }
    if (!handler) {
      call.outcome = 'error';
      call.error = 'UnknownOperationException';
      sendJson(res, 400, { __type: 'UnknownOperationException', message: `Unknown operation ${op}` }, json, 'UnknownOperationException');
      return;
    }
    if (!takeRate(op, service === 'ecs' ? ECS_CATEGORY_OF[op] : undefined)) {
      call.outcome = 'throttled';
      call.error = 'ThrottlingException';
      const body = service === 'efs' ? { ErrorCode: 'ThrottlingException', Message: 'Rate exceeded' } : { __type: 'ThrottlingException', message: 'Rate exceeded' };
      sendJson(res, service === 'efs' ? 429 : 400, body, json, 'ThrottlingException');
      return;
    }
    try {
      refreshAll();
      const out = handler();
      sendJson(res, 200, out, json);
    } catch (err) {
      if (err instanceof AwsError) {
        call.outcome = err.type === 'ThrottlingException' ? 'throttled' : 'error';
        call.error = err.type;
        const body = service === 'efs'
          ? { ErrorCode: err.type, Message: err.message, ...err.extra }
          : { __type: err.type, message: err.message, ...err.extra };
        sendJson(res, err.status, body, json, err.type);
      } else {
        call.outcome = 'error';
        call.error = String(err);
        sendJson(res, 500, { __type: 'ServerException', message: String(err) }, json, 'ServerException');
      }
    }
  }
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;

  function findTask(ref: string): FakeTask {
    const t = tasks.get(ref) ?? [...tasks.values()].reverse().find((x) => tagValue(x, 'workspace-id') === ref && x.lastStatus !== 'STOPPED');
    if (!t) throw new Error(`fake-aws: no task ${ref}`);
    return t;
  }

  return {
    url: `http://127.0.0.1:${port}`,
    region,
    clock,
    workspacePort,
    /** Every call, in arrival order. */
    calls,
    /** Calls to one operation (by default only those that were answered successfully). */
    callsOf(op: string, outcome: FakeCall['outcome'] | 'any' = 'ok'): FakeCall[] {
      return calls.filter((c) => c.op === op && (outcome === 'any' || c.outcome === outcome));
    },
    count(op: string, outcome: FakeCall['outcome'] | 'any' = 'ok'): number {
      return calls.filter((c) => c.op === op && (outcome === 'any' || c.outcome === outcome)).length;
    },
    /** Makes `op` (or '*' for all) stall, drop the connection or answer 500, `times` times (-1: until cleared). */
    fault(op: string, mode: FaultMode, times = -1) {
      faults.set(op, { mode, times });
    },
    /** Replaces (or, with undefined, lifts) one operation's or category's rate limit, its bucket full; returns the one it had. */
    setRateLimit(op: string, limit: RateLimit | undefined): RateLimit | undefined {
      const before = limits[op];
      if (limit) limits[op] = limit;
      else delete limits[op];
      buckets.delete(op);
      return before;
    },
    clearFaults() {
      faults.clear();
    },
    /**
     * Holds every request to `op` unanswered, and not yet handled, until the returned function lets
     * them through: a call that AWS handles later than the calls around it.
     */
    hold(op: string): () => void {
      const queue: (() => void)[] = [];
      held.set(op, queue);
      return () => {
        if (held.get(op) === queue) held.delete(op);
        for (const go of queue.splice(0)) go();
      };
    },
    /** The next task(s) for matching workspaces die instead of reaching `plan.dieAt`. */
    planTask(workspaceId: string | ((id: string | undefined) => boolean), plan: TaskPlan, times = 1) {
      const match = typeof workspaceId === 'string' ? (id: string | undefined) => id === workspaceId : workspaceId;
      plans.push({ match, plan, times });
    },
    setCapacity(c: { spot?: boolean; fargate?: boolean }) {
      if (c.spot !== undefined) capacity.spot = c.spot;
      if (c.fargate !== undefined) capacity.fargate = c.fargate;
    },
    /** Fargate reclaims a Spot task (by ARN or workspace id): it stops with SpotInterruption. */
    interrupt(ref: string, reason = 'Your Spot Task was interrupted.') {
      const t = findTask(ref);
      t.stopCode = 'SpotInterruption';
      t.stoppedReason = reason;
      t.exitCode = 143;
      stopNow(t, clock.now());
    },
    /**
     * Starts stopping a task (by ARN or workspace id) as StopTask from elsewhere, a Spot reclaim or a
     * deployment does: desiredStatus STOPPED at once, while lastStatus stays where it is (RUNNING) and
     * its workspace keeps answering, until finishStop().
     */
    beginStop(ref: string, stopCode = 'SpotInterruption', reason = 'Your Spot Task was interrupted.') {
      const t = findTask(ref);
      refresh(t);
      t.desiredStatus = 'STOPPED';
      t.stopCode = stopCode;
      t.stoppedReason = reason;
      t.stoppingAt = clock.now();
      t.draining = true;
      return t.taskArn;
    },
    /** Lets a task told to stop by beginStop() go on to STOPPED (after durations.stoppingMs). */
    finishStop(ref: string) {
      const t = tasks.get(ref) ?? findTask(ref);
      if (!t.draining) return;
      t.draining = false;
      t.stoppingAt = clock.now();
      refresh(t);
    },
    /** How many requests to `op` hold() is keeping unanswered. */
    heldCount(op: string): number {
      return held.get(op)?.length ?? 0;
    },
    /**
     * Launches a task directly, as another (dead) gateway replica would have: same tags and
     * startedBy as the provisioner uses. Returns its ARN.
     */
    launchTask(p: { family: string; workspaceId: string; generation: number; startedBy: string; cluster: string; subnets?: string[]; environment?: Record<string, string> }) {
      // `environment`: the container's overrides, as the replica's RunTask gave them (WORKSPACE_KEY).
      const container = resolveTaskDef(p.family)?.containerDefinitions?.[0]?.name;
      const environment = Object.entries(p.environment ?? {}).map(([name, value]) => ({ name, value }));
      const r = ecs.RunTask({
        cluster: p.cluster,
        taskDefinition: p.family,
        startedBy: p.startedBy,
        networkConfiguration: { awsvpcConfiguration: { subnets: p.subnets ?? ['subnet-0fake'] } },
        tags: [{ key: 'workspace-id', value: p.workspaceId }, { key: 'generation', value: String(p.generation) }],
        ...(environment.length ? { overrides: { containerOverrides: [{ name: container, environment }] } } : {}),
      });
      return r.tasks[0].taskArn as string;
    },
    /** Applies due transitions now (starts workspaces of tasks that reached RUNNING). */
    refresh: refreshAll,
    /** Snapshot of all tasks (wire view, with tags). */
    tasks() {
      refreshAll();
      return [...tasks.values()].map((t) => ({ ...taskView(t, true), ip: t.ip }));
    },
    /** Tasks not STOPPED, optionally of one workspace. */
    liveTasks(workspaceId?: string) {
      refreshAll();
      return [...tasks.values()]
        .filter((t) => t.lastStatus !== 'STOPPED' && (workspaceId === undefined || tagValue(t, 'workspace-id') === workspaceId))
        .map((t) => ({ ...taskView(t, true), ip: t.ip }));
    },
    instances(serviceId?: string) {
      const out: { serviceId: string; id: string; attributes: Record<string, string> }[] = [];
      for (const [sid, s] of services) if (!serviceId || sid === serviceId) for (const [id, attributes] of s) out.push({ serviceId: sid, id, attributes });
      return out;
    },
    /** Removes a Cloud Map registration behind the provisioner's back. */
    dropInstance(id: string) {
      for (const s of services.values()) s.delete(id);
    },
    accessPoints(fileSystemId?: string) {
      return [...fileSystems.entries()].filter(([id]) => !fileSystemId || id === fileSystemId).flatMap(([, aps]) => aps);
    },
    taskDefinitions(family?: string) {
      return [...taskDefs.entries()].filter(([f]) => !family || f === family).flatMap(([, revs]) => revs);
    },
    /** Registers a new revision of a family directly (e.g. a new base task definition). */
    registerTaskDefinition(def: any) {
      return registerTaskDef(def).taskDefinitionArn as string;
    },
    fileSystemIds: [...fileSystems.keys()],
    serviceIds: [...services.keys()],
    baseFamily: (opts.baseTaskDefinition ?? DEFAULT_BASE_TASK_DEFINITION).family as string,
    async close() {
      for (const res of stalled) res.destroy();
      for (const queue of held.values()) queue.splice(0);
      held.clear();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await Promise.all([...tasks.values()].map((t) => t.workspace?.then((w) => w?.close()).catch(() => {})));
    },
  };
}

export type FakeAws = Awaited<ReturnType<typeof startFakeAws>>;
