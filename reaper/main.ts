// The reaper as its own entry point, for a scheduled task (e.g. an ECS scheduled task every few
// minutes) instead of, or beside, the reapers inside the gateways. It takes the same leader lease,
// so it never races them. `--once` runs one pass and exits; otherwise it loops every REAP_INTERVAL.
import { randomUUID } from 'node:crypto';
import { systemClock } from '../gateway/clock.js';
import { exitOnStartupFailure, loggerFromConfig, provisionerFromConfig, startupLogger, storeFromConfig } from '../gateway/compose.js';
import { ConfigError, loadConfig } from '../gateway/config.js';
import { logProcessWarnings, type Logger } from '../gateway/log.js';
import { createMetrics } from '../gateway/metrics.js';
import { installShutdown } from '../gateway/shutdown.js';
import { identityKeysOf } from '../gateway/workspace-proof.js';
import { createWorkspaces } from '../gateway/workspaces.js';
import { createReaper, type PassSummary } from './reaper.js';

// What a failed start is logged with: the configured logger once there is one.
let startLog: Logger = startupLogger(process.env);

async function main() {
  const config = loadConfig(process.env);
  // The gateway's logger: the configured secrets are scrubbed from the reaper's lines as well.
  const log = loggerFromConfig(config);
  startLog = log;
  if (!config.redisUrl) throw new ConfigError('REDIS_URL', 'the standalone reaper needs the shared store (the in-memory store lives inside one gateway)');
  const once = process.argv.includes('--once');
  logProcessWarnings(log);
  const metrics = createMetrics({ enabled: false, defaultMetrics: false });
  const store = await storeFromConfig(config, systemClock, metrics, log);
  const provisioner = await provisionerFromConfig(config, systemClock, metrics, log, store, 'reaper');
  const instanceId = `reaper-${randomUUID().slice(0, 8)}`;
  const workspaces = createWorkspaces({ store, provisioner, clock: systemClock, metrics, log, instanceId, startDeadlineMs: config.startDeadlineMs, routeCacheTtlMs: config.routeCacheTtlMs,
    ...identityKeysOf(config),
  });
  const reaper = createReaper({
    store, workspaces, clock: systemClock, metrics, log, instanceId,
    idleTimeoutMs: config.idleTimeoutMs, maxSessionMs: config.maxSessionMs, intervalMs: config.reapIntervalMs, autoStart: !once,
    activityFlushIntervalMs: config.activityFlushIntervalMs,
  });
  // The same bounded close as the gateway's (SHUTDOWN_TIMEOUT): a pass stuck on AWS or Redis must
  // not hold the task until ECS's SIGKILL.
  const shutdown = installShutdown({
    log, timeoutMs: config.shutdownTimeoutMs, stoppedMessage: 'reaper stopped',
    async close() {
      await reaper.close();
      await workspaces.close();
      // Its timers and the AWS clients' sockets, as the gateway closes them.
      await provisioner.close();
      await store.close();
    },
  });
  if (once) {
    let summary: PassSummary;
    try {
      summary = await reaper.pass();
    } catch (err) {
      // Not a failed start (it was logged as startup.failed, and exited with the store still open):
      // its own line, the same close as any other end, and exit 1 so the scheduler sees the run failed.
      log.error({ event: 'reaper.pass_failed', err: err instanceof Error ? err : new Error(String(err)) }, 'reaper pass failed; exiting');
      shutdown.begin({ reason: 'once' }, 1);
      return;
    }
    log.info({ event: 'reaper.pass', ...summary }, 'reaper pass done');
    shutdown.begin({ reason: 'once' }, 0);
    return;
  }
  log.info({ event: 'reaper.started', intervalMs: config.reapIntervalMs }, 'reaper running');
}

main().catch((err) => exitOnStartupFailure(startLog, err));
