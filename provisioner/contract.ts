// The provisioner contract. It is owned here, by the code that implements it, and the gateway
// depends on it; it names no SDK type so the gateway never learns whether a workspace is a local
// process or an ECS task.

/** Stages a start goes through, in order. Not every provisioner reports every stage. */
export const START_STAGES = ['queued', 'provisioning', 'pending', 'running', 'probing', 'ready'] as const;
export type StartStage = (typeof START_STAGES)[number];

/** Where a running workspace answers HTTP and WebSocket traffic. */
export interface Endpoint {
  readonly host: string;
  readonly port: number;
  /**
   * The workspace here proves who it is (its identityKey, StartRequest) to every new connection, and
   * the gateway sends it nothing of a student's until it has. Set by a provisioner whose workspaces
   * all do (ECS's image, the local code-server and demo); absent on records written before, which are
   * not asked.
   */
  readonly proves?: true;
}

export interface StageReport {
  stage: StartStage;
  /** 1-based position in the admission queue while `stage` is `queued`. */
  queuePosition?: number;
}

export interface StartRequest {
  workspaceId: string;
  /** Increases on every start of a workspace; with the id it names one start exactly. */
  generation: number;
  /**
   * This start's key, opaque: handed to the workspace (WORKSPACE_KEY) and to nobody else, so that it
   * can prove to the gateway that it is this workspace's start (gateway/workspace-proof.ts).
   */
  identityKey: string;
  /**
   * This start's key under GATEWAY_SECRET_ACCEPTED, if set: never handed to a workspace, but a resumed
   * start's task (launched by a replica that signs with that secret, a rotation) proves itself with it.
   */
  acceptedIdentityKey?: string;
  /** Aborted when the start must be given up (deadline, shutdown, the lease lost). */
  signal: AbortSignal;
  /** Called on each stage change; must not throw. */
  onStage(report: StageReport): void;
  /**
   * What an earlier attempt at this same generation recorded (for example an ECS task ARN), so a
   * replica taking over a start resumes it instead of launching a second task (issue 8).
   */
  resumeHandle?: string;
  /** Persist a handle as soon as it exists, so a takeover can resume from it. */
  onHandle?(handle: string): void;
}

export interface StartResult {
  endpoint: Endpoint;
  /** Opaque reference to what was started (a pid, a task ARN); passed back to stop(). */
  handle: string;
}

/** A workspace the provisioner knows to be running (used to rediscover after a store loss). */
export interface RunningWorkspace {
  workspaceId: string;
  generation: number;
  endpoint: Endpoint;
  handle: string;
  startedAt?: number;
}

export interface Provisioner {
  readonly kind: string;
  /** Starts the workspace and resolves once it answers its health probe. */
  start(req: StartRequest): Promise<StartResult>;
  /** Stops it; idempotent, and resolves once it is stopped or a bounded wait has passed. */
  stop(workspaceId: string, handle: string | undefined, reason: string): Promise<void>;
  /** What is running now for one workspace, or undefined. Never called per proxied request. */
  describe(workspaceId: string): Promise<RunningWorkspace | undefined>;
  /** Everything this system has running (reconcile, rediscovery after the store was emptied). */
  list(): Promise<RunningWorkspace[]>;
  /**
   * Readies what a workspace's first start needs (ECS: the access point and task definition family)
   * ahead of it, e.g. when a student enrols. Absent where a first start needs nothing of its own.
   */
  prepare?(workspaceId: string, signal?: AbortSignal): Promise<void>;
  close(): Promise<void>;
}

/** Stable reasons a start can fail with; the gateway maps them to its error catalogue. */
export type StartFailureCode =
  | 'START_DEADLINE' // the start took longer than the configured deadline
  | 'TASK_STOPPED' // the workspace stopped while starting (image pull, exit, Spot reclaim)
  | 'NO_CAPACITY' // no capacity anywhere (after falling back from Spot)
  | 'BACKEND_UNAVAILABLE' // the provisioner's backend (AWS) did not answer in time or failed
  | 'BAD_CONFIG' // misconfiguration the operator must fix
  | 'ABORTED'; // the start was cancelled (shutdown, lease lost)

export class StartFailure extends Error {
  readonly code: StartFailureCode;
  constructor(code: StartFailureCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StartFailure';
    this.code = code;
  }
}
