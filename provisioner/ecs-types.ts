// Plain types of the ECS provisioner: its options (parsed once from the environment by
// ecs-config.ts), its observer (fed into Prometheus by the gateway) and its reconcile API.
// No AWS SDK type appears here, so the gateway never depends on the SDK.
import type { RetryPolicy } from './retry.js';
import type { EcsApiBucket, Rate } from './ecs-rates.js';
import type { RunningWorkspace, StartStage } from './contract.js';

export type EcsCapacity = 'spot-first' | 'fargate';

export interface EcsProvisionerOptions {
  region: string;
  /** One endpoint override for ECS, Cloud Map and EFS (tests, LocalStack-like setups). */
  endpoint?: string;
  /** Static credentials; when absent the SDK's default provider chain is used (task role). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  cluster: string;
  subnets: string[];
  securityGroups: string[];
  /** family[:revision] or ARN of the task definition every student's family is copied from. */
  baseTaskDefinition: string;
  taskFamilyPrefix: string;
  containerName: string;
  capacity: EcsCapacity;
  startedBy: string;
  /**
   * EFS file systems for students' access points, in order of preference. A file system holds at
   * most 10,000 access points: a new student goes to the first one with room, and stays there.
   */
  efsFileSystemIds: string[];
  efsRootDir: string;
  efsPosixUid: number;
  efsPosixGid: number;
  cloudMapServiceIds: string[];
  workspacePort: number;
  startMaxInFlight: number;
  /** RunTask calls per second (AWS's sustained rate), for the whole fleet when the bucket is shared. */
  runTaskRate: number;
  /** RunTask calls the bucket lets through at once after a quiet spell (AWS's burst). */
  runTaskBurst: number;
  /** RegisterTaskDefinition calls per second (AWS: 1), for the whole fleet when the bucket is shared. */
  taskDefRate: number;
  /** RegisterTaskDefinition calls let through at once after a quiet spell (AWS: 20). */
  taskDefBurst: number;
  /** AWS's buckets for the provisioner's other ECS calls (ecs-rates.ts), for the whole fleet when shared. */
  apiRates: Record<EcsApiBucket, Rate>;
  startDeadlineMs: number;
  awsCallTimeoutMs: number;
  reconcileIntervalMs: number;
  /** Tunables with sensible defaults (not operator settings). */
  describePollMs?: number; // default 250: the shortest interval between batched DescribeTasks polls
  probeIntervalMs?: number; // default 250
  probeTimeoutMs?: number; // default 2000
  stopWaitMs?: number; // default 30000
  retry?: Partial<RetryPolicy>;
  /** Extra environment for the workspace container (deterministic: it is part of the clientToken's parameters). */
  environment?: Record<string, string>;
}

export type AwsCallOutcome = 'ok' | 'throttled' | 'error' | 'timeout';

export interface EcsObserver {
  /** One per attempt of an AWS call. */
  awsCall(operation: string, outcome: AwsCallOutcome): void;
  /** Starts waiting for admission (slot or RunTask token). */
  queueDepth(n: number): void;
  /** Seconds spent in `stage` when a start leaves it; for `ready`, the whole start. */
  stage(stage: StartStage, seconds: number): void;
}

/** What the store believes about one workspace, asked by reconcile(). */
export type WorkspaceClaim =
  | { state: 'unknown' } // the store has no record: a running task is an orphan to adopt
  | { state: 'stopped' } // the store says nothing should run: stop what runs
  | { state: 'running' | 'starting'; generation: number }; // only this generation may run

export interface ReconcileSummary {
  /** Running, healthy-looking tasks the store did not know; the caller records them. */
  adopted: RunningWorkspace[];
  /** Tasks stopped because no workspace claims them (workspace id, task ARN). */
  stopped: { workspaceId: string; handle: string; generation: number }[];
  /**
   * Cloud Map instances removed because their task is gone (Spot interruption, crash, stopped
   * elsewhere); the caller marks these workspaces stopped so the next page load starts anew.
   */
  deregistered: { workspaceId: string; handle?: string; generation?: number; stopCode?: string; reason?: string }[];
  /** Running tasks matching what the store claims. */
  kept: number;
  /** Per-workspace failures (AWS errors); the rest of the reconcile went on. */
  errors: string[];
}
