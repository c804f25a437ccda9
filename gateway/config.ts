// Configuration: read from the environment once, at the entry point, validated with errors that
// name the bad variable. Everything below receives a Config object; nothing deeper reads process.env.
import { randomBytes } from 'node:crypto';
import { isIP } from 'node:net';
import { DEFAULT_ACTIVITY_CONFIG, type ActivityConfig } from './activity/verdict.js';
import { durationMs } from './duration.js';
import { SCRUBBED_SECRET_MIN_LENGTH } from './log.js';

export type Env = Record<string, string | undefined>;

export class ConfigError extends Error {
  /** The code a failed start logs (compose.ts exitOnStartupFailure), beside the variable at fault. */
  readonly code = 'CONFIG_INVALID';
  constructor(readonly variable: string, message: string) {
    super(`${variable}: ${message}`);
    this.name = 'ConfigError';
  }
}

export interface Config {
  gatewayPort: number;
  adminPort: number;
  /** Address both listeners bind to. */
  listenHost: string;
  baseDomain: string;
  /** Scheme browsers use to reach workspace hosts (links, Secure cookies). */
  publicScheme: 'http' | 'https';
  /** Port in sign-in links (PUBLIC_PORT); in development the listening port is used. */
  publicPort?: number;
  /** BASE_DOMAIN is localhost: generated secrets allowed, links carry the listening port. */
  development: boolean;
  redisUrl?: string;
  redisPassword?: string;
  redisPrefix: string;
  redisCommandTimeoutMs: number;
  provisioner: 'local' | 'ecs';
  logLevel: string;
  /** Key material for sign-in tokens and session cookies. */
  gatewaySecret: string;
  gatewaySecretGenerated: boolean;
  /** Another secret whose sessions, sign-in links and starts are accepted, never used to sign or start (a rotation). */
  gatewaySecretAccepted: string | undefined;
  adminToken: string;
  adminTokenGenerated: boolean;
  platformLoginUrl?: string;
  sessionTtlMs: number;
  loginTokenMaxTtlMs: number;
  /** Peers whose X-Forwarded-For is believed (the load balancer). */
  trustedProxies: Cidr[];
  keepAliveTimeoutMs: number;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  maxHeaderSize: number;
  upstreamConnectTimeoutMs: number;
  upstreamTimeoutMs: number;
  upstreamMaxSockets: number;
  /** A WebSocket with no traffic for this long is pinged; after twice this, closed (issue 8). */
  wsIdleTimeoutMs: number;
  startDeadlineMs: number;
  routeCacheTtlMs: number;
  idleTimeoutMs: number;
  maxSessionMs: number;
  reapIntervalMs: number;
  /** Run the reaper inside this gateway (with a leader lease). */
  reaperEnabled: boolean;
  /** Off only to measure what metrics cost (bench/, issue 6). */
  metricsEnabled: boolean;
  /** Off only to measure what activity bookkeeping costs (bench/, issue 7 scenario 6). */
  activityTracking: boolean;
  /** The WebSocket activity signal's thresholds (gateway/activity/README.md). */
  activity: ActivityConfig;
  activityFlushIntervalMs: number;
  drainPeriodMs: number;
  shutdownTimeoutMs: number;
  rateLimits: { signInPerMinute: number; startsPerMinute: number };
  local: { workspace: 'auto' | 'demo' | 'code-server'; dataDir: string; codeServerBin: string; demoReadyDelayMs: number };
  /** The raw environment, handed to provisioner config parsers (ECS) by the entry point only. */
  env: Env;
}

export interface Cidr { address: string; prefix: number; family: 4 | 6 }

/** Node's timers take at most this; a longer delay fires after 1 ms instead (TimeoutOverflowWarning). */
export const MAX_TIMER_MS = 2 ** 31 - 1;
/** After SIGTERM, in-flight requests get this long once the WebSockets are closed (app.ts close()). */
export const REQUEST_GRACE_MS = 5000;

/** `250ms`, `30s`, `15m`, `12h`, or plain seconds (gateway/duration.ts); anything else names the variable. */
export function parseDuration(variable: string, value: string): number {
  const ms = durationMs(value);
  if (ms === undefined) throw new ConfigError(variable, `expected a duration like 30s, 15m or 12h, got "${value}"`);
  return ms;
}

export function parseCidr(variable: string, value: string): Cidr {
  const [address, bits] = value.trim().split('/');
  const family = isIP(address);
  if (family === 0) throw new ConfigError(variable, `"${value}" is not an IP address or CIDR`);
  const max = family === 4 ? 32 : 128;
  const prefix = bits === undefined ? max : Number(bits);
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > max) throw new ConfigError(variable, `bad prefix in "${value}"`);
  return { address, prefix, family: family as 4 | 6 };
}

/**
 * A secret the logs must hide has to be long enough to be scrubbed without mangling ordinary text
 * (log.ts); GATEWAY_SECRET and ADMIN_TOKEN are longer anyway. A Redis password this short would also
 * be guessed in a few thousand AUTH tries (ElastiCache asks for 16 characters).
 */
const tooShort = (what: string) => `${what} must be at least ${SCRUBBED_SECRET_MIN_LENGTH} characters (a shorter one cannot be kept out of the logs)`;

/**
 * REDIS_URL as ioredis will read it. A URL with no host (`redis://`, a template whose host came out
 * empty) would connect to localhost:6379 without a word, and one `new URL()` refuses (a port out of
 * range) stopped the gateway with a bare "Invalid URL". The value is not quoted: it may hold a password.
 */
export function checkRedisUrl(value: string): void {
  const expected = 'expected redis://host:port or rediss://host:port';
  let url: URL;
  try { url = new URL(value); } catch { throw new ConfigError('REDIS_URL', `not a URL; ${expected}`); }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') throw new ConfigError('REDIS_URL', expected);
  if (!url.hostname) throw new ConfigError('REDIS_URL', `names no host; ${expected}`);
  const { sent } = redisUrlPassword(url);
  if (sent !== '' && sent.length < SCRUBBED_SECRET_MIN_LENGTH) throw new ConfigError('REDIS_URL', tooShort('its password'));
}

/**
 * The password ioredis sends for REDIS_URL, as written and as sent (percent-decoded): the userinfo's,
 * or, with no userinfo, a `password` query parameter, since ioredis takes the query's parameters as
 * options (ioredis utils parseURL). Read from the userinfo alone, a `?password=` escaped both the
 * length check and the logs' scrubbing.
 */
export function redisUrlPassword(url: URL): { written: string; sent: string } {
  if (url.username !== '' || url.password !== '') {
    let sent = url.password;
    try { sent = decodeURIComponent(sent); } catch { /* sent as written */ }
    return { written: url.password, sent };
  }
  return { written: /[?&]password=([^&#]*)/.exec(url.search)?.[1] ?? '', sent: url.searchParams.get('password') ?? '' };
}

export function loadConfig(env: Env): Config {
  const str = (name: string, fallback?: string) => {
    const v = env[name];
    return v === undefined || v === '' ? fallback : v;
  };
  const int = (name: string, fallback: number, min = 0, max = Number.MAX_SAFE_INTEGER) => {
    const v = str(name);
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new ConfigError(name, `expected an integer from ${min} to ${max}, got "${v}"`);
    return n;
  };
  const port = (name: string, fallback: number) => int(name, fallback, 0, 65535);
  // A duration of 0 does not mean "off" anywhere below: a 0 command timeout fails every Redis command
  // not answered within the same millisecond, IDLE_TIMEOUT=0 reaps every running workspace,
  // WS_IDLE_TIMEOUT=0 cuts every WebSocket at its first silence, SHUTDOWN_TIMEOUT=0 exits 1 at once.
  // So only the few where 0 has a meaning (`zero`) take it. Those that arm a timer (`timer`) are
  // bounded by what a timer can wait: beyond it Node fires after 1 ms.
  const dur = (name: string, fallback: string, o: { zero?: boolean; timer?: boolean } = {}) => {
    const ms = parseDuration(name, str(name, fallback)!);
    if (ms === 0 && !o.zero) throw new ConfigError(name, 'must be above 0 (0 does not turn it off)');
    if (o.timer && ms > MAX_TIMER_MS) throw new ConfigError(name, `must be at most ${Math.floor(MAX_TIMER_MS / 3_600_000)}h`);
    return ms;
  };
  const timer = { timer: true };
  const oneOf = <T extends string>(name: string, allowed: readonly T[], fallback: T): T => {
    const v = str(name, fallback)!;
    if (!(allowed as readonly string[]).includes(v)) throw new ConfigError(name, `expected one of ${allowed.join(', ')}, got "${v}"`);
    return v as T;
  };
  const bool = (name: string, fallback: boolean) => {
    const v = str(name);
    if (v === undefined) return fallback;
    if (/^(1|true|yes|on)$/i.test(v)) return true;
    if (/^(0|false|no|off)$/i.test(v)) return false;
    throw new ConfigError(name, `expected true or false, got "${v}"`);
  };

  const baseDomain = str('BASE_DOMAIN', 'localhost')!.toLowerCase().replace(/\.$/, '');
  if (!/^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/.test(baseDomain)) {
    throw new ConfigError('BASE_DOMAIN', `"${baseDomain}" is not a domain name`);
  }
  const development = baseDomain === 'localhost' || baseDomain.endsWith('.localhost');
  const publicScheme = oneOf('PUBLIC_SCHEME', ['http', 'https'] as const, development ? 'http' : 'https');
  const gatewayPort = port('GATEWAY_PORT', 8080);
  const redisUrl = str('REDIS_URL');
  if (redisUrl !== undefined) checkRedisUrl(redisUrl);

  // Several replicas must share the secret; a generated one is only for a single development replica.
  let gatewaySecret = str('GATEWAY_SECRET');
  const gatewaySecretGenerated = gatewaySecret === undefined;
  if (gatewaySecret === undefined) {
    if (redisUrl !== undefined || !development) throw new ConfigError('GATEWAY_SECRET', 'required when REDIS_URL is set or BASE_DOMAIN is not localhost (replicas must share it)');
    gatewaySecret = randomBytes(32).toString('base64url');
  } else if (gatewaySecret.length < 32) {
    throw new ConfigError('GATEWAY_SECRET', 'must be at least 32 characters');
  }
  // A rotation's other secret (README "Rotating GATEWAY_SECRET"): what it signed and started is
  // accepted, nothing is signed or started with it. Beside a generated secret nobody else signs with.
  const gatewaySecretAccepted = str('GATEWAY_SECRET_ACCEPTED');
  if (gatewaySecretAccepted !== undefined) {
    if (gatewaySecretGenerated) throw new ConfigError('GATEWAY_SECRET_ACCEPTED', 'needs GATEWAY_SECRET set: it is accepted beside that one');
    if (gatewaySecretAccepted.length < 32) throw new ConfigError('GATEWAY_SECRET_ACCEPTED', 'must be at least 32 characters');
    if (gatewaySecretAccepted === gatewaySecret) throw new ConfigError('GATEWAY_SECRET_ACCEPTED', 'must differ from GATEWAY_SECRET');
  }
  let adminToken = str('ADMIN_TOKEN');
  const adminTokenGenerated = adminToken === undefined;
  if (adminToken === undefined) {
    if (!development) throw new ConfigError('ADMIN_TOKEN', 'required when BASE_DOMAIN is not localhost');
    adminToken = randomBytes(24).toString('base64url');
  } else if (adminToken.length < 16) {
    throw new ConfigError('ADMIN_TOKEN', 'must be at least 16 characters');
  }
  const redisPassword = str('REDIS_PASSWORD');
  if (redisPassword !== undefined && redisPassword.length < SCRUBBED_SECRET_MIN_LENGTH) throw new ConfigError('REDIS_PASSWORD', tooShort('it'));
  const platformLoginUrl = str('PLATFORM_LOGIN_URL');
  if (platformLoginUrl !== undefined && !/^https?:\/\//.test(platformLoginUrl)) throw new ConfigError('PLATFORM_LOGIN_URL', 'expected an absolute http(s) URL');

  const keepAliveTimeoutMs = dur('KEEPALIVE_TIMEOUT', '65s', timer);
  // The hard exit must come after the drain and the requests' grace (app.ts close()): else every
  // SIGTERM ends in exit 1 with WebSockets cut (1006, not 1001), activity unflushed, leases held.
  const drainPeriodMs = dur('DRAIN_PERIOD', development ? '0s' : '90s', { zero: true, timer: true });
  const shutdownTimeoutMs = dur('SHUTDOWN_TIMEOUT', '110s', timer);
  if (shutdownTimeoutMs <= drainPeriodMs + REQUEST_GRACE_MS) {
    throw new ConfigError('SHUTDOWN_TIMEOUT', `must be above DRAIN_PERIOD plus ${REQUEST_GRACE_MS / 1000} s for in-flight requests (${(drainPeriodMs + REQUEST_GRACE_MS) / 1000} s), got ${shutdownTimeoutMs / 1000} s`);
  }
  return {
    gatewayPort,
    adminPort: port('ADMIN_PORT', 9090),
    listenHost: str('LISTEN_HOST', development ? '127.0.0.1' : '0.0.0.0')!,
    baseDomain,
    publicScheme,
    publicPort: str('PUBLIC_PORT') !== undefined ? port('PUBLIC_PORT', gatewayPort) : undefined,
    development,
    redisUrl,
    redisPassword,
    redisPrefix: str('REDIS_PREFIX', 'wsgw:')!,
    redisCommandTimeoutMs: dur('REDIS_COMMAND_TIMEOUT', '500ms', timer),
    provisioner: oneOf('PROVISIONER', ['local', 'ecs'] as const, 'local'),
    logLevel: oneOf('LOG_LEVEL', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const, 'info'),
    gatewaySecret,
    gatewaySecretGenerated,
    gatewaySecretAccepted,
    adminToken,
    adminTokenGenerated,
    platformLoginUrl,
    sessionTtlMs: dur('SESSION_TTL', '12h'),
    loginTokenMaxTtlMs: dur('LOGIN_TOKEN_MAX_TTL', '5m'),
    trustedProxies: (str('TRUSTED_PROXIES', '')!).split(',').filter((s) => s.trim()).map((s) => parseCidr('TRUSTED_PROXIES', s)),
    keepAliveTimeoutMs,
    // Above keep-alive (issue 3; Node's http docs): a reused idle connection must reach its keep-alive
    // end before a headers timeout can fire on it.
    headersTimeoutMs: dur('HEADERS_TIMEOUT', `${keepAliveTimeoutMs + 1000}ms`, timer),
    requestTimeoutMs: dur('REQUEST_TIMEOUT', '300s', timer),
    maxHeaderSize: int('MAX_HEADER_SIZE', 16_384, 1024, 1_048_576),
    upstreamConnectTimeoutMs: dur('UPSTREAM_CONNECT_TIMEOUT', '5s', timer),
    upstreamTimeoutMs: dur('UPSTREAM_TIMEOUT', '120s', timer),
    upstreamMaxSockets: int('UPSTREAM_MAX_SOCKETS', 64, 1, 10_000),
    wsIdleTimeoutMs: dur('WS_IDLE_TIMEOUT', '30s', timer),
    startDeadlineMs: dur('START_DEADLINE', '5m', timer),
    routeCacheTtlMs: dur('ROUTE_CACHE_TTL', '30s', { zero: true }),
    idleTimeoutMs: dur('IDLE_TIMEOUT', '15m'),
    maxSessionMs: dur('MAX_SESSION', '12h'),
    reapIntervalMs: dur('REAP_INTERVAL', '30s', timer),
    reaperEnabled: bool('REAPER', true),
    metricsEnabled: bool('METRICS', true),
    activityTracking: bool('ACTIVITY_TRACKING', true),
    activity: {
      ...DEFAULT_ACTIVITY_CONFIG,
      decode: bool('ACTIVITY_DECODE', DEFAULT_ACTIVITY_CONFIG.decode),
      editorNeedsActiveWindow: bool('ACTIVITY_EDITOR_NEEDS_ACTIVE_WINDOW', DEFAULT_ACTIVITY_CONFIG.editorNeedsActiveWindow),
      clientWindowBits: int('ACTIVITY_CLIENT_WINDOW_BITS', DEFAULT_ACTIVITY_CONFIG.clientWindowBits, 9, 15),
      maxDecodeWindowBits: int('ACTIVITY_MAX_DECODE_WINDOW_BITS', DEFAULT_ACTIVITY_CONFIG.maxDecodeWindowBits, 9, 15),
      fallbackMinFrames: int('ACTIVITY_FALLBACK_MIN_FRAMES', DEFAULT_ACTIVITY_CONFIG.fallbackMinFrames, 1),
      fallbackMinPayloadBytes: int('ACTIVITY_FALLBACK_MIN_PAYLOAD_BYTES', DEFAULT_ACTIVITY_CONFIG.fallbackMinPayloadBytes, 0),
      fallbackWindowMs: dur('ACTIVITY_FALLBACK_WINDOW', `${DEFAULT_ACTIVITY_CONFIG.fallbackWindowMs}ms`),
      reportEveryMs: dur('ACTIVITY_REPORT_EVERY', `${DEFAULT_ACTIVITY_CONFIG.reportEveryMs}ms`, { zero: true }),
    },
    activityFlushIntervalMs: dur('ACTIVITY_FLUSH_INTERVAL', '5s', timer),
    drainPeriodMs,
    shutdownTimeoutMs,
    rateLimits: {
      signInPerMinute: int('RATE_SIGNIN_PER_MINUTE', 30, 1),
      startsPerMinute: int('RATE_STARTS_PER_MINUTE', 6, 1),
    },
    local: {
      workspace: oneOf('LOCAL_WORKSPACE', ['auto', 'demo', 'code-server'] as const, 'auto'),
      dataDir: str('LOCAL_DATA_DIR', '.data/workspaces')!,
      codeServerBin: str('CODE_SERVER_BIN', 'code-server')!,
      demoReadyDelayMs: dur('DEMO_READY_DELAY', '1500ms', { zero: true, timer: true }),
    },
    env,
  };
}
