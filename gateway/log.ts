// Structured JSON logs (pino, the logger fastify uses, so admin and proxy lines look alike).
// Secrets never reach a log line (issue 6), in two layers: the redact list removes the fields that
// carry them, and a last pass over each finished line scrubs anything that still looks like a
// credential (a JWT, a `token=` query parameter, also percent-encoded inside another URL, the session
// cookie, or a configured secret), so a token quoted inside an error message or URL is caught too.
import { pino, type Logger as PinoLogger } from 'pino';

export type Logger = Pick<PinoLogger, 'info' | 'warn' | 'error' | 'debug' | 'child' | 'level'>;

export const REDACT = [
  'req.headers.cookie', 'req.headers.authorization', 'req.headers["set-cookie"]',
  'headers.cookie', 'headers.authorization', 'headers["set-cookie"]', 'res.headers["set-cookie"]',
  'cookie', 'authorization', 'token', 'secret', 'password', 'gatewaySecret', 'gatewaySecretAccepted', 'adminToken', 'redisPassword',
  '*.cookie', '*.authorization', '*.token', '*.secret', '*.password', '*.gatewaySecret', '*.gatewaySecretAccepted', '*.adminToken', '*.redisPassword',
];

export const CENSOR = '[redacted]';

export interface LoggerOptions {
  /** Configured secrets (GATEWAY_SECRET, ADMIN_TOKEN, Redis password): never printed, wherever they appear. */
  secrets?: ReadonlyArray<string | undefined>;
}

/**
 * The shortest configured secret the last pass scrubs wherever it appears. A shorter string cannot be
 * told from ordinary text: a 1-2 character password is inside most words, and censoring each of its
 * occurrences would turn every line into noise (and spell the password out by where the gaps are).
 * So config refuses shorter secrets rather than have one the logs cannot hide (gateway/config.ts).
 */
export const SCRUBBED_SECRET_MIN_LENGTH = 8;

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * A `token=` (or the like) in a URL that is itself a query value (`return_to`, `next`): its `?`, `&` and
 * `=` are percent-encoded once (`%3F`, `%26`, `%3D`) or more (`%253F`, a `return_to` inside another),
 * and a token that is not a JWT went through. The `=` is encoded as deep as the separator before it.
 */
const ENCODED_CREDENTIAL = /(%((?:25)*)(?:3F|26)(?:token|access_token|password|secret)%\2(?:3D))([^&#"\s\\]+)/gi;

/**
 * The value runs to the next `&` or `#` of its own level or an outer one (RFC 3986 3.4); one encoded
 * deeper belongs to the value itself, and is censored with it.
 */
function censorEncodedCredential(_match: string, head: string, level: string, value: string): string {
  const end = new RegExp(`%(?:25){0,${level.length / 2}}(?:26|23)`, 'i').exec(value);
  return `${head}${CENSOR}${end ? value.slice(end.index) : ''}`;
}

/**
 * Builds the last-pass scrubber for a finished JSON line. Kept pure so it is table-tested.
 * JWTs (login tokens, session cookies) are three base64url parts starting with `eyJ` (RFC 7519 §3).
 */
export function createScrubber(secrets: ReadonlyArray<string | undefined> = []): (line: string) => string {
  const literal = secrets
    .filter((s): s is string => typeof s === 'string' && s.length >= SCRUBBED_SECRET_MIN_LENGTH)
    // As it appears inside a JSON string (escaped) and raw.
    .flatMap((s) => [JSON.stringify(s).slice(1, -1), s])
    .sort((a, b) => b.length - a.length)
    .map(escapeRe);
  const patterns: Array<[RegExp, string | ((match: string, ...groups: string[]) => string)]> = [
    [/eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+/g, CENSOR],
    [/([?&](?:token|access_token|password|secret)=)[^&"\s\\]+/gi, `$1${CENSOR}`],
    [ENCODED_CREDENTIAL, censorEncodedCredential as (match: string, ...groups: string[]) => string],
    // Either session cookie name (auth.ts): the plain one is the tail of the `__Host-` one.
    [/(wsgw-session=)[^;"\s\\]+/g, `$1${CENSOR}`],
    [/((?:authorization|bearer)["':= ]+(?:Bearer )?)[A-Za-z0-9._~+/=-]{8,}/gi, `$1${CENSOR}`],
  ];
  if (literal.length) patterns.push([new RegExp(literal.join('|'), 'g'), CENSOR]);
  return (line) => {
    let out = line;
    for (const [re, to] of patterns) out = typeof to === 'string' ? out.replace(re, to) : out.replace(re, to);
    return out;
  };
}

export function createLogger(level: string, destination?: NodeJS.WritableStream, opts: LoggerOptions = {}): PinoLogger {
  const scrub = createScrubber(opts.secrets);
  return pino({
    level,
    redact: { paths: REDACT, censor: CENSOR },
    base: { service: 'workspace-gateway' },
    hooks: { streamWrite: scrub },
  }, destination as never);
}

/**
 * Node prints a process warning (a deprecation; the AWS SDK's notice, on Node 20, that its releases
 * after early January 2027 need Node 22) as several plain-text lines on stderr, and a log pipeline such
 * as CloudWatch Logs takes each line as an event of its own. From this call on, each warning is one JSON
 * line at warn level instead, scrubbed like every other. Returns what puts Node's printer back.
 */
export function logProcessWarnings(log: Logger): () => void {
  const printers = process.listeners('warning');
  for (const print of printers) process.off('warning', print);
  const onWarning = (w: Error & { code?: string }) => {
    log.warn({ event: 'process.warning', name: w.name, code: w.code, message: w.message }, 'process warning');
  };
  process.on('warning', onWarning);
  return () => {
    process.off('warning', onWarning);
    for (const print of printers) process.on('warning', print);
  };
}
