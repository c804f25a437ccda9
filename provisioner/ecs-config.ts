// Parses the ECS provisioner's settings from an environment map, once, at the entry point.
// The variable names are the operators' contract (provisioner/README.md); every error names the
// variable at fault so a misconfigured deployment says what to fix.
import { ConfigError } from '../gateway/config.js';
import { durationMs } from '../gateway/duration.js';
import type { EcsCapacity, EcsProvisionerOptions } from './ecs-types.js';
import { parseEcsApiRates } from './ecs-rates.js';

type Env = Record<string, string | undefined>;

function fail(name: string, why: string): never {
  throw new ConfigError(name, why);
}

function raw(env: Env, name: string): string | undefined {
  const v = env[name]?.trim();
  return v === '' ? undefined : v;
}

function required(env: Env, name: string): string {
  return raw(env, name) ?? fail(name, 'is required when PROVISIONER=ecs');
}

function list(env: Env, name: string, requiredList: boolean): string[] {
  const v = raw(env, name);
  if (v === undefined) return requiredList ? fail(name, 'is required when PROVISIONER=ecs (comma-separated list)') : [];
  const items = v.split(',').map((s) => s.trim()).filter(Boolean);
  if (items.length === 0) fail(name, 'must list at least one value');
  return items;
}

function int(env: Env, name: string, dflt: number, min: number, max: number): number {
  const v = raw(env, name);
  if (v === undefined) return dflt;
  if (!/^\d+$/.test(v)) fail(name, `must be an integer, got ${JSON.stringify(v)}`);
  const n = Number(v);
  if (n < min || n > max) fail(name, `must be between ${min} and ${max}, got ${n}`);
  return n;
}

function positive(env: Env, name: string, dflt: number): number {
  const v = raw(env, name);
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) fail(name, `must be a positive number, got ${JSON.stringify(v)}`);
  return n;
}

function duration(env: Env, name: string, dfltMs: number): number {
  const v = raw(env, name);
  if (v === undefined) return dfltMs;
  const ms = durationMs(v);
  if (ms === undefined || ms <= 0) fail(name, `must be a duration like 250ms, 30s, 5m, 12h or plain seconds, got ${JSON.stringify(v)}`);
  return ms;
}

export function ecsOptionsFromEnv(env: Env): EcsProvisionerOptions {
  const region = required(env, 'AWS_REGION');
  if (!/^[a-z]{2}(-[a-z]+)+-\d+$/.test(region)) fail('AWS_REGION', `does not look like a region, got ${JSON.stringify(region)}`);
  const endpoint = raw(env, 'AWS_ENDPOINT_URL');
  if (endpoint !== undefined) {
    let u: URL | undefined;
    try { u = new URL(endpoint); } catch { /* reported below */ }
    if (!u || (u.protocol !== 'http:' && u.protocol !== 'https:')) fail('AWS_ENDPOINT_URL', `must be an http(s) URL, got ${JSON.stringify(endpoint)}`);
  }
  const base = required(env, 'ECS_BASE_TASK_DEFINITION');
  if (!/^arn:aws[a-z-]*:ecs:[^:]+:\d+:task-definition\/[A-Za-z0-9_-]+:\d+$/.test(base) && !/^[A-Za-z0-9_-]{1,255}(:\d+)?$/.test(base)) {
    fail('ECS_BASE_TASK_DEFINITION', `must be family, family:revision or a task-definition ARN, got ${JSON.stringify(base)}`);
  }
  const prefix = raw(env, 'ECS_TASK_FAMILY_PREFIX') ?? 'ws';
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(prefix)) fail('ECS_TASK_FAMILY_PREFIX', 'may hold only letters, digits, - and _ (at most 64)');
  const capacity = (raw(env, 'ECS_CAPACITY') ?? 'spot-first') as EcsCapacity;
  if (capacity !== 'spot-first' && capacity !== 'fargate') fail('ECS_CAPACITY', `must be spot-first or fargate, got ${JSON.stringify(capacity)}`);
  const startedBy = raw(env, 'ECS_STARTED_BY') ?? 'workspace-gateway';
  // RunTask's startedBy: up to 128 letters, numbers, hyphens, underscores (ECS API reference).
  if (!/^[A-Za-z0-9_-]{1,128}$/.test(startedBy)) fail('ECS_STARTED_BY', 'may hold only letters, digits, - and _ (at most 128)');
  // One id, or a comma list when one file system's 10,000 access points are not enough.
  const fsIds = list(env, 'EFS_FILE_SYSTEM_ID', true);
  for (const fsId of fsIds) if (!/^fs-[0-9a-f]{8,40}$/.test(fsId)) fail('EFS_FILE_SYSTEM_ID', `must look like fs-0123456789abcdef0, got ${JSON.stringify(fsId)}`);
  const rootDir = raw(env, 'EFS_ROOT_DIR') ?? '/students';
  if (!rootDir.startsWith('/') || rootDir.includes('..')) fail('EFS_ROOT_DIR', 'must be an absolute path without ..');
  let apiRates;
  try {
    apiRates = parseEcsApiRates(raw(env, 'ECS_API_RATES'));
  } catch (err) {
    fail('ECS_API_RATES', (err as Error).message);
  }
  const services = list(env, 'CLOUDMAP_SERVICE_IDS', true);
  for (const s of services) if (!/^srv-[a-z0-9]{1,64}$/.test(s)) fail('CLOUDMAP_SERVICE_IDS', `${JSON.stringify(s)} is not a Cloud Map service id (srv-...)`);

  return {
    region,
    endpoint,
    cluster: required(env, 'ECS_CLUSTER'),
    subnets: list(env, 'ECS_SUBNETS', true),
    securityGroups: list(env, 'ECS_SECURITY_GROUPS', true),
    baseTaskDefinition: base,
    taskFamilyPrefix: prefix,
    containerName: raw(env, 'ECS_CONTAINER_NAME') ?? 'code-server',
    capacity,
    startedBy,
    efsFileSystemIds: fsIds,
    efsRootDir: rootDir.replace(/\/+$/, '') || '/',
    efsPosixUid: int(env, 'EFS_POSIX_UID', 1000, 0, 4294967295),
    efsPosixGid: int(env, 'EFS_POSIX_GID', 1000, 0, 4294967295),
    cloudMapServiceIds: services,
    workspacePort: int(env, 'WORKSPACE_PORT', 8080, 1, 65535),
    startMaxInFlight: int(env, 'START_MAX_IN_FLIGHT', 100, 1, 100_000),
    runTaskRate: positive(env, 'RUNTASK_RATE', 20),
    runTaskBurst: int(env, 'RUNTASK_BURST', 20, 1, 10_000),
    taskDefRate: positive(env, 'TASKDEF_RATE', 1),
    taskDefBurst: int(env, 'TASKDEF_BURST', 20, 1, 10_000),
    apiRates,
    startDeadlineMs: duration(env, 'START_DEADLINE', 5 * 60_000),
    awsCallTimeoutMs: duration(env, 'AWS_CALL_TIMEOUT', 10_000),
    reconcileIntervalMs: duration(env, 'RECONCILE_INTERVAL', 60_000),
  };
}
