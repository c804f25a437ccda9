import { Redis } from 'ioredis';
import t, { type Test } from 'tap';
import { systemClock } from '../gateway/clock.js';
import { redisConnectionUrl, storeFromConfig } from '../gateway/compose.js';
import { ConfigError, loadConfig, parseDuration } from '../gateway/config.js';
import { createLogger } from '../gateway/log.js';
import { createMetrics } from '../gateway/metrics.js';
import { startRedis } from './helpers/redis.js';

/** loadConfig refuses `env` with a ConfigError naming `variable`: that error, for further checks. */
function refuses(t: Test, env: Record<string, string>, variable: string): Error | undefined {
  try {
    loadConfig(env);
    t.fail(`${JSON.stringify(env)} accepted`);
    return undefined;
  } catch (err) {
    t.ok(err instanceof ConfigError, JSON.stringify(env));
    t.equal((err as ConfigError).variable, variable, JSON.stringify(env));
    return err as Error;
  }
}

t.test('embedded defaults need no configuration', async (t) => {
  const c = loadConfig({});
  t.equal(c.gatewayPort, 8080);
  t.equal(c.adminPort, 9090);
  t.equal(c.baseDomain, 'localhost');
  t.equal(c.provisioner, 'local');
  t.equal(c.redisUrl, undefined);
  t.equal(c.idleTimeoutMs, 15 * 60_000);
  t.equal(c.maxSessionMs, 12 * 3_600_000);
  t.ok(c.gatewaySecretGenerated);
  t.ok(c.headersTimeoutMs > c.keepAliveTimeoutMs, 'headersTimeout above keepAliveTimeout');
});

t.test('bad values name the variable', async (t) => {
  const rows: Array<[Record<string, string>, string]> = [
    [{ GATEWAY_PORT: 'eighty' }, 'GATEWAY_PORT'],
    [{ ADMIN_PORT: '70000' }, 'ADMIN_PORT'],
    [{ PROVISIONER: 'k8s' }, 'PROVISIONER'],
    [{ BASE_DOMAIN: 'bad domain' }, 'BASE_DOMAIN'],
    [{ REDIS_URL: 'localhost:6379' }, 'REDIS_URL'],
    [{ REDIS_URL: 'redis://127.0.0.1:1' }, 'GATEWAY_SECRET'],
    [{ BASE_DOMAIN: 'example.com' }, 'GATEWAY_SECRET'],
    [{ GATEWAY_SECRET: 'short' }, 'GATEWAY_SECRET'],
    [{ GATEWAY_SECRET: 'x'.repeat(32), GATEWAY_SECRET_ACCEPTED: 'short' }, 'GATEWAY_SECRET_ACCEPTED'],
    [{ GATEWAY_SECRET: 'x'.repeat(32), GATEWAY_SECRET_ACCEPTED: 'x'.repeat(32) }, 'GATEWAY_SECRET_ACCEPTED'],
    // Accepted beside a generated secret would mean nothing: no other replica signs with the generated one.
    [{ GATEWAY_SECRET_ACCEPTED: 'y'.repeat(32) }, 'GATEWAY_SECRET_ACCEPTED'],
    [{ IDLE_TIMEOUT: 'soon' }, 'IDLE_TIMEOUT'],
    [{ TRUSTED_PROXIES: '10.0.0.0/40' }, 'TRUSTED_PROXIES'],
    [{ REAPER: 'maybe' }, 'REAPER'],
    [{ PLATFORM_LOGIN_URL: 'not-a-url' }, 'PLATFORM_LOGIN_URL'],
  ];
  for (const [env, variable] of rows) refuses(t, env, variable);
});

t.test('GATEWAY_SECRET_ACCEPTED: optional, a second secret accepted beside GATEWAY_SECRET', async (t) => {
  t.equal(loadConfig({ GATEWAY_SECRET: 'x'.repeat(32) }).gatewaySecretAccepted, undefined, 'none by default');
  t.equal(loadConfig({ GATEWAY_SECRET: 'x'.repeat(32), GATEWAY_SECRET_ACCEPTED: 'y'.repeat(32) }).gatewaySecretAccepted, 'y'.repeat(32));
  const err = refuses(t, { GATEWAY_SECRET: 'x'.repeat(32), GATEWAY_SECRET_ACCEPTED: 'y'.repeat(31) }, 'GATEWAY_SECRET_ACCEPTED');
  t.notOk(err?.message.includes('y'.repeat(31)), 'not quoting it');
});

t.test('durations', async (t) => {
  const rows: Array<[string, number]> = [['250ms', 250], ['30s', 30_000], ['15m', 900_000], ['12h', 43_200_000], ['90', 90_000], ['1.5s', 1500], [' 30 s ', 30_000]];
  for (const [s, ms] of rows) t.equal(parseDuration('X', s), ms, s);
  t.throws(() => parseDuration('X', '5 minutes'));
});

t.test('durations: 0 only where it means something, timers within what Node can wait', async (t) => {
  // 0 turned nothing off: REDIS_COMMAND_TIMEOUT=0 failed most commands (a 1 ms deadline),
  // IDLE_TIMEOUT=0 reaped every running workspace, WS_IDLE_TIMEOUT=0 cut every WebSocket at its first
  // silence, SHUTDOWN_TIMEOUT=0 exited 1 at SIGTERM. Past 2^31-1 ms a Node timer fires after 1 ms.
  const refused: Array<[Record<string, string>, string]> = [
    ...['REDIS_COMMAND_TIMEOUT', 'SESSION_TTL', 'LOGIN_TOKEN_MAX_TTL', 'KEEPALIVE_TIMEOUT', 'HEADERS_TIMEOUT', 'REQUEST_TIMEOUT',
      'UPSTREAM_CONNECT_TIMEOUT', 'UPSTREAM_TIMEOUT', 'WS_IDLE_TIMEOUT', 'START_DEADLINE', 'IDLE_TIMEOUT', 'MAX_SESSION',
      'REAP_INTERVAL', 'ACTIVITY_FLUSH_INTERVAL', 'ACTIVITY_FALLBACK_WINDOW', 'SHUTDOWN_TIMEOUT']
      .flatMap((v): Array<[Record<string, string>, string]> => [[{ [v]: '0' }, v], [{ [v]: '0ms' }, v], [{ [v]: '0.0001s' }, v]]),
    [{ SHUTDOWN_TIMEOUT: '600h' }, 'SHUTDOWN_TIMEOUT'],
    [{ REAP_INTERVAL: '597h' }, 'REAP_INTERVAL'],
    [{ START_DEADLINE: '2147484s' }, 'START_DEADLINE'],
    [{ DRAIN_PERIOD: '600h', SHUTDOWN_TIMEOUT: '601h' }, 'DRAIN_PERIOD'],
  ];
  for (const [env, variable] of refused) refuses(t, env, variable);
  const accepted: Array<[Record<string, string>, keyof ReturnType<typeof loadConfig>, number]> = [
    [{ DRAIN_PERIOD: '0s' }, 'drainPeriodMs', 0],
    [{ ROUTE_CACHE_TTL: '0' }, 'routeCacheTtlMs', 0],
    [{ DEMO_READY_DELAY: '0ms' }, 'demoReadyDelayMs' as never, 0],
    [{ REDIS_COMMAND_TIMEOUT: '1ms' }, 'redisCommandTimeoutMs', 1],
    [{ MAX_SESSION: '720h' }, 'maxSessionMs', 720 * 3_600_000],
    [{ SESSION_TTL: '720h' }, 'sessionTtlMs', 720 * 3_600_000],
    [{ SHUTDOWN_TIMEOUT: '596h', DRAIN_PERIOD: '1h' }, 'shutdownTimeoutMs', 596 * 3_600_000],
  ];
  for (const [env, key, ms] of accepted) {
    const c = loadConfig(env);
    t.equal(key === ('demoReadyDelayMs' as never) ? c.local.demoReadyDelayMs : c[key], ms, JSON.stringify(env));
  }
});

t.test('SHUTDOWN_TIMEOUT comes after DRAIN_PERIOD and the requests\' grace', async (t) => {
  // A hard exit inside the drain exits 1 with WebSockets cut (1006, not 1001), activity unflushed and
  // leases held (the deploy allows drainSeconds up to 110 beside the default SHUTDOWN_TIMEOUT of 110 s).
  const rows: Array<[Record<string, string>, boolean]> = [
    [{}, true],
    [{ BASE_DOMAIN: 'example.com', GATEWAY_SECRET: 'x'.repeat(32), ADMIN_TOKEN: 'y'.repeat(16) }, true], // 90 s + 5 s < 110 s
    [{ DRAIN_PERIOD: '110s' }, false],
    [{ DRAIN_PERIOD: '105s' }, false],
    [{ DRAIN_PERIOD: '104s' }, true],
    [{ DRAIN_PERIOD: '3s', SHUTDOWN_TIMEOUT: '3s' }, false],
    [{ DRAIN_PERIOD: '300s', SHUTDOWN_TIMEOUT: '330s' }, true],
    [{ SHUTDOWN_TIMEOUT: '5s' }, false],
    [{ SHUTDOWN_TIMEOUT: '6s' }, true],
  ];
  for (const [env, ok] of rows) {
    if (ok) { t.doesNotThrow(() => loadConfig(env), JSON.stringify(env)); continue; }
    const err = refuses(t, env, 'SHUTDOWN_TIMEOUT');
    if (err) t.match(err.message, /DRAIN_PERIOD/, 'the message names the other variable too');
  }
});

t.test('REDIS_URL: a URL naming a host, or an error naming the variable (never quoting it)', async (t) => {
  const secret = 's3cret-redis-pass';
  const rows: Array<[string, boolean]> = [
    ['redis://10.0.0.5:6379', true],
    ['rediss://master.cache.amazonaws.com:6379', true],
    [`redis://:${secret}@10.0.0.5:6379/2`, true],
    ['redis://[::1]:6379', true],
    // Connected to localhost:6379 without a word.
    ['redis://', false],
    ['redis:///0', false],
    // Stopped the gateway with a bare "fatal: TypeError: Invalid URL".
    [`redis://:${secret}@10.0.0.5:99999`, false],
    ['redis://cache.internal:port', false],
    [`rediss://user:${secret}@`, false],
    ['localhost:6379', false],
    ['http://10.0.0.5:6379', false],
  ];
  for (const [url, ok] of rows) {
    const env = { REDIS_URL: url, GATEWAY_SECRET: 'x'.repeat(32) };
    if (ok) { t.equal(loadConfig(env).redisUrl, url); continue; }
    const err = refuses(t, env, 'REDIS_URL');
    if (err) t.notOk(err.message.includes(secret), 'the password is not quoted');
  }
});

t.test('REDIS_PASSWORD, or a password in REDIS_URL: at least 8 characters, or the logs could not hide it', async (t) => {
  const base = { REDIS_URL: 'redis://10.0.0.5:6379', GATEWAY_SECRET: 'x'.repeat(32) };
  const rows: Array<[Record<string, string>, string | true]> = [
    [{ REDIS_PASSWORD: 'a' }, 'REDIS_PASSWORD'],
    [{ REDIS_PASSWORD: 'hunter2' }, 'REDIS_PASSWORD'],
    [{ REDIS_PASSWORD: 'hunter22' }, true],
    [{ REDIS_URL: 'redis://:a@10.0.0.5:6379' }, 'REDIS_URL'],
    [{ REDIS_URL: 'redis://user:hunter2@10.0.0.5:6379' }, 'REDIS_URL'],
    // Seven characters as ioredis sends it (percent-decoded).
    [{ REDIS_URL: 'redis://:%68%75%6E%74%65%72%32@10.0.0.5:6379' }, 'REDIS_URL'],
    [{ REDIS_URL: 'redis://:hunter22@10.0.0.5:6379' }, true],
    [{ REDIS_URL: 'redis://default@10.0.0.5:6379' }, true],
  ];
  for (const [env, outcome] of rows) {
    if (outcome === true) { t.doesNotThrow(() => loadConfig({ ...base, ...env }), JSON.stringify(env)); continue; }
    const err = refuses(t, { ...base, ...env }, outcome);
    if (err) t.notOk(/hunter|:a@/.test(err.message), 'the password is not quoted');
  }
});

t.test('REDIS_PASSWORD reaches Redis as written, whatever its characters', async (t) => {
  // ioredis percent-decodes the URL's password; `%41` was sent as `A` (WRONGPASS, "Connection is
  // closed") and `%zz` stopped the gateway with "URI malformed".
  t.equal(redisConnectionUrl('redis://10.0.0.5:6379/2'), 'redis://10.0.0.5:6379/2', 'no password: the URL as it is');
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const admin = new Redis(redis.url, { lazyConnect: true });
  await admin.connect();
  t.teardown(() => admin.disconnect());
  const passwords = ['plain-password-0123', 'elasti!cache&#$^<>-token', 'per%41cent-password', 'bad%zz-escape-password', 'at@colon:slash/query?hash#', 'spa ce+plus'];
  for (const password of passwords) {
    await admin.config('SET', 'requirepass', password);
    for (const url of [redis.url, redis.url.replace('redis://', 'redis://:stale-url-password@'), redis.url.replace('redis://', 'redis://default@')]) {
      const config = loadConfig({ REDIS_URL: url, REDIS_PASSWORD: password, GATEWAY_SECRET: 'x'.repeat(32) });
      const store = await storeFromConfig(config, systemClock, createMetrics({ enabled: false, defaultMetrics: false }), createLogger('silent'))
        .catch((err: Error) => err);
      if (store instanceof Error) { t.fail(`${JSON.stringify(password)} with ${url}: ${store.message}`); continue; }
      t.equal(await store.ping(), true, `${JSON.stringify(password)} with ${url}`);
      await store.close();
    }
  }
});
