import t from 'tap';
import { ConfigError, loadConfig, parseDuration } from '../gateway/config.js';

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
    [{ IDLE_TIMEOUT: 'soon' }, 'IDLE_TIMEOUT'],
    [{ TRUSTED_PROXIES: '10.0.0.0/40' }, 'TRUSTED_PROXIES'],
    [{ REAPER: 'maybe' }, 'REAPER'],
    [{ PLATFORM_LOGIN_URL: 'not-a-url' }, 'PLATFORM_LOGIN_URL'],
  ];
  for (const [env, variable] of rows) {
    try {
      loadConfig(env);
      t.fail(`${JSON.stringify(env)} accepted`);
    } catch (err) {
      t.ok(err instanceof ConfigError, JSON.stringify(env));
      t.equal((err as ConfigError).variable, variable);
    }
  }
});

t.test('durations', async (t) => {
  const rows: Array<[string, number]> = [['250ms', 250], ['30s', 30_000], ['15m', 900_000], ['12h', 43_200_000], ['90', 90_000], ['1.5s', 1500], [' 30 s ', 30_000]];
  for (const [s, ms] of rows) t.equal(parseDuration('X', s), ms, s);
  t.throws(() => parseDuration('X', '5 minutes'));
});
