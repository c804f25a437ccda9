// Picks implementations once, from config: the state store (memory or Redis) and the provisioner
// (local or ECS). Used by the entry points (gateway/main.ts, reaper/main.ts) and by tests that want
// exactly what an operator would run.
import type { Provisioner } from '../provisioner/contract.js';
import { createLocalProvisioner } from '../provisioner/local.js';
import { createEcsProvisioner } from '../provisioner/ecs.js';
import { ecsOptionsFromEnv } from '../provisioner/ecs-config.js';
import { localTokens, sharedTokens } from '../provisioner/admission.js';
import type { Clock } from './clock.js';
import { ConfigError, loadConfig, type Config, type Env } from './config.js';
import { createLogger, type Logger } from './log.js';
import type { Metrics } from './metrics.js';
import type { StateStore } from './store/contract.js';
import { createMemoryStore } from './store/memory.js';
import { createRedisStore } from './store/redis.js';

/**
 * The entry points' logger: configured level, and the configured secrets scrubbed from every line,
 * a password written into REDIS_URL among them (ioredis errors can quote its options).
 */
export function loggerFromConfig(config: Config, destination?: NodeJS.WritableStream) {
  const urlPassword = config.redisUrl ? new URL(config.redisUrl).password : '';
  return createLogger(config.logLevel, destination, {
    secrets: [config.gatewaySecret, config.adminToken, config.redisPassword, urlPassword, decodeURIComponentSafe(urlPassword)],
  });
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

export async function provisionerFromConfig(config: Config, clock: Clock, metrics: Metrics, log: Logger, store: StateStore): Promise<Provisioner> {
  if (config.provisioner === 'local') {
    return createLocalProvisioner({
      workspace: config.local.workspace, dataDir: config.local.dataDir, codeServerBin: config.local.codeServerBin,
      demoReadyDelayMs: config.local.demoReadyDelayMs, log: (obj, msg) => log.info(obj, msg), parentEnv: config.env,
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
    log: (obj) => log.info(obj, 'ecs'),
    observer: {
      awsCall: (operation, outcome) => metrics.awsCall(operation, outcome),
      queueDepth: (n) => metrics.queueDepth(n),
      stage: () => undefined, // stage durations are measured by the gateway for every provisioner
    },
  });
}

/** For entry points: the validated config, or a one-line error naming the variable and exit code 2. */
export function configOrExit(env: Env): Config {
  try {
    return loadConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) { process.stderr.write(`configuration error: ${err.message}\n`); process.exit(2); }
    throw err;
  }
}
