// The one shutdown path of both entry points (gateway/main.ts, reaper/main.ts): a signal starts the
// close once, and SHUTDOWN_TIMEOUT bounds it. A close stuck on an unreachable Redis or AWS otherwise
// held the standalone reaper until ECS's SIGKILL, with no line saying why.
//
// A fault nothing caught (an unhandled rejection, an uncaught exception) takes the same path with exit
// code 1: Node's default printed a bare, unscrubbed stack on stderr (a secret in the message included)
// and dropped every open connection at once. Now it is one JSON line at error level, then the drain;
// the process state is suspect, so it does not carry on serving.
import type { Logger } from './log.js';

export interface ShutdownOptions {
  log: Logger;
  /** SHUTDOWN_TIMEOUT: after it, one `shutdown.timeout` line and exit 1, whatever is still closing. */
  timeoutMs: number;
  /** Everything the process holds, closed in order. */
  close(): Promise<void>;
  /** Fields for the `shutdown` line (the gateway's drain period). */
  fields?: Record<string, unknown>;
  /** What `stopped` says. */
  stoppedMessage?: string;
}

export interface Shutdown {
  /** Starts the close (once; later calls only raise the exit code). */
  begin(cause: Record<string, unknown>, exitCode: number): void;
}

/** Installs the SIGTERM/SIGINT handlers; returns `begin` for the entry point's own ends (`--once`). */
export function installShutdown(opts: ShutdownOptions): Shutdown {
  const { log } = opts;
  let exitCode: number | undefined;
  const begin = (cause: Record<string, unknown>, code: number) => {
    if (exitCode !== undefined) {
      exitCode = Math.max(exitCode, code);
      return;
    }
    exitCode = code;
    log.info({ event: 'shutdown', ...cause, ...opts.fields }, 'shutting down');
    const hard = setTimeout(() => {
      log.error({ event: 'shutdown.timeout', timeoutMs: opts.timeoutMs }, 'shutdown took too long; exiting');
      process.exit(1);
    }, opts.timeoutMs);
    // Not unref'd: a close that awaits something holding no handle would otherwise end the process
    // with exit 0, as if it had finished.
    void hard;
    opts.close().then(
      () => { log.info({ event: 'stopped' }, opts.stoppedMessage ?? 'stopped'); process.exit(exitCode); },
      (err: Error) => { log.error({ event: 'shutdown.error', err: err?.message }, 'shutdown failed'); process.exit(1); },
    );
  };
  process.on('SIGTERM', () => begin({ signal: 'SIGTERM' }, 0));
  process.on('SIGINT', () => begin({ signal: 'SIGINT' }, 0));
  const fault = (event: string) => (reason: unknown) => {
    log.error({ event, err: asError(reason) }, 'fault not handled by the code; draining and exiting');
    begin({ cause: event }, 1);
  };
  process.on('unhandledRejection', fault('process.unhandled_rejection'));
  process.on('uncaughtException', fault('process.uncaught_exception'));
  return { begin };
}

/** pino's err serializer wants an Error; a rejection can carry anything. */
function asError(reason: unknown): Error {
  return reason instanceof Error ? reason : new Error(`non-error rejection: ${String(reason)}`);
}
