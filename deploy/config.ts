// Synth-time settings of the CDK app, parsed once from CDK context (`-c key=value` or deploy/cdk.json)
// by a pure function so the tests can table-drive it. Values that only matter at deploy time and
// never change the template's shape (certificate, image URIs, login URL) are CloudFormation
// parameters instead, so `cdk synth` needs none of them (see stack.ts).

export interface ExistingVpc {
  vpcId: string;
  /** The VPC's CIDR: the gateway trusts X-Forwarded-For from it (the ALB's addresses). */
  cidr: string;
  availabilityZones: string[];
  publicSubnetIds: string[];
  privateSubnetIds: string[];
}

export interface NewVpc {
  cidr: string;
  /** Env-agnostic stacks see two zones (Fn::GetAZs); import an existing VPC for more. */
  maxAzs: number;
  natGateways: number;
}

export interface DeployConfig {
  /** Students' workspaces are `ws-<id>.<domain>`; the ALB rule matches `*.<domain>`. */
  domain: string;
  /** Sizing only: how many Cloud Map services to shard instances over. Never one resource per student. */
  students: number;
  vpc: { existing: ExistingVpc } | { create: NewVpc };
  /** Route 53 zone for the wildcard alias record; omitted: point `*.<domain>` at the ALB yourself. */
  hostedZoneId?: string;
  gateway: { cpu: number; memoryMiB: number; minTasks: number; maxTasks: number; logLevel: string };
  workspace: { cpu: number; memoryMiB: number; taskFamilyPrefix: string; baseFamily: string; capacity: 'spot-first' | 'fargate' };
  redisNodeType: string;
  albIdleTimeoutSeconds: number;
  drainSeconds: number;
  deregistrationDelaySeconds: number;
  idleTimeout: string;
  maxSession: string;
  logRetentionDays: number;
  alarmEmail?: string;
  /**
   * Rotating GATEWAY_SECRET (README "Rotating GATEWAY_SECRET"): `current`, a Secrets Manager secret's
   * complete ARN to take GATEWAY_SECRET from instead of the generated one; `accepted`, one to take
   * GATEWAY_SECRET_ACCEPTED from. Either may name the generated secret's ARN (stack output).
   */
  gatewaySecretArns: { current?: string; accepted?: string };
}

/** Fargate's maximum stopTimeout (seconds between SIGTERM and SIGKILL), used for the gateway. */
export const FARGATE_MAX_STOP_TIMEOUT_SECONDS = 120;
/** The gateway's SHUTDOWN_TIMEOUT: its hard exit, 10 s before ECS's SIGKILL. */
export const SHUTDOWN_TIMEOUT_SECONDS = FARGATE_MAX_STOP_TIMEOUT_SECONDS - 10;
/** Cloud Map's default quota of instances per service: more students means more services. */
export const CLOUDMAP_INSTANCES_PER_SERVICE = 1000;
/** EFS access points per file system (one per student, created by the gateway). */
export const EFS_ACCESS_POINTS_PER_FILE_SYSTEM = 10_000;
export const GATEWAY_PORT = 8080;
export const ADMIN_PORT = 9090;
export const WORKSPACE_PORT = 8080;
export const REDIS_PORT = 6379;

// Fargate's valid CPU/memory pairs (MiB), https://docs.aws.amazon.com/AmazonECS/latest/developerguide/fargate-tasks-services.html
const FARGATE_MEMORY: Record<number, [number, number, number]> = {
  256: [512, 2048, 1024],
  512: [1024, 4096, 1024],
  1024: [2048, 8192, 1024],
  2048: [4096, 16384, 1024],
  4096: [8192, 30720, 1024],
  8192: [16384, 61440, 4096],
  16384: [32768, 122880, 8192],
};

type Context = (key: string) => unknown;

// The retention periods CloudWatch Logs accepts.
const LOG_RETENTION_DAYS = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653];
function retention(days: number): number {
  if (!LOG_RETENTION_DAYS.includes(days)) throw new Error(`context "logRetentionDays" must be one of ${LOG_RETENTION_DAYS.join(', ')}`);
  return days;
}

export function cloudMapShards(students: number): number {
  return Math.max(1, Math.ceil(students / CLOUDMAP_INSTANCES_PER_SERVICE));
}

export function parseDeployConfig(ctx: Context): DeployConfig {
  const str = (key: string, def?: string): string => {
    const v = ctx(key);
    if (v === undefined || v === null || v === '') {
      if (def === undefined) throw new Error(`context "${key}" is required`);
      return def;
    }
    if (typeof v !== 'string' && typeof v !== 'number') throw new Error(`context "${key}" must be a string`);
    return String(v).trim();
  };
  const optStr = (key: string): string | undefined => {
    const v = ctx(key);
    return v === undefined || v === null || v === '' ? undefined : str(key);
  };
  const int = (key: string, def: number, min: number, max: number): number => {
    const raw = str(key, String(def));
    if (!/^\d+$/.test(raw)) throw new Error(`context "${key}" must be an integer, got "${raw}"`);
    const n = Number(raw);
    if (n < min || n > max) throw new Error(`context "${key}" must be between ${min} and ${max}, got ${n}`);
    return n;
  };
  const list = (key: string): string[] => {
    const v = ctx(key);
    const items = Array.isArray(v) ? v.map(String) : str(key).split(',');
    return items.map((s) => s.trim()).filter((s) => s !== '');
  };
  const fargateSize = (prefix: string, cpuDef: number, memDef: number) => {
    const cpu = int(`${prefix}Cpu`, cpuDef, 256, 16384);
    const range = FARGATE_MEMORY[cpu];
    if (!range) throw new Error(`context "${prefix}Cpu" must be one of ${Object.keys(FARGATE_MEMORY).join(', ')}`);
    const memoryMiB = int(`${prefix}MemoryMiB`, memDef, range[0], range[1]);
    if ((memoryMiB - range[0]) % range[2] !== 0) {
      throw new Error(`context "${prefix}MemoryMiB" must be ${range[0]}..${range[1]} in steps of ${range[2]} for ${cpu} CPU units`);
    }
    return { cpu, memoryMiB };
  };

  const domain = str('domain', 'ecombinators.com').toLowerCase();
  if (!/^(?!-)[a-z0-9-]{1,63}(\.(?!-)[a-z0-9-]{1,63})+$/.test(domain)) throw new Error(`context "domain" is not a DNS name: "${domain}"`);

  const students = int('students', 500, 1, EFS_ACCESS_POINTS_PER_FILE_SYSTEM);

  let vpc: DeployConfig['vpc'];
  const vpcId = optStr('vpcId');
  if (vpcId !== undefined) {
    const existing: ExistingVpc = {
      vpcId,
      cidr: str('vpcCidr'),
      availabilityZones: list('availabilityZones'),
      publicSubnetIds: list('publicSubnetIds'),
      privateSubnetIds: list('privateSubnetIds'),
    };
    const zones = existing.availabilityZones.length;
    if (zones < 2) throw new Error('context "availabilityZones" needs at least two zones (ALB, Multi-AZ Redis)');
    for (const key of ['publicSubnetIds', 'privateSubnetIds'] as const) {
      // Vpc.fromVpcAttributes pairs subnets with zones by position, so the counts must line up.
      if (existing[key].length === 0 || existing[key].length % zones !== 0) {
        throw new Error(`context "${key}" must list a multiple of ${zones} subnets (one per zone, in zone order)`);
      }
    }
    vpc = { existing };
  } else {
    vpc = { create: { cidr: str('vpcCidr', '10.40.0.0/16'), maxAzs: int('maxAzs', 2, 2, 2), natGateways: int('natGateways', 1, 1, 2) } };
  }

  const gwSize = fargateSize('gateway', 1024, 2048);
  const minTasks = int('gatewayMinTasks', 2, 2, 100);
  const maxTasks = int('gatewayMaxTasks', 6, minTasks, 200);
  const wsSize = fargateSize('workspace', 1024, 4096);

  const taskFamilyPrefix = str('taskFamilyPrefix', 'ws');
  if (!/^[a-zA-Z][a-zA-Z0-9_]{0,30}$/.test(taskFamilyPrefix)) throw new Error('context "taskFamilyPrefix" must be letters, digits or _');
  // The base family must not match `<prefix>-*`, which is all the gateway may run.
  const baseFamily = `${taskFamilyPrefix}base-code-server`;

  const capacity = str('workspaceCapacity', 'spot-first');
  if (capacity !== 'spot-first' && capacity !== 'fargate') throw new Error('context "workspaceCapacity" must be spot-first or fargate');

  const albIdleTimeoutSeconds = int('albIdleTimeoutSeconds', 300, 60, 4000);
  // The gateway's hard exit (SHUTDOWN_TIMEOUT, stopTimeout - 10 s) must come after the drain and its
  // 5 s grace for in-flight requests, or the gateway refuses to start (gateway/config.ts).
  const drainSeconds = int('drainSeconds', 90, 1, SHUTDOWN_TIMEOUT_SECONDS - 6);
  const deregistrationDelaySeconds = int('deregistrationDelaySeconds', 60, 0, FARGATE_MAX_STOP_TIMEOUT_SECONDS - 1);

  return {
    domain,
    students,
    vpc,
    hostedZoneId: optStr('hostedZoneId'),
    gateway: { ...gwSize, minTasks, maxTasks, logLevel: str('logLevel', 'info') },
    workspace: { ...wsSize, taskFamilyPrefix, baseFamily, capacity },
    redisNodeType: str('redisNodeType', 'cache.t4g.small'),
    albIdleTimeoutSeconds,
    drainSeconds,
    deregistrationDelaySeconds,
    idleTimeout: str('idleTimeout', '15m'),
    maxSession: str('maxSession', '12h'),
    logRetentionDays: retention(int('logRetentionDays', 30, 1, 3653)),
    alarmEmail: optStr('alarmEmail'),
    gatewaySecretArns: gatewaySecretArns(optStr('gatewaySecretArn'), optStr('gatewaySecretAcceptedArn')),
  };
}

/** A complete ARN: ECS injects it as it stands, and a partial one (no random suffix) names no version. */
const SECRET_ARN = /^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[^:]+-[A-Za-z0-9]{6}$/;
function gatewaySecretArns(current: string | undefined, accepted: string | undefined): DeployConfig['gatewaySecretArns'] {
  for (const [key, arn] of [['gatewaySecretArn', current], ['gatewaySecretAcceptedArn', accepted]] as const) {
    if (arn !== undefined && !SECRET_ARN.test(arn)) throw new Error(`context "${key}" must be a Secrets Manager secret's complete ARN, got "${arn}"`);
  }
  // The gateway refuses GATEWAY_SECRET_ACCEPTED equal to GATEWAY_SECRET: every task would exit at start.
  if (accepted !== undefined && accepted === current) throw new Error('context "gatewaySecretAcceptedArn" must name another secret than "gatewaySecretArn"');
  return { current, accepted };
}
