// Picks implementations once, from config: the state store (memory or Redis) and the provisioner
// (local or ECS). Used by the entry points (gateway/main.ts, reaper/main.ts) and by tests that want
// exactly what an operator would run.
import type { Provisioner } from '../provisioner/contract.js';
import { createLocalProvisioner } from '../provisioner/local.js';
import { createEcsProvisioner } from '../provisioner/ecs.js';
import { ecsOptionsFromEnv } from '../provisioner/ecs-config.js';
import { localTokens, sharedTokens } from '../provisioner/admission.js';
import type { Clock } from './clock.js';
import { StartFailure } from '../provisioner/contract.js';
import { ConfigError, redisUrlPassword, type Config, type Env } from './config.js';
import { GatewayError } from './errors.js';
import { createLogger, type Logger } from './log.js';
import type { Metrics } from './metrics.js';
import type { StateStore } from './store/contract.js';
import { identityKeysOf } from './workspace-proof.js';
import { createMemoryStore } from './store/memory.js';
import { createRedisStore } from './store/redis.js';

/**
 * The entry points' logger: configured level, and the configured secrets scrubbed from every line,
 * a password written into REDIS_URL among them (ioredis errors can quote its options).
 */
export function loggerFromConfig(config: Config, destination?: NodeJS.WritableStream) {
  return createLogger(config.logLevel, destination, { secrets: secretsOf(config) });
}

/**
 * The entry points' logger until the config is read, since reading it may be what fails: level info,
 * the same line shape, and the secrets scrubbed as the environment spells them.
 */
export function startupLogger(env: Env, destination?: NodeJS.WritableStream) {
  return createLogger('info', destination, {
    secrets: secretsOf({ gatewaySecret: env.GATEWAY_SECRET, gatewaySecretAccepted: env.GATEWAY_SECRET_ACCEPTED, adminToken: env.ADMIN_TOKEN, redisPassword: env.REDIS_PASSWORD, redisUrl: env.REDIS_URL }),
  });
}

function secretsOf(s: { gatewaySecret?: string; gatewaySecretAccepted?: string; adminToken?: string; redisPassword?: string; redisUrl?: string }): string[] {
  let urlPassword = { written: '', sent: '' };
  // A REDIS_URL config refuses (no host, a bad port) may still carry a password: read it by hand.
  try { urlPassword = s.redisUrl ? redisUrlPassword(new URL(s.redisUrl)) : urlPassword; } catch {
    const written = /^[^:/?#]+:\/\/[^:@/?#]*:([^@/?#]*)@/.exec(s.redisUrl!)?.[1] ?? '';
    urlPassword = { written, sent: decodeURIComponentSafe(written) };
  }
  return [s.gatewaySecret, s.gatewaySecretAccepted, s.adminToken, s.redisPassword, urlPassword.written, urlPassword.sent].filter((v): v is string => !!v);
}

function decodeURIComponentSafe(s: string): string {
  try { return decodeURIComponent(s); } catch { return s; }
}

/**
 * REDIS_URL with REDIS_PASSWORD (which wins over a password in the URL) as its password. ioredis
 * percent-decodes the URL's userinfo, and the URL setter leaves `%` as it is: a password holding `%`
 * was sent altered (WRONGPASS) or stopped the gateway with "URI malformed". So it is encoded whole.
 */
export function redisConnectionUrl(redisUrl: string, password?: string): string {
  const url = new URL(redisUrl);
  if (password) url.password = encodeURIComponent(password);
  return url.toString();
}

export async function storeFromConfig(config: Config, clock: Clock, metrics: Metrics, log: Logger): Promise<StateStore> {
  if (!config.redisUrl) return createMemoryStore(clock);
  let lastLogged = 0;
  return createRedisStore({
    url: redisConnectionUrl(config.redisUrl, config.redisPassword), prefix: config.redisPrefix, commandTimeoutMs: config.redisCommandTimeoutMs,
    onError: (err) => {
      metrics.storeError();
      // One line per 10 s at most while Redis is away, not one per reconnect attempt.
      if (Date.now() - lastLogged > 10_000) { lastLogged = Date.now(); log.warn({ event: 'store.error', err: err.message }, 'redis error'); }
    },
  });
}

/**
 * `role`: the standalone reaper's local provisioner leaves what a dead gateway left alone (a gateway
 * adopts it, provisioner/local.ts).
 */
export async function provisionerFromConfig(config: Config, clock: Clock, metrics: Metrics, log: Logger, store: StateStore, role: 'gateway' | 'reaper' = 'gateway'): Promise<Provisioner> {
  if (config.provisioner === 'local') {
    return createLocalProvisioner({
      workspace: config.local.workspace, dataDir: config.local.dataDir, codeServerBin: config.local.codeServerBin,
      demoReadyDelayMs: config.local.demoReadyDelayMs, log: (obj, msg) => log.info(obj, msg), parentEnv: config.env,
      adoptLeftovers: role === 'gateway', ...identityKeysOf(config),
    });
  }
  const options = ecsOptionsFromEnv(config.env);
  let lastFallback = 0;
  // AWS rates the ECS API per account (RunTask, RegisterTaskDefinition, and a bucket per category
  // of the other calls): with Redis every replica draws from one bucket each, so the fleet
  // together, not each replica, stays at RUNTASK_RATE, TASKDEF_RATE and ECS_API_RATES (issue 7, class surge).
  const bucket = (name: string, rate: number, burst: number) => {
    const local = localTokens(clock, rate, burst);
    if (store.kind !== 'redis') return local;
    return sharedTokens({ take: () => store.takeToken(name, rate, burst) }, local, (err) => {
      if (clock.now() - lastFallback > 10_000) {
        lastFallback = clock.now();
        log.warn({ event: 'runtask.bucket_local', bucket: name, err: (err as Error).message }, 'shared AWS rate bucket unavailable: pacing with this replica\'s own');
      }
    });
  };
  return createEcsProvisioner(options, {
    clock,
    tokens: bucket,
    // Reconcile asks a task it would adopt for its start's proof.
    ...identityKeysOf(config),
    log: (obj) => log.info(obj, 'ecs'),
    observer: {
      awsCall: (operation, outcome) => metrics.awsCall(operation, outcome),
      queueDepth: (n) => metrics.queueDepth(n),
      stage: () => undefined, // stage durations are measured by the gateway for every provisioner
    },
  });
}

/** The fields of a failed start's line: its code where the error has one, and the variable for a bad setting. */
export function startupFailureFields(err: unknown): Record<string, unknown> {
  const fields = { event: 'startup.failed', err: err instanceof Error ? err : new Error(String(err)) };
  if (err instanceof ConfigError) return { ...fields, code: err.code, variable: err.variable };
  if (err instanceof GatewayError || err instanceof StartFailure) return { ...fields, code: err.code };
  return fields;
}

/**
 * For entry points: a start that failed is one JSON line like every other, not plain text on stderr
 * that a log pipeline (CloudWatch Logs) takes line by line as separate events; then exit 2 for a bad
 * setting (fix the configuration; restarting will not help), 1 for anything else.
 */
export function exitOnStartupFailure(log: Logger, err: unknown): never {
  const config = err instanceof ConfigError;
  log.error(startupFailureFields(err), config ? 'configuration error; not starting' : 'start failed; exiting');
  process.exit(config ? 2 : 1);
}
