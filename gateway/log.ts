// Structured JSON logs (pino, the logger fastify uses, so admin and proxy lines look alike).
// Secrets never reach a log line: the redact list covers the headers and fields that carry them.
import { pino, type Logger as PinoLogger } from 'pino';

export type Logger = Pick<PinoLogger, 'info' | 'warn' | 'error' | 'debug' | 'child' | 'level'>;

export const REDACT = [
  'req.headers.cookie', 'req.headers.authorization', 'headers.cookie', 'headers.authorization',
  'token', 'secret', 'password', '*.token', '*.secret', '*.password', 'res.headers["set-cookie"]',
];

export function createLogger(level: string, destination?: NodeJS.WritableStream): PinoLogger {
  return pino({ level, redact: { paths: REDACT, censor: '[redacted]' }, base: { service: 'workspace-gateway' } }, destination as never);
}
