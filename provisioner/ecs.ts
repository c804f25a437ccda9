// The ECS Fargate provisioner (issue 4): one Fargate task per student, with a per-student EFS
// access point and task-definition family, started exactly once per generation (RunTask
// clientToken), at a pace AWS accepts (admission.ts), followed to RUNNING, probed, and registered
// in Cloud Map as the durable registry of running workspaces. The SDK stays inside this module:
// the contract and the options hold only plain types.
import { createHash, randomUUID } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { request as httpRequest } from 'node:http';
import type { Socket } from 'node:net';
import {
  DescribeTaskDefinitionCommand,
  DescribeTasksCommand,
  ECSClient,
  ListTasksCommand,
  RegisterTaskDefinitionCommand,
  RunTaskCommand,
  StopTaskCommand,
  type RegisterTaskDefinitionCommandInput,
  type RunTaskCommandInput,
  type Task,
  type TaskDefinition,
} from '@aws-sdk/client-ecs';
import {
  DeregisterInstanceCommand,
  GetInstanceCommand,
  ListInstancesCommand,
  RegisterInstanceCommand,
  ServiceDiscoveryClient,
} from '@aws-sdk/client-servicediscovery';
import { CreateAccessPointCommand, DescribeAccessPointsCommand, EFSClient } from '@aws-sdk/client-efs';
import type { Clock } from '../gateway/clock.js';
import { WORKSPACE_FIELD } from '../gateway/http-fields.js';
import { claimFor, type Claim } from '../gateway/workspace-proof.js';
import { UNPROVEN_PROBES_TO_FAIL, provenForProbe, unprovenInARow, type ProbeVerdict } from './readiness.js';
import {
  StartFailure,
  type Provisioner,
  type RunningWorkspace,
  type StartRequest,
  type StartResult,
} from './contract.js';
import { Admission, localTokens, TokenLine, type TokenSource } from './admission.js';
import { ecsApiBucket, type EcsApiBucket, type Rate } from './ecs-rates.js';
import { AwsCallError, createAwsCaller } from './aws-call.js';
import { DEFAULT_RETRY_POLICY } from './retry.js';
import { chunks, privateIp, stageTracker, stopDescription, stoppingOrStopped, tag, TaskWatcher } from './ecs-tasks.js';
import { anySignal, realTimers, sleep, timeoutSignal, untilAborted, type Timers } from './timers.js';
import type { EcsObserver, EcsProvisionerOptions, ReconcileSummary, WorkspaceClaim } from './ecs-types.js';

export type { EcsObserver, EcsProvisionerOptions, ReconcileSummary, WorkspaceClaim } from './ecs-types.js';

export interface EcsProvisionerDeps {
  clock: Clock;
  log?: (obj: Record<string, unknown>) => void;
  observer?: EcsObserver;
  /** Timers in clock units (default: real timers); see timers.ts createScaledTime. */
  timers?: Timers;
  /** [0, 1) source for backoff jitter (default Math.random). */
  random?: () => number;
  /**
   * Where each of AWS's buckets lives: `runtask`, `taskdef` and one per ECS API category
   * (`ecs-task-read`, ...), at the given rate and burst. The entry point shares them in the state
   * store, so every replica together stays within AWS's quotas; by default this process keeps its own.
   */
  tokens?: (bucket: string, rate: number, burst: number) => TokenSource;
  /**
   * The start keys (gateway/workspace-proof.ts identityKeysOf), as the gateway gives starts
   * theirs: reconcile adopts a task it finds running, unregistered and unclaimed only once it proves
   * it holds its generation's key (from its tags). Without them such a task is never adopted.
   */
  identityKeys?: (workspaceId: string, generation: number) => string;
  /** The keys under GATEWAY_SECRET_ACCEPTED (a rotation): a task launched under that secret proves with it. */
  acceptedIdentityKeys?: (workspaceId: string, generation: number) => string;
}

export interface EcsProvisioner extends Provisioner {
  readonly kind: 'ecs';
  /** How often the gateway should call reconcile(). */
  readonly reconcileIntervalMs: number;
  /**
   * Compares what runs with what the store claims (issue 4, "Stop, reconcile, recover"): adopts
   * healthy running tasks the store does not know, stops tasks no workspace claims, deregisters
   * Cloud Map instances whose task is gone. Never stops a task of the generation the store claims.
   */
  reconcile(claim: (workspaceId: string) => WorkspaceClaim | Promise<WorkspaceClaim>): Promise<ReconcileSummary>;
  /**
   * Registers a student's task definition family (and access point) ahead of their first start, in
   * the registration line: enrolling a class before its first day keeps RegisterTaskDefinition's
   * 1 call a second out of the class's first 09:00.
   */
  prepare(workspaceId: string, signal?: AbortSignal): Promise<void>;
}

// Tag and attribute names shared by the tasks, task definitions, access points and Cloud Map.
export const TAG_WORKSPACE = 'workspace-id';
export const TAG_GENERATION = 'generation';
const TAG_BASE = 'base-task-definition';
const TAG_ACCESS_POINT = 'access-point-id';
const TAG_FILE_SYSTEM = 'file-system-id';
export const ATTR_TASK_ARN = 'ECS_TASK_ARN';
export const ATTR_GENERATION = 'WORKSPACE_GENERATION';
const ATTR_STARTED_AT = 'STARTED_AT';

const WORKSPACE_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/;
/** Names reported by RunTask `failures` when Fargate (Spot) has no capacity. */
const CAPACITY_FAILURE = /capacity|RESOURCE:/i;

/**
 * RunTask's clientToken for one start: deterministic in (id, generation) so a retried or racing
 * call returns the same task; at most 61 characters so a suffix for the on-demand fallback still
 * fits RunTask's 64 (ECS_Idempotency.html: 64 ASCII characters 33-126).
 */
export function runTaskToken(workspaceId: string, generation: number): string {
  const plain = `${workspaceId}.${generation}`;
  if (plain.length <= 61 && /^[\x21-\x7e]+$/.test(plain)) return plain;
  return `h.${createHash('sha256').update(`${workspaceId}\n${generation}`).digest('base64url').slice(0, 43)}`;
}

/** Stable FNV-1a hash: spreads workspaces over Cloud Map services (1,000 instances each). */
export function serviceIndex(workspaceId: string, services: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < workspaceId.length; i++) {
    h ^= workspaceId.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h % services;
}

function awsName(err: unknown): string | undefined {
  return err instanceof AwsCallError ? err.awsName : (err as { name?: string })?.name;
}

/** Maps any failure inside start() to the contract's StartFailure. */
function toStartFailure(err: unknown): StartFailure {
  if (err instanceof StartFailure) return err;
  if (err instanceof AwsCallError) {
    if (err.errorClass === 'fatal') {
      const config = /AccessDenied|ClientException|InvalidParameter|NotFound|Validation|BadRequest|LimitExceeded|Unsupported|PlatformUnknown|Unrecognized|InvalidClientToken|ExpiredToken/i;
      return new StartFailure(config.test(err.awsName ?? '') ? 'BAD_CONFIG' : 'BACKEND_UNAVAILABLE', err.message, { cause: err });
    }
    return new StartFailure('BACKEND_UNAVAILABLE', err.message, { cause: err });
  }
  return new StartFailure('BACKEND_UNAVAILABLE', `unexpected error: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}

export function createEcsProvisioner(options: EcsProvisionerOptions, deps: EcsProvisionerDeps): EcsProvisioner {
  const { clock, observer } = deps;
  const log = deps.log ?? (() => {});
  const timers = deps.timers ?? realTimers;
  const o = {
    describePollMs: 250,
    probeIntervalMs: 250,
    probeTimeoutMs: 2000,
    stopWaitMs: 30_000,
    ...options,
  };
  if (o.cloudMapServiceIds.length === 0) throw new Error('createEcsProvisioner: at least one Cloud Map service id is required');

  const clientConfig = {
    region: o.region,
    ...(o.endpoint ? { endpoint: o.endpoint } : {}),
    ...(o.credentials ? { credentials: o.credentials } : {}),
    // Our retry loop (aws-call.ts) is the only one: attempts are observable and the deadline real.
    maxAttempts: 1,
  };
  const ecs = new ECSClient(clientConfig);
  // Cloud Map prefixes some operations' hosts (data-servicediscovery.<region>...); an overridden
  // endpoint must be used as given (issue 4).
  const sd = new ServiceDiscoveryClient({ ...clientConfig, disableHostPrefix: o.endpoint !== undefined });
  const efs = new EFSClient(clientConfig);

  const tokens = deps.tokens ?? ((_bucket: string, rate: number, burst: number) => localTokens(clock, rate, burst));
  // One FIFO line per ECS API category (ecs-rates.ts); its waiters are AWS calls, not students, so
  // they are not counted in the start queue's depth.
  const apiLines = new Map<EcsApiBucket, TokenLine>();
  for (const [bucket, r] of Object.entries(o.apiRates) as [EcsApiBucket, Rate][]) {
    apiLines.set(bucket, new TokenLine(tokens(`ecs-${bucket}`, r.rate, r.burst), timers));
  }
  const lifetime = new AbortController();
  // Every start in flight listens on it (hundreds during a class start): not a leak.
  setMaxListeners(0, lifetime.signal);
  const call = createAwsCaller({
    lifetime: lifetime.signal,
    timers,
    timeoutMs: o.awsCallTimeoutMs,
    policy: { ...DEFAULT_RETRY_POLICY, ...o.retry },
    random: deps.random ?? Math.random,
    observe: (op, outcome) => observer?.awsCall(op, outcome),
    pace: (op, signal) => {
      const b = ecsApiBucket(op);
      return b ? apiLines.get(b)!.take(signal, () => {}) : Promise.resolve();
    },
  });
  const admission = new Admission(
    {
      maxInFlight: o.startMaxInFlight,
      tokens: tokens('runtask', o.runTaskRate, o.runTaskBurst),
      registerTokens: tokens('taskdef', o.taskDefRate, o.taskDefBurst),
    },
    timers,
    (n) => observer?.queueDepth(n),
  );
  const watcher = new TaskWatcher(call, ecs, o.cluster, timers, o.describePollMs, clock);

  const familyOf = (id: string) => `${o.taskFamilyPrefix}-${id}`;
  const serviceOf = (id: string) => o.cloudMapServiceIds[serviceIndex(id, o.cloudMapServiceIds.length)];

  // ---------- task definition and access point ----------
  let baseCache: { at: number; def: TaskDefinition } | undefined;
  const familyCache = new Map<string, { baseArn: string; accessPointId: string; fileSystemId: string }>();
  const preparing = new Map<string, Promise<void>>();

  let baseReading: Promise<TaskDefinition> | undefined;

  /** The base task definition, re-read at most once a minute (a new revision reaches students within that time). */
  async function baseDefinition(signal: AbortSignal): Promise<TaskDefinition> {
    if (baseCache && clock.now() - baseCache.at < 60_000) return baseCache.def;
    // One read for all the starts that need it at once (a class at 09:00), not one each.
    baseReading ??= readBaseDefinition().finally(() => (baseReading = undefined));
    return untilAborted(baseReading, signal);
  }

  async function readBaseDefinition(): Promise<TaskDefinition> {
    const out = await call('DescribeTaskDefinition', (abortSignal) =>
      ecs.send(new DescribeTaskDefinitionCommand({ taskDefinition: o.baseTaskDefinition }), { abortSignal }), { signal: lifetime.signal },
    ).catch((err) => {
      if (awsName(err) === 'ClientException') {
        throw new StartFailure('BAD_CONFIG', `ECS_BASE_TASK_DEFINITION ${o.baseTaskDefinition} cannot be described: ${(err as Error).message}`, { cause: err });
      }
      throw err;
    });
    const def = out.taskDefinition!;
    if (!def.containerDefinitions?.some((c) => c.name === o.containerName)) {
      throw new StartFailure('BAD_CONFIG', `ECS_BASE_TASK_DEFINITION has no container named ${o.containerName} (ECS_CONTAINER_NAME)`);
    }
    if ((def.volumes ?? []).filter((v) => v.efsVolumeConfiguration).length !== 1) {
      throw new StartFailure('BAD_CONFIG', 'ECS_BASE_TASK_DEFINITION must declare exactly one EFS volume (it is bound to each student\'s access point)');
    }
    baseCache = { at: clock.now(), def };
    return def;
  }

  /**
   * Creates (idempotently, by client token) the student's access point on the first file system
   * with room; a full file system answers AccessPointLimitExceeded and the next one is tried.
   */
  async function ensureAccessPoint(id: string, signal: AbortSignal): Promise<{ accessPointId: string; fileSystemId: string }> {
    const key = id.length <= 52 ? id : createHash('sha256').update(id).digest('base64url').slice(0, 40);
    for (const [k, fileSystemId] of o.efsFileSystemIds.entries()) {
      const token = k === 0 ? `ws-ap-${key}` : `ws-ap-${k}-${key}`;
      try {
        const ap = await call('CreateAccessPoint', (abortSignal) =>
          efs.send(
            new CreateAccessPointCommand({
              ClientToken: token,
              FileSystemId: fileSystemId,
              PosixUser: { Uid: o.efsPosixUid, Gid: o.efsPosixGid },
              RootDirectory: {
                Path: `${o.efsRootDir === '/' ? '' : o.efsRootDir}/${id}`,
                // EFS creates the directory on first mount with this owner if it does not exist.
                CreationInfo: { OwnerUid: o.efsPosixUid, OwnerGid: o.efsPosixGid, Permissions: '0750' },
              },
              // ManagedBy is what the gateway role's IAM condition requires (deploy/stack.ts).
              Tags: [{ Key: 'Name', Value: familyOf(id) }, { Key: TAG_WORKSPACE, Value: id }, { Key: 'ManagedBy', Value: o.startedBy }],
            }),
            { abortSignal },
          ), { signal },
        );
        return { accessPointId: ap.AccessPointId!, fileSystemId };
      } catch (err) {
        const name = awsName(err);
        if (name === 'AccessPointLimitExceeded') {
          log({ msg: 'EFS file system holds the maximum of access points, trying the next', fileSystemId, workspaceId: id });
          continue;
        }
        if (name !== 'AccessPointAlreadyExists') throw err;
        const known = ((err as AwsCallError).cause as { AccessPointId?: string } | undefined)?.AccessPointId;
        return { accessPointId: known ?? (await findAccessPointByTag(id, fileSystemId, signal)), fileSystemId };
      }
    }
    throw new StartFailure(
      'BAD_CONFIG',
      `every EFS file system in EFS_FILE_SYSTEM_ID (${o.efsFileSystemIds.join(', ')}) holds the maximum of 10,000 access points: add a file system`,
    );
  }

  /** Pages through a file system's access points for the one tagged with this workspace. */
  async function findAccessPointByTag(id: string, fileSystemId: string, signal: AbortSignal): Promise<string> {
    let next: string | undefined;
    do {
      const page = await call('DescribeAccessPoints', (abortSignal) =>
        efs.send(new DescribeAccessPointsCommand({ FileSystemId: fileSystemId, MaxResults: 1000, NextToken: next }), { abortSignal }), { signal },
      );
      const hit = page.AccessPoints?.find((a) => a.Tags?.some((t) => t.Key === TAG_WORKSPACE && t.Value === id));
      if (hit) return hit.AccessPointId!;
      next = page.NextToken;
    } while (next);
    throw new StartFailure('BACKEND_UNAVAILABLE', `EFS reports an access point for ${id} on ${fileSystemId} exists but none is tagged with it`);
  }

  /**
   * Registers the student's family from `base` and remembers it. `beforeAttempt` waits for (or, for an attempt already
   * holding one, skips) a RegisterTaskDefinition token: AWS allows 1 call a second, burst 20, per
   * account (aws-actions/amazon-ecs-deploy-task-definition#502).
   */
  async function registerFamily(id: string, base: TaskDefinition, storage: Storage, signal: AbortSignal, beforeAttempt: (s: AbortSignal) => Promise<void>): Promise<void> {
    const { accessPointId, fileSystemId } = storage;
    const input: RegisterTaskDefinitionCommandInput = {
      family: familyOf(id),
      containerDefinitions: base.containerDefinitions,
      cpu: base.cpu,
      memory: base.memory,
      networkMode: base.networkMode,
      requiresCompatibilities: base.requiresCompatibilities,
      executionRoleArn: base.executionRoleArn,
      taskRoleArn: base.taskRoleArn,
      runtimePlatform: base.runtimePlatform,
      ephemeralStorage: base.ephemeralStorage,
      pidMode: base.pidMode,
      ipcMode: base.ipcMode,
      proxyConfiguration: base.proxyConfiguration,
      placementConstraints: base.placementConstraints,
      volumes: (base.volumes ?? []).map((v) =>
        v.efsVolumeConfiguration
          ? {
              name: v.name,
              // With an access point the root directory is the access point's; IAM authorization
              // and TLS in transit are required by the access point's file system policy.
              efsVolumeConfiguration: {
                fileSystemId,
                rootDirectory: '/',
                transitEncryption: 'ENABLED',
                authorizationConfig: { accessPointId, iam: 'ENABLED' },
              },
            }
          : v,
      ),
      tags: [
        { key: TAG_WORKSPACE, value: id },
        { key: TAG_BASE, value: base.taskDefinitionArn! },
        { key: TAG_ACCESS_POINT, value: accessPointId },
        { key: TAG_FILE_SYSTEM, value: fileSystemId },
      ],
    };
    await call('RegisterTaskDefinition', (abortSignal) => ecs.send(new RegisterTaskDefinitionCommand(input), { abortSignal }), { signal, beforeAttempt });
    familyCache.set(id, { baseArn: base.taskDefinitionArn!, ...storage });
    log({ msg: 'registered task definition', workspaceId: id, family: familyOf(id), base: base.taskDefinitionArn, ...storage });
  }

  type Storage = { accessPointId: string; fileSystemId: string };

  /** A start's admission slot, which it gives back while it waits in a line that is not RunTask's. */
  interface SlotHold {
    release(): void;
    /** Takes a slot again for the start, unless it is over by then (the preparation goes on without one). */
    reacquire(): Promise<void>;
  }

  /**
   * What the family's tags record: the student's access point (and its file system) and the base it
   * was copied from; undefined when there is no family yet, or none that names an access point.
   * The tags are the durable record: a later start, or another process, reuses them without EFS.
   */
  async function recordedFamily(id: string, signal: AbortSignal): Promise<{ storage: Storage; baseArn?: string } | undefined> {
    let tags;
    try {
      tags = (await call('DescribeTaskDefinition', (abortSignal) =>
        ecs.send(new DescribeTaskDefinitionCommand({ taskDefinition: familyOf(id), include: ['TAGS'] }), { abortSignal }), { signal },
      )).tags;
    } catch (err) {
      if (awsName(err) === 'ClientException') return undefined; // no such family yet
      throw err;
    }
    const accessPointId = tag(tags, TAG_ACCESS_POINT);
    if (!accessPointId) return undefined;
    return { storage: { accessPointId, fileSystemId: tag(tags, TAG_FILE_SYSTEM) ?? o.efsFileSystemIds[0] }, baseArn: tag(tags, TAG_BASE) };
  }

  /**
   * Makes sure `<prefix>-<id>` exists and is bound to the student's access point. A student's first
   * start registers it, waiting its turn in the registration line (`onPosition`). A family copied
   * from an older base is re-registered first when a token is free at once; otherwise the student
   * starts on the family as it is and it is re-registered in the background, so a new image reaches
   * them at their next start: after an image update a class of 500 would otherwise wait behind 480
   * registrations at 1 a second.
   */
  async function prepare(id: string, signal: AbortSignal, onPosition: (p: number) => void = () => {}, slot?: SlotHold): Promise<void> {
    const base = await baseDefinition(signal);
    if (familyCache.get(id)?.baseArn === base.taskDefinitionArn) return;
    // One preparation per workspace at a time in this process (racing starts share it, and one
    // of them giving up does not fail the others: it runs on the provisioner's lifetime).
    let p = preparing.get(id);
    if (!p) {
      const signal = lifetime.signal;
      p = (async () => {
        const recorded = await recordedFamily(id, signal);
        if (recorded && recorded.baseArn === base.taskDefinitionArn) {
          familyCache.set(id, { baseArn: base.taskDefinitionArn!, ...recorded.storage });
          return;
        }
        if (recorded) {
          if (await admission.register.tryTake()) {
            try {
              await registerFamily(id, base, recorded.storage, signal, tokenHeld());
            } catch (err) {
              // The family runs as it is: a failed re-registration costs the new image, not the start.
              if (signal.aborted) throw err;
              log({ msg: 're-registering a task definition failed: starting it as it is (the next start tries again)', workspaceId: id, err: (err as Error).message });
            }
          } else {
            reregisterLater(id, base);
          }
          return;
        }
        const storage = await ensureAccessPoint(id, signal);
        await registerFamily(id, base, storage, signal, async (s) => {
          if (await admission.register.tryTake()) return;
          // Waiting in the registration line (1 a second) gives the start slot back: a first day's
          // new students must not hold every slot while returning students, whose families exist,
          // wait behind them for RunTask.
          slot?.release();
          try {
            await admission.register.take(s, onPosition);
          } finally {
            if (slot) await slot.reacquire();
          }
        });
      })().finally(() => preparing.delete(id));
      preparing.set(id, p);
    }
    await untilAborted(p, signal);
  }

  /** The first attempt already holds its token (tryTake); a retry waits in line like any other call. */
  function tokenHeld(): (s: AbortSignal) => Promise<void> {
    let first = true;
    return (s) => {
      if (first) { first = false; return Promise.resolve(); }
      return admission.register.take(s, () => {});
    };
  }

  const reregistering = new Set<string>();
  /** Re-registers a stale family in its turn, unless another replica (or start) did it meanwhile. */
  function reregisterLater(id: string, base: TaskDefinition): void {
    if (reregistering.has(id)) return;
    reregistering.add(id);
    log({ msg: 'task definition copied from an older base: starting it as it is, re-registering in the background', workspaceId: id, family: familyOf(id), base: base.taskDefinitionArn });
    const signal = lifetime.signal;
    void (async () => {
      await admission.register.take(signal, () => {});
      const recorded = await recordedFamily(id, signal);
      if (!recorded) return;
      if (recorded.baseArn !== base.taskDefinitionArn) await registerFamily(id, base, recorded.storage, signal, tokenHeld());
      else familyCache.set(id, { baseArn: base.taskDefinitionArn!, ...recorded.storage });
    })().catch((err) => {
      if (!signal.aborted) log({ msg: 're-registering a task definition failed (the next start tries again)', workspaceId: id, err: (err as Error).message });
    }).finally(() => reregistering.delete(id));
  }

  // ---------- RunTask ----------
  function runInput(id: string, generation: number, identityKey: string, token: string, onDemand: boolean): RunTaskCommandInput {
    const env = [
      { name: 'WORKSPACE_ID', value: id },
      { name: 'WORKSPACE_GENERATION', value: String(generation) },
      // This start's key (StartRequest.identityKey): the task proves with it that it is this start
      // before the gateway sends it a student's byte. Deterministic per start, like the clientToken.
      { name: 'WORKSPACE_KEY', value: identityKey },
      ...Object.entries(o.environment ?? {}).sort(([a], [b]) => a.localeCompare(b)).map(([name, value]) => ({ name, value })),
    ];
    return {
      cluster: o.cluster,
      // The family, not a revision ARN: racing replicas that each registered a revision still send
      // identical parameters, so the clientToken dedups them instead of raising ConflictException.
      taskDefinition: familyOf(id),
      count: 1,
      startedBy: o.startedBy,
      clientToken: token,
      networkConfiguration: {
        awsvpcConfiguration: { subnets: o.subnets, securityGroups: o.securityGroups, assignPublicIp: 'DISABLED' },
      },
      ...(o.capacity === 'spot-first' || onDemand
        ? { capacityProviderStrategy: [{ capacityProvider: onDemand ? 'FARGATE' : 'FARGATE_SPOT', weight: 1 }] }
        : { launchType: 'FARGATE' as const }),
      platformVersion: 'LATEST',
      enableECSManagedTags: true,
      tags: [
        { key: TAG_WORKSPACE, value: id },
        { key: TAG_GENERATION, value: String(generation) },
      ],
      overrides: { containerOverrides: [{ name: o.containerName, environment: env }] },
    };
  }

  async function runTask(id: string, generation: number, identityKey: string, signal: AbortSignal, onPosition: (p: number) => void): Promise<Task> {
    const token = runTaskToken(id, generation);
    const attempt = async (input: RunTaskCommandInput) =>
      call('RunTask', (abortSignal) => ecs.send(new RunTaskCommand(input), { abortSignal }), {
        signal,
        beforeAttempt: (s) => admission.takeRunTaskToken(s, onPosition),
      }).catch(async (err) => {
        // Same token, other parameters (another replica with other settings won the race):
        // find the task that generation launched instead of launching a second one.
        if (awsName(err) === 'ConflictException') {
          const t = await findGenerationTask(id, generation, signal);
          if (t) return { tasks: [t], failures: [] };
        }
        throw err;
      });
    const spot = o.capacity === 'spot-first';
    let out = await attempt(runInput(id, generation, identityKey, token, false));
    let task = out.tasks?.[0];
    if (!task && spot && out.failures?.some((f) => CAPACITY_FAILURE.test(f.reason ?? ''))) {
      log({ msg: 'no Fargate Spot capacity, falling back to on-demand', workspaceId: id, generation, reason: out.failures?.[0]?.reason });
      // A different token: the first one is bound to the Spot parameters (ConflictException otherwise).
      out = await attempt(runInput(id, generation, identityKey, `${token}-od`, true));
      task = out.tasks?.[0];
    }
    if (!task) {
      const reason = out.failures?.map((f) => f.reason + (f.detail ? ` (${f.detail})` : '')).join('; ') || 'RunTask returned no task';
      const code = out.failures?.some((f) => CAPACITY_FAILURE.test(f.reason ?? '')) ? 'NO_CAPACITY' : 'BACKEND_UNAVAILABLE';
      throw new StartFailure(code, `RunTask failed: ${reason}`);
    }
    return task;
  }

  /**
   * The task this generation's RunTask launched, running or not: one already stopped, or told to
   * stop, fails the start TASK_STOPPED, where the ConflictException left alone was a
   * BACKEND_UNAVAILABLE saying nothing of it. STOPPED is listed only when no running one is found.
   */
  async function findGenerationTask(id: string, generation: number, signal: AbortSignal): Promise<Task | undefined> {
    for (const desiredStatus of ['RUNNING', 'STOPPED'] as const) {
      const list = await call('ListTasks', (abortSignal) =>
        ecs.send(new ListTasksCommand({ cluster: o.cluster, family: familyOf(id), desiredStatus }), { abortSignal }), { signal },
      );
      if (!list.taskArns?.length) continue;
      const d = await call('DescribeTasks', (abortSignal) =>
        ecs.send(new DescribeTasksCommand({ cluster: o.cluster, tasks: list.taskArns!.slice(0, 100), include: ['TAGS'] }), { abortSignal }), { signal },
      );
      const found = d.tasks?.find((t) => tag(t.tags, TAG_GENERATION) === String(generation));
      if (found) return found;
    }
    return undefined;
  }

  async function describeTask(arn: string, signal?: AbortSignal): Promise<Task | undefined> {
    const d = await call('DescribeTasks', (abortSignal) =>
      ecs.send(new DescribeTasksCommand({ cluster: o.cluster, tasks: [arn], include: ['TAGS'] }), { abortSignal }), { signal },
    );
    return d.tasks?.[0];
  }

  // ---------- probe ----------
  /**
   * One GET /healthz naming the workspace it is for: a task that took over a dead one's IP answers
   * another workspace's probe with 421 (codeserver/workspace-identity.cjs), which is not healthy.
   * With the start's key, on a connection that has first proven it reaches this start
   * (gateway/workspace-proof.ts): a server that is not the workspace is never taken for it.
   */
  async function probeOnce(id: string, host: string, port: number, signal: AbortSignal, claim?: Claim): Promise<ProbeVerdict> {
    let socket: Socket | undefined;
    if (claim !== undefined) {
      const proven = await provenForProbe(host, port, claim, o.probeTimeoutMs);
      if (typeof proven === 'string') return proven;
      socket = proven;
    }
    const healthy = await new Promise<boolean>((resolve) => {
      const t = timeoutSignal(timers, o.probeTimeoutMs, new Error('probe timeout'));
      const s = anySignal([signal, t.signal]);
      const done = (ok: boolean) => {
        t.dispose();
        s.dispose();
        resolve(ok);
      };
      const proven = socket;
      const req = httpRequest({
        host, port, path: '/healthz', method: 'GET', signal: s.signal, headers: { [WORKSPACE_FIELD]: id },
        ...(proven ? { createConnection: () => proven } : { agent: false }),
      }, (res) => {
        res.resume();
        res.once('end', () => proven?.destroy());
        done(res.statusCode !== undefined && res.statusCode >= 200 && res.statusCode < 400);
      });
      req.on('error', () => done(false));
      req.end();
    });
    return healthy ? 'healthy' : 'down';
  }

  /**
   * Probes until /healthz answers; fails early if the task stops meanwhile, or fast (BAD_CONFIG) when
   * the task answers the challenge in full but never with a proof: the address is this task's own ENI,
   * so it is the task, and its image or task definition cannot prove itself; waiting would only reach
   * START_DEADLINE.
   */
  async function probeUntilHealthy(id: string, arn: string, host: string, signal: AbortSignal, claim: Claim): Promise<void> {
    const stopWatch = new AbortController();
    const linked = anySignal([signal, stopWatch.signal]);
    const both = linked.signal;
    // A task told to stop mid-probe still answers it: it must fail the start, not be registered.
    const died = watcher.watch(arn, stoppingOrStopped, both).then((t) => {
      throw new StartFailure('TASK_STOPPED', `task stopped while starting: ${stopDescription(t)}`);
    });
    died.catch(() => {});
    const probing = (async () => {
      let unproven = 0;
      for (;;) {
        const verdict = await probeOnce(id, host, o.workspacePort, both, claim);
        if (verdict === 'healthy') return;
        unproven = unprovenInARow(unproven, verdict);
        if (unproven >= UNPROVEN_PROBES_TO_FAIL) {
          throw new StartFailure('BAD_CONFIG', `the task answers but cannot prove it is this start (${unproven} probes in a row): `
            + 'its image lacks the workspace-identity preload (codeserver/entrypoint.sh, with WORKSPACE_ID set), WORKSPACE_KEY does not reach code-server, '
            + 'or the task was started under a GATEWAY_SECRET this replica neither signs with nor accepts (a start resumed across a rotation; trying again starts it afresh)');
        }
        if (both.aborted) throw both.reason;
        await sleep(timers, o.probeIntervalMs, both);
      }
    })();
    try {
      await Promise.race([probing, died]);
    } finally {
      stopWatch.abort(new Error('probe finished'));
      linked.dispose();
      probing.catch(() => {});
    }
  }

  // ---------- Cloud Map ----------
  /**
   * `requestId` is Cloud Map's CreatorRequestId: a start uses its clientToken so a retried
   * registration is one operation; reconcile passes a fresh one, because re-using the start's
   * id would be taken as a retry of the registration that was lost.
   */
  async function registerInstance(id: string, generation: number, host: string, taskArn: string, signal: AbortSignal, requestId = runTaskToken(id, generation)): Promise<void> {
    const serviceId = serviceOf(id);
    await call('RegisterInstance', (abortSignal) =>
      sd.send(
        new RegisterInstanceCommand({
          ServiceId: serviceId,
          InstanceId: id,
          CreatorRequestId: requestId,
          Attributes: {
            AWS_INSTANCE_IPV4: host,
            AWS_INSTANCE_PORT: String(o.workspacePort),
            [ATTR_TASK_ARN]: taskArn,
            [ATTR_GENERATION]: String(generation),
            [ATTR_STARTED_AT]: String(clock.now()),
          },
        }),
        { abortSignal },
      ), { signal },
    ).catch((err) => {
      if (awsName(err) === 'ResourceLimitExceeded') {
        // A Cloud Map service holds at most 1,000 instances (one per running workspace).
        throw new StartFailure('BAD_CONFIG', `Cloud Map service ${serviceId} holds its maximum of instances: add a service to CLOUDMAP_SERVICE_IDS`, { cause: err });
      }
      throw err;
    });
  }

  async function deregister(serviceId: string, id: string, signal?: AbortSignal): Promise<void> {
    await call('DeregisterInstance', (abortSignal) =>
      sd.send(new DeregisterInstanceCommand({ ServiceId: serviceId, InstanceId: id }), { abortSignal }), { signal },
    ).catch((err) => {
      if (awsName(err) !== 'InstanceNotFound') throw err;
    });
  }

  /**
   * The workspace's Cloud Map registration: in its hashed service first, then in the others (a
   * registration made before CLOUDMAP_SERVICE_IDS changed stays findable).
   */
  async function findInstance(id: string, signal?: AbortSignal): Promise<{ serviceId: string; attributes: Record<string, string> } | undefined> {
    const first = serviceOf(id);
    for (const serviceId of [first, ...o.cloudMapServiceIds.filter((s) => s !== first)]) {
      try {
        const out = await call('GetInstance', (abortSignal) =>
          sd.send(new GetInstanceCommand({ ServiceId: serviceId, InstanceId: id }), { abortSignal }), { signal },
        );
        return { serviceId, attributes: out.Instance?.Attributes ?? {} };
      } catch (err) {
        if (awsName(err) !== 'InstanceNotFound') throw err;
      }
    }
    return undefined;
  }

  async function listInstances(): Promise<Map<string, { serviceId: string; attributes: Record<string, string> }>> {
    const out = new Map<string, { serviceId: string; attributes: Record<string, string> }>();
    for (const serviceId of o.cloudMapServiceIds) {
      let next: string | undefined;
      do {
        const page = await call('ListInstances', (abortSignal) =>
          sd.send(new ListInstancesCommand({ ServiceId: serviceId, MaxResults: 100, NextToken: next }), { abortSignal }),
        );
        for (const i of page.Instances ?? []) out.set(i.Id!, { serviceId, attributes: i.Attributes ?? {} });
        next = page.NextToken;
      } while (next);
    }
    return out;
  }

  // ---------- stop ----------
  /** Asks ECS to stop a task; false when ECS does not know it (nothing left to stop). */
  async function stopTask(arn: string, reason: string): Promise<boolean> {
    return call('StopTask', (abortSignal) =>
      ecs.send(new StopTaskCommand({ cluster: o.cluster, task: arn, reason: reason.slice(0, 255) }), { abortSignal }),
    ).then(() => true, (err) => {
      // Already gone (stopped long ago and expired from ECS): nothing left to stop.
      if (awsName(err) !== 'InvalidParameterException') throw err;
      return false;
    });
  }

  /** Stops a task and waits (bounded) until ECS reports it STOPPED. */
  async function stopAndWait(arn: string, reason: string): Promise<void> {
    // A task ECS does not know never shows STOPPED: waiting for it only held the stop for stopWaitMs.
    if (await stopTask(arn, reason)) await untilStopped(arn);
  }

  /** Waits (bounded by stopWaitMs) until ECS reports a task it was asked to stop STOPPED. */
  async function untilStopped(arn: string): Promise<void> {
    const bound = timeoutSignal(timers, o.stopWaitMs, new Error('stop wait over'));
    const linked = anySignal([bound.signal, lifetime.signal]);
    try {
      await watcher.watch(arn, (t) => t.lastStatus === 'STOPPED', linked.signal);
    } catch (err) {
      if (!bound.signal.aborted && !lifetime.signal.aborted && !(err instanceof StartFailure)) throw err;
      if (bound.signal.aborted) log({ msg: 'task not stopped within the bounded wait', taskArn: arn, waitMs: o.stopWaitMs });
    } finally {
      bound.dispose();
      linked.dispose();
    }
  }

  function stopInBackground(arn: string, reason: string): void {
    stopTask(arn, reason).catch((err) => log({ msg: 'could not stop task after a failed start', taskArn: arn, error: String(err) }));
  }

  // ---------- start ----------
  async function start(req: StartRequest): Promise<StartResult> {
    const id = req.workspaceId;
    const gen = req.generation;
    if (!WORKSPACE_ID.test(id)) throw new StartFailure('BAD_CONFIG', `workspace id ${JSON.stringify(id)} cannot name an ECS family / EFS directory`);
    const deadline = timeoutSignal(timers, o.startDeadlineMs, new StartFailure('START_DEADLINE', ''));
    const linked = anySignal([req.signal, deadline.signal, lifetime.signal]);
    const signal = linked.signal;
    setMaxListeners(0, signal);
    const stages = stageTracker(req, clock, observer);
    let release: (() => void) | undefined;
    let finished = false;
    let task: Task | undefined;
    let registered = false;
    try {
      if (req.resumeHandle) {
        // A replica that died recorded this task: follow it instead of launching another.
        task = await describeTask(req.resumeHandle, signal);
        // Told to stop but still RUNNING is as good as stopped: the start fails TASK_STOPPED and the
        // next one launches a new task.
        if (task && stoppingOrStopped(task)) {
          throw new StartFailure('TASK_STOPPED', `task stopped while starting: ${stopDescription(task)}`);
        }
        if (task) log({ msg: 'resuming start', workspaceId: id, generation: gen, taskArn: task.taskArn });
      }
      if (!task) {
        stages.to('queued');
        const onPosition = (p: number) => stages.to('queued', p);
        release = await admission.acquireSlot(signal, onPosition);
        await prepare(id, signal, onPosition, {
          release: () => { release?.(); release = undefined; },
          // The preparation outlives a start that gives up (racing starts share it): a slot taken
          // back for a start that is over would be held for good, one fewer for every later start.
          reacquire: async () => {
            if (finished) return;
            const r = await admission.acquireSlot(signal, onPosition).catch((err) => {
              if (!finished && !signal.aborted) throw err;
              return undefined;
            });
            if (finished || signal.aborted) r?.();
            else release = r;
          },
        });
        task = await runTask(id, gen, req.identityKey, signal, onPosition);
        // Another replica's task of this generation, found after a ConflictException, may be over.
        if (stoppingOrStopped(task)) throw new StartFailure('TASK_STOPPED', `task stopped while starting: ${stopDescription(task)}`);
        try {
          req.onHandle?.(task.taskArn!);
        } catch {
          /* the caller's persistence failing must not leave the task unfollowed */
        }
        // The slot bounds the AWS control-plane work of a start (describe, access point, task
        // definition, RunTask). Booting is Fargate's work, followed by one batched poll: holding
        // slots through it would pace a class by boot time (~1 min) instead of RunTask's rate.
        release();
        release = undefined;
      }
      const arn = task.taskArn!;
      const onStatus = (t: Task) => {
        if (t.lastStatus === 'PROVISIONING') stages.to('provisioning');
        else if (t.lastStatus === 'PENDING' || t.lastStatus === 'ACTIVATING') stages.to('pending');
      };
      onStatus(task);
      if (stages.current === 'queued' || stages.current === undefined) stages.to('provisioning');
      if (task.lastStatus !== 'RUNNING') {
        task = await watcher.watch(arn, (t) => t.lastStatus === 'RUNNING' || stoppingOrStopped(t), signal, onStatus);
      }
      if (task.lastStatus !== 'RUNNING' || stoppingOrStopped(task)) {
        throw new StartFailure('TASK_STOPPED', `task stopped while starting: ${stopDescription(task)}`);
      }
      stages.to('running');
      const host = privateIp(task);
      if (!host) throw new StartFailure('BACKEND_UNAVAILABLE', `task ${arn} is RUNNING without a private IP`);
      stages.to('probing');
      // A resumed task may have been launched by a replica signing with the accepted secret (a rotation).
      const claim: Claim = req.acceptedIdentityKey === undefined ? { workspaceId: id, key: req.identityKey } : { workspaceId: id, key: req.identityKey, acceptedKey: req.acceptedIdentityKey };
      await probeUntilHealthy(id, arn, host, signal, claim);
      await registerInstance(id, gen, host, arn, signal);
      registered = true;
      // Told to stop between the last poll and the registration (the reaper's StopTask finds no
      // registration to remove yet; a Spot reclaim): the registration would be a route to a stopping
      // task. One read after it landed, from the batched poll (no call of its own in a class surge).
      const after = await watcher.watch(arn, () => true, signal);
      if (stoppingOrStopped(after)) throw new StartFailure('TASK_STOPPED', `task stopped while starting: ${stopDescription(after)}`);
      stages.to('ready');
      log({ msg: 'workspace ready', workspaceId: id, generation: gen, taskArn: arn, host });
      return { endpoint: { host, port: o.workspacePort, proves: true }, handle: arn };
    } catch (err) {
      let failure: StartFailure;
      if (deadline.signal.aborted && !req.signal.aborted) {
        failure = new StartFailure('START_DEADLINE', `start did not finish within ${o.startDeadlineMs / 1000}s (last stage: ${stages.current ?? 'none'})`, { cause: err });
      } else if (req.signal.aborted || lifetime.signal.aborted) {
        failure = new StartFailure('ABORTED', `start cancelled: ${String((req.signal.reason as Error)?.message ?? req.signal.reason ?? 'provisioner closed')}`, { cause: err });
      } else {
        failure = toStartFailure(err);
      }
      // A task left behind by a failed start would run unclaimed: stop it. Not when cancelled
      // (lease lost, shutdown): another replica resumes it from the recorded handle.
      if (task?.taskArn && failure.code !== 'ABORTED' && failure.code !== 'TASK_STOPPED') {
        stopInBackground(task.taskArn, `workspace start failed: ${failure.code}`);
      }
      // No route to a failed start's task. Not when cancelled: the replica resuming it keeps it.
      if (registered && failure.code !== 'ABORTED') {
        await deregisterStopped(id, task!.taskArn).catch((e) => {
          log({ msg: 'could not deregister a failed start: the next reconcile removes it', workspaceId: id, error: String(e) });
        });
      }
      log({ msg: 'start failed', workspaceId: id, generation: gen, code: failure.code, reason: failure.message });
      throw failure;
    } finally {
      finished = true;
      release?.();
      deadline.dispose();
      linked.dispose();
    }
  }

  // ---------- stop / describe / list ----------
  async function stop(workspaceId: string, handle: string | undefined, reason: string): Promise<void> {
    const arns = new Set<string>(handle ? [handle] : []);
    if (!handle) {
      const listed = await call('ListTasks', (abortSignal) =>
        ecs.send(new ListTasksCommand({ cluster: o.cluster, family: familyOf(workspaceId), desiredStatus: 'RUNNING' }), { abortSignal }),
      );
      for (const a of listed.taskArns ?? []) arns.add(a);
    }
    // StopTask before anything in Cloud Map: a failed deregistration (throttled past its retries,
    // refused) used to end the stop there, leaving the task running, and billed, until the next
    // reaper pass. Stopping first routes no one to it: the gateway wrote the record 'stopping'
    // before calling stop, and describe, list and reconcile ignore a task desired STOPPED.
    const asked = await Promise.all([...arns].map(async (arn) => ((await stopTask(arn, reason)) ? arn : undefined)));
    await deregisterStopped(workspaceId, handle).catch((err) => {
      // Left for reconcile, which removes a registration whose task is stopped or stopping.
      log({ msg: 'could not deregister a stopped workspace: the next reconcile removes it', workspaceId, error: String(err) });
    });
    await Promise.all(asked.filter((a): a is string => a !== undefined).map(untilStopped));
    log({ msg: 'workspace stopped', workspaceId, tasks: [...arns], reason });
  }

  /** Removes the workspace's Cloud Map registration if it names the task stopped (not a newer generation's). */
  async function deregisterStopped(workspaceId: string, handle: string | undefined): Promise<void> {
    const inst = await findInstance(workspaceId);
    if (inst && (!handle || inst.attributes[ATTR_TASK_ARN] === handle)) await deregister(inst.serviceId, workspaceId);
  }

  function runningFrom(task: Task, attrs?: Record<string, string>): RunningWorkspace | undefined {
    const workspaceId = tag(task.tags, TAG_WORKSPACE);
    const host = privateIp(task);
    if (!workspaceId || !host || task.lastStatus !== 'RUNNING' || stoppingOrStopped(task)) return undefined;
    return {
      workspaceId,
      generation: Number(tag(task.tags, TAG_GENERATION) ?? attrs?.[ATTR_GENERATION] ?? 0),
      // Our image's tasks all prove who they are (codeserver/workspace-identity.cjs): rediscovered too.
      endpoint: { host, port: Number(attrs?.AWS_INSTANCE_PORT ?? o.workspacePort), proves: true },
      handle: task.taskArn!,
      startedAt: task.startedAt ? task.startedAt.getTime() : undefined,
    };
  }

  async function describe(workspaceId: string): Promise<RunningWorkspace | undefined> {
    const attrs = (await findInstance(workspaceId))?.attributes;
    const arn = attrs?.[ATTR_TASK_ARN];
    if (!arn) return undefined;
    const task = await describeTask(arn);
    return task ? runningFrom(task, attrs) : undefined;
  }

  /** Tasks this system started that should run (ListTasks by startedBy, described 100 at a time). */
  async function listOurTasks(): Promise<Task[]> {
    const arns: string[] = [];
    let next: string | undefined;
    do {
      const page = await call('ListTasks', (abortSignal) =>
        ecs.send(new ListTasksCommand({ cluster: o.cluster, startedBy: o.startedBy, desiredStatus: 'RUNNING', maxResults: 100, nextToken: next }), { abortSignal }),
      );
      arns.push(...(page.taskArns ?? []));
      next = page.nextToken;
    } while (next);
    return describeMany(arns);
  }

  async function describeMany(arns: string[]): Promise<Task[]> {
    const pages = await Promise.all(
      chunks(arns, 100).map((page) =>
        call('DescribeTasks', (abortSignal) => ecs.send(new DescribeTasksCommand({ cluster: o.cluster, tasks: page, include: ['TAGS'] }), { abortSignal })),
      ),
    );
    return pages.flatMap((p) => p.tasks ?? []);
  }

  async function list(): Promise<RunningWorkspace[]> {
    const [tasks, instances] = await Promise.all([listOurTasks(), listInstances()]);
    const out: RunningWorkspace[] = [];
    for (const t of tasks) {
      const id = tag(t.tags, TAG_WORKSPACE);
      const inst = id ? instances.get(id) : undefined;
      // Ready workspaces only: registered in Cloud Map (after the probe) by this very task.
      if (!inst || inst.attributes[ATTR_TASK_ARN] !== t.taskArn) continue;
      const ws = runningFrom(t, inst.attributes);
      if (ws) out.push(ws);
    }
    return out;
  }

  /** What a task of this generation must prove, or undefined without the keys (deps.identityKeys). */
  function proofClaimOf(id: string, generation: number): Claim | undefined {
    const { identityKeys, acceptedIdentityKeys } = deps;
    return identityKeys === undefined ? undefined : claimFor({ identityKeys, acceptedIdentityKeys }, id, generation);
  }

  async function reconcile(claim: (workspaceId: string) => WorkspaceClaim | Promise<WorkspaceClaim>): Promise<ReconcileSummary> {
    const summary: ReconcileSummary = { adopted: [], stopped: [], deregistered: [], kept: 0, errors: [] };
    const [tasks, instances] = await Promise.all([listOurTasks(), listInstances()]);
    // ListTasks(desiredStatus RUNNING) then DescribeTasks: a task told to stop in between comes back
    // RUNNING, desired STOPPED. It is neither adopted, kept nor re-registered, and its registration
    // counts as stale below.
    const liveArns = new Set(tasks.filter((t) => !stoppingOrStopped(t)).map((t) => t.taskArn!));
    async function reconcileTask(t: Task, id: string, c: WorkspaceClaim): Promise<void> {
      const gen = Number(tag(t.tags, TAG_GENERATION) ?? 0);
      const inst = instances.get(id);
      const registered = inst?.attributes[ATTR_TASK_ARN] === t.taskArn;
      if (c.state === 'unknown') {
        if (t.lastStatus !== 'RUNNING') {
          // Still starting with no record anywhere: leave it to its starter unless it is past
          // any start deadline, then nobody will ever finish it.
          const age = clock.now() - (t.createdAt?.getTime() ?? clock.now());
          if (age > o.startDeadlineMs) {
            await stopTask(t.taskArn!, 'reconcile: start abandoned');
            summary.stopped.push({ workspaceId: id, handle: t.taskArn!, generation: gen });
          }
          return;
        }
        const ws = runningFrom(t, registered ? inst!.attributes : undefined);
        if (!ws) return;
        if (!registered) {
          // Started but never registered (its starter died after the probe or before it): adopt
          // it only if it answers with the proof of its generation's key, as a start's probe asks,
          // then make it discoverable. One that never does is stopped once it is older than any
          // start could be: a bare /healthz adopted tasks the gateway stopped at their first request.
          const proof = proofClaimOf(id, gen);
          const verdict = proof === undefined ? 'unproven' : await probeOnce(id, ws.endpoint.host, ws.endpoint.port, lifetime.signal, proof);
          if (verdict !== 'healthy') {
            if (clock.now() - (t.createdAt?.getTime() ?? clock.now()) > o.startDeadlineMs) {
              await stopTask(t.taskArn!, 'reconcile: unclaimed task never became healthy');
              summary.stopped.push({ workspaceId: id, handle: t.taskArn!, generation: gen });
            }
            return;
          }
          await registerInstance(id, gen, ws.endpoint.host, t.taskArn!, lifetime.signal, randomUUID());
        }
        summary.adopted.push(ws);
        return;
      }
      if (c.state === 'stopped' || c.generation !== gen) {
        // StopTask first, as in stop(): a failed deregistration must not keep the task running. One
        // that fails is reported in errors and found stale (its task stopping) by the next pass.
        await stopTask(t.taskArn!, c.state === 'stopped' ? 'reconcile: workspace is stopped' : `reconcile: generation ${gen} superseded by ${c.generation}`);
        summary.stopped.push({ workspaceId: id, handle: t.taskArn!, generation: gen });
        if (registered) {
          instances.delete(id);
          await deregister(inst!.serviceId, id);
        }
        return;
      }
      if (c.state === 'running' && !registered && t.lastStatus === 'RUNNING') {
        // The store has it running but Cloud Map lost it (a failed registration, a manual
        // deregistration): make it discoverable again for gateways without a route.
        const ws = runningFrom(t);
        if (ws) await registerInstance(id, gen, ws.endpoint.host, t.taskArn!, lifetime.signal, randomUUID());
      }
      summary.kept++;
    }
    for (const t of tasks) {
      const id = tag(t.tags, TAG_WORKSPACE);
      if (!id || !liveArns.has(t.taskArn!)) continue;
      try {
        await reconcileTask(t, id, await claim(id));
      } catch (err) {
        // One workspace's trouble must not stop the others from being reconciled.
        summary.errors.push(`${id}: ${(err as Error)?.message ?? String(err)}`);
      }
    }
    // Registrations whose task is no longer running (Spot interruption, crash, stopped elsewhere).
    const stale = [...instances.entries()].filter(([, i]) => !liveArns.has(i.attributes[ATTR_TASK_ARN] ?? ''));
    const staleArns = stale.map(([, i]) => i.attributes[ATTR_TASK_ARN]).filter((a): a is string => !!a);
    const described = new Map((await describeMany(staleArns)).map((t) => [t.taskArn!, t]));
    for (const [id, i] of stale) {
      const arn = i.attributes[ATTR_TASK_ARN];
      const t = arn ? described.get(arn) : undefined;
      // Its task still meant to run was registered after the task list was taken (a start that
      // became ready meanwhile): not stale. A task still RUNNING but desired STOPPED is on its way
      // out: deregistered too.
      if (t && t.desiredStatus !== 'STOPPED' && t.lastStatus !== 'STOPPED') continue;
      try {
        await deregister(i.serviceId, id);
      } catch (err) {
        summary.errors.push(`${id}: ${(err as Error)?.message ?? String(err)}`);
        continue;
      }
      summary.deregistered.push({
        workspaceId: id,
        handle: arn,
        generation: i.attributes[ATTR_GENERATION] !== undefined ? Number(i.attributes[ATTR_GENERATION]) : undefined,
        stopCode: t?.stopCode,
        reason: t ? stopDescription(t) : 'task no longer known to ECS',
      });
    }
    log({ msg: 'reconciled', adopted: summary.adopted.length, stopped: summary.stopped.length, deregistered: summary.deregistered.length, kept: summary.kept });
    return summary;
  }

  return {
    kind: 'ecs',
    reconcileIntervalMs: o.reconcileIntervalMs,
    start,
    stop,
    describe,
    list,
    reconcile,
    prepare: async (workspaceId: string, signal?: AbortSignal) => {
      if (!WORKSPACE_ID.test(workspaceId)) throw new StartFailure('BAD_CONFIG', `workspace id ${JSON.stringify(workspaceId)} cannot name an ECS family / EFS directory`);
      await prepare(workspaceId, signal ?? lifetime.signal).catch((err) => { throw toStartFailure(err); });
    },
    async close() {
      lifetime.abort(new StartFailure('ABORTED', 'provisioner closed'));
      watcher.close();
      admission.close();
      for (const line of apiLines.values()) line.close();
      ecs.destroy();
      sd.destroy();
      efs.destroy();
    },
  };
}
