// Entry point: reads the environment once, picks implementations, starts both listeners, and turns
// SIGTERM into a graceful drain (shutdown.ts). `npm start` with no configuration runs a complete
// single-replica gateway (in-memory state, local workspaces) and prints a sign-in link for the demo
// workspace.
import { randomUUID } from 'node:crypto';
import { createGateway } from './app.js';
import { systemClock } from './clock.js';
import { exitOnStartupFailure, loggerFromConfig, provisionerFromConfig, startupLogger, storeFromConfig } from './compose.js';
import { loadConfig } from './config.js';
import { logProcessWarnings, type Logger } from './log.js';
import { createMetrics } from './metrics.js';
import { installShutdown } from './shutdown.js';

// What a failed start is logged with: the configured logger once there is one.
let log: Logger = startupLogger(process.env);

async function main() {
  const config = loadConfig(process.env);
  const logger = loggerFromConfig(config);
  log = logger;
  logProcessWarnings(logger);
  const metrics = createMetrics({ enabled: config.metricsEnabled, defaultMetrics: true });
  const store = await storeFromConfig(config, systemClock, metrics, logger);
  // The provisioner's own settings (ECS_*, EFS_*, ...) are validated by its config parser (a ConfigError).
  const provisioner = await provisionerFromConfig(config, systemClock, metrics, logger, store);
  const gateway = await createGateway({ config, store, provisioner, metrics, logger });
  const { gatewayPort, adminPort } = await gateway.listen();
  logger.info({ event: 'listening', gatewayPort, adminPort, store: store.kind, provisioner: provisioner.kind }, 'gateway listening');

  if (config.gatewaySecretGenerated || config.adminTokenGenerated) {
    // Development: print what a newcomer needs to open the demo workspace in a browser.
    const token = await gateway.auth.createLoginToken('demo', randomUUID(), config.loginTokenMaxTtlMs, (await gateway.revocations.forSigning('demo')).signAs);
    const lines = [
      '',
      `  Workspace gateway is up (${provisioner.kind} workspaces, ${store.kind} state).`,
      `  Open the demo workspace (one-time link, valid ${Math.round(config.loginTokenMaxTtlMs / 60_000)} min):`,
      `    ${gateway.workspaceOrigin('demo')}/__gateway/login?token=${token}&next=/`,
      `  More links: curl -X POST -H 'authorization: Bearer ${config.adminToken}' http://127.0.0.1:${adminPort}/api/workspaces/demo/login-url`,
      '',
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
  }

  installShutdown({
    log: logger, timeoutMs: config.shutdownTimeoutMs, fields: { drainMs: config.drainPeriodMs }, stoppedMessage: 'gateway stopped',
    async close() {
      await gateway.close(config.drainPeriodMs);
      await provisioner.close();
      await store.close();
      metrics.close();
    },
  });
}

main().catch((err) => exitOnStartupFailure(log, err));
