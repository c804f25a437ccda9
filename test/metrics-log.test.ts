// Pure parts of issue 6, table-driven: label values stay in their bounded sets, recording never
// throws, the scrape-time store probe has a deadline, and the log scrubber removes credentials.
import { Writable } from 'node:stream';
import { Histogram, Registry } from 'prom-client';
import t from 'tap';
import { loggerFromConfig, startupFailureFields, startupLogger } from '../gateway/compose.js';
import { GatewayError } from '../gateway/errors.js';
import { StartFailure } from '../provisioner/contract.js';
import { ConfigError, loadConfig } from '../gateway/config.js';
import { CENSOR, createLogger, createScrubber, logProcessWarnings } from '../gateway/log.js';
import { createMetrics, statusClass } from '../gateway/metrics.js';
import { createRedisStore } from '../gateway/store/redis.js';
import { until } from './helpers/gateway.js';
import { startRedis } from './helpers/redis.js';

const labelValues = async (m: ReturnType<typeof createMetrics>, name: string, label: string) =>
  ((await m.registry.getSingleMetric(name)!.get()).values).map((v) => String((v.labels as Record<string, unknown>)[label]));

t.test('status classes', async (t) => {
  for (const [status, cls] of [[101, '1xx'], [200, '2xx'], [304, '3xx'], [404, '4xx'], [502, '5xx'], [599, '5xx'], [0, '1xx'], [999, '5xx']] as const) {
    t.equal(statusClass(status), cls, String(status));
  }
});

t.test('unknown label values collapse into "other"', async (t) => {
  const m = createMetrics({ enabled: true, defaultMetrics: false });
  const cases: Array<[record: () => void, metric: string, label: string, expected: string]> = [
    [() => m.awsCall('RunTask', 'throttled'), 'wsgw_aws_calls_total', 'operation', 'RunTask'],
    [() => m.awsCall('ws-abc123', 'ok'), 'wsgw_aws_calls_total', 'operation', 'other'],
    [() => m.awsCall('StopTask', 'weird'), 'wsgw_aws_calls_total', 'outcome', 'other'],
    [() => m.rejectedRequest('/some/path'), 'wsgw_rejected_requests_total', 'code', 'other'],
    [() => m.rejectedRequest('STORE_UNAVAILABLE'), 'wsgw_rejected_requests_total', 'code', 'STORE_UNAVAILABLE'],
    [() => m.signInFailure('10.0.0.1'), 'wsgw_signin_failures_total', 'reason', 'other'],
    [() => m.reaperStop('student-42'), 'wsgw_reaper_stops_total', 'reason', 'other'],
    [() => m.stage('ws-1', 1), 'wsgw_start_stage_duration_seconds', 'stage', 'other'],
    [() => m.coldStart('failed', undefined, { code: 'SOMETHING', stage: 'pending' }), 'wsgw_start_failures_total', 'code', 'other'],
    [() => m.upstreamError('ECONNRESET'), 'wsgw_upstream_errors_total', 'code', 'other'],
  ];
  for (const [record, metric, label, expected] of cases) {
    record();
    t.ok((await labelValues(m, metric, label)).includes(expected), `${metric}{${label}="${expected}"}`);
  }
  m.stage('ready', 0);
  t.notOk((await labelValues(m, 'wsgw_start_stage_duration_seconds', 'stage')).includes('ready'), '"ready" is not a stage with a duration');
});

t.test('recording never throws, even after close or with bad numbers', async (t) => {
  const m = createMetrics({ enabled: true, defaultMetrics: false });
  m.close();
  t.doesNotThrow(() => { m.proxied('web', 200); m.warmLatency(Number.NaN); m.stage('queued', -1); m.queueDepth(Infinity); m.wsClosed(); });
  const off = createMetrics({ enabled: false, defaultMetrics: true });
  off.proxied('web', 200);
  t.equal((await off.registry.getSingleMetric('wsgw_proxy_requests_total')!.get()).values.length, 0, 'disabled: nothing recorded');
});

t.test('the warm latency histogram reads as prom-client exposes its own histograms', async (t) => {
  // It counts in a typed array (bench/instructions.ts); the exposition must not change for
  // Prometheus, the recording rules or the dashboard.
  const m = createMetrics({ enabled: true, defaultMetrics: false });
  const reference = new Registry();
  const name = 'wsgw_proxy_request_duration_seconds';
  const h = new Histogram({ name, help: (await m.registry.getSingleMetric(name)!.get()).help, buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers: [reference] });
  for (const v of [0.00005, 0.0001, 0.0003, 0.002, 0.7, 11, 3, 0.0001]) { m.warmLatency(v); h.observe(v); }
  m.warmLatency(Number.NaN);
  const ours = (await m.registry.metrics()).split('\n\n').find((block) => block.includes(`# TYPE ${name} histogram`));
  t.equal(ours?.trim(), (await reference.metrics()).trim(), 'same lines, in the same order; NaN not counted');
  m.registry.resetMetrics();
  t.match(await m.registry.metrics(), new RegExp(`${name}_count 0\\n`), 'reset with the registry');
});

t.test('store probe at scrape time: up, down, hung (bounded)', async (t) => {
  const cases: Array<[name: string, ping: () => Promise<boolean>, up: number]> = [
    ['answers', async () => true, 1],
    ['refuses', async () => { throw new Error('ECONNREFUSED'); }, 0],
    ['says no', async () => false, 0],
    ['hangs', () => new Promise<boolean>(() => undefined), 0],
  ];
  for (const [name, ping, up] of cases) {
    const m = createMetrics({ enabled: true, defaultMetrics: false });
    m.watchStore({ ping, countByState: async () => ({ stopped: 3, starting: 1, running: 7, stopping: 0, failed: 2 }) }, 50);
    const text = await m.registry.metrics();
    t.match(text, new RegExp(`^wsgw_store_up ${up}$`, 'm'), name);
    t.match(text, /^wsgw_workspaces\{state="running"\} 7$/m, `${name}: running count read`);
    t.match(text, /^wsgw_workspaces\{state="failed"\} 2$/m, `${name}: every state counted`);
  }
  const m = createMetrics({ enabled: true, defaultMetrics: false });
  m.watchStore({ ping: async () => true, countByState: () => new Promise<never>(() => undefined) }, 50);
  t.match(await m.registry.metrics(), /^wsgw_scrape_collect_errors_total 1$/m, 'a count that does not come is an error, not a hung scrape');
});

t.test('store_up follows a real Redis: up, hung, gone, back', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const store = await createRedisStore({ url: redis.url, prefix: 'obs:', commandTimeoutMs: 200 });
  t.teardown(() => store.close());
  const m = createMetrics({ enabled: true, defaultMetrics: false });
  m.watchStore(store, 300);
  const up = async () => Number(/^wsgw_store_up (\d)$/m.exec(await m.registry.metrics())?.[1]);
  t.equal(await up(), 1, 'answering');
  redis.pause();
  t.equal(await up(), 0, 'paused (SIGSTOP): the scrape still returns, with 0');
  redis.resume();
  t.equal(await until(async () => (await up()) === 1, 10_000, 50), true, 'resumed');
  await redis.kill();
  t.equal(await up(), 0, 'killed');
  await redis.restart();
  t.equal(await until(async () => (await up()) === 1, 10_000, 50), true, 'restarted: up again once the client reconnects');
});

t.test('scrubber', async (t) => {
  const jwt = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkZW1vIn0.c2lnbmF0dXJlLXBhcnQ';
  const scrub = createScrubber(['my-gateway-secret-value', 'short', undefined, 'quo"te-secret-value']);
  const cases: Array<[input: string, mustNotContain: string]> = [
    [`{"msg":"bad token ${jwt}"}`, jwt],
    ['{"url":"/__gateway/login?next=/&token=abc.def.ghi"}', 'abc.def.ghi'],
    ['{"cookie":"__Host-wsgw-session=opaque-value-1234; other=1"}', 'opaque-value-1234'],
    ['{"cookie":"a=1; wsgw-session=plain-value-5678"}', 'plain-value-5678'],
    ['{"h":"authorization: Bearer admintoken-abcdef"}', 'admintoken-abcdef'],
    ['{"err":"config my-gateway-secret-value leaked"}', 'my-gateway-secret-value'],
    ['{"err":"quo\\"te-secret-value"}', 'te-secret-value'],
  ];
  for (const [input, secret] of cases) {
    const out = scrub(input);
    t.notOk(out.includes(secret), input);
    t.ok(out.includes(CENSOR), `${input}: marked`);
  }
  t.equal(scrub('{"msg":"short and sweet","workspaceId":"demo"}'), '{"msg":"short and sweet","workspaceId":"demo"}', 'short secrets and ordinary text are left alone');
});

t.test('scrubber: a token= inside another URL, percent-encoded once or twice', async (t) => {
  // A platform link quoted in `return_to` or `next` carries its own `token=`, encoded; only a JWT was
  // caught there, so an opaque token passed through.
  const scrub = createScrubber();
  const cases: Array<[input: string, mustNotContain: string, keeps: string]> = [
    ['{"url":"/?return_to=https%3A%2F%2Flms.example%2Fcb%3Ftoken%3Dopaque-abc123%26next%3D%2Fhome"}', 'opaque-abc123', '%26next%3D%2Fhome'],
    ['{"url":"/?next=%2Fcb%3Fx%3D1%26token%3Dopaque-abc123"}', 'opaque-abc123', 'x%3D1'],
    ['{"url":"/?next=%2fcb%3ftoken%3dopaque-abc123%26y%3d2"}', 'opaque-abc123', '%26y%3d2'],
    ['{"url":"/?next=%2Fcb%3Faccess_token%3Dopaque-abc123"}', 'opaque-abc123', '%2Fcb%3Faccess_token%3D'],
    ['{"url":"/?next=%2Fcb%3Fpassword%3Dopaque-abc123"}', 'opaque-abc123', 'next='],
    // Encoded twice: a return_to inside a return_to.
    ['{"url":"/?r=https%3A%2F%2Fa%2F%3Fr%3Dhttps%253A%252F%252Fb%252F%253Ftoken%253Dopaque-abc123%2526z%253D1"}', 'opaque-abc123', '%2526z%253D1'],
    ['{"url":"/?return_to=https%3A%2F%2Flms.example%2Fcb%3Ftoken%3Dopaque%2Babc%2F123"}', 'opaque%2Babc%2F123', 'lms.example'],
    ['{"url":"/__gateway/login?token=plain-opaque&next=/"}', 'plain-opaque', '&next=/'],
  ];
  for (const [input, secret, keeps] of cases) {
    const out = scrub(input);
    t.notOk(out.includes(secret), `${input}: the token is gone`);
    t.ok(out.includes(CENSOR), 'marked');
    t.ok(out.includes(keeps), `the rest of the URL is kept: ${out}`);
  }
  const ordinary = ['{"url":"/?next=%2Fdocs%2Ftokens%3Dlist"}', '{"msg":"mytoken%3Dvalue is a name"}', '{"url":"/?q=token%3D"}'];
  for (const line of ordinary) t.equal(scrub(line), line, `left alone: ${line}`);
});

t.test('logger: redacted fields and scrubbed lines', async (t) => {
  let text = '';
  const sink = new Writable({ write(c, _e, cb) { text += c.toString(); cb(); } });
  const log = createLogger('info', sink, { secrets: ['the-admin-token-value'] });
  log.info({ req: { headers: { cookie: 'a=b', authorization: 'Bearer x' } }, token: 't0k3n', config: { adminToken: 'the-admin-token-value' } }, 'hello');
  log.warn({ err: new Error('upstream said the-admin-token-value') }, 'oops');
  const [first, second] = text.trim().split('\n').map((l) => JSON.parse(l) as Record<string, any>);
  t.equal(first.req.headers.cookie, CENSOR);
  t.equal(first.req.headers.authorization, CENSOR);
  t.equal(first.token, CENSOR);
  t.equal(first.config.adminToken, CENSOR);
  t.notOk(text.includes('the-admin-token-value'));
  t.match(second.err.message, /upstream said/);
});

t.test("the entry points' logger scrubs the configured secrets (the reaper's did not)", async (t) => {
  let text = '';
  const sink = new Writable({ write(c, _e, cb) { text += c.toString(); cb(); } });
  const secrets = { GATEWAY_SECRET: 'gateway-secret-0123456789abcdef0123456789', ADMIN_TOKEN: 'admin-token-0123456789', REDIS_PASSWORD: 'redis-password-0123' };
  const log = loggerFromConfig(loadConfig(secrets), sink);
  log.error({ err: new Error(`echoed back: ${secrets.GATEWAY_SECRET} ${secrets.ADMIN_TOKEN} redis-password-0123`) }, 'an upstream quoted us');
  for (const secret of [secrets.GATEWAY_SECRET, secrets.ADMIN_TOKEN, 'redis-password-0123']) t.notOk(text.includes(secret), secret);
  t.ok(text.includes(CENSOR));

  // The accepted secret of a rotation opens sessions as well as the current one.
  text = '';
  const accepted = 'accepted-secret-0123456789abcdef0123456789';
  loggerFromConfig(loadConfig({ ...secrets, GATEWAY_SECRET_ACCEPTED: accepted }), sink).error({ err: new Error(`echoed back: ${accepted}`) }, 'an upstream quoted us');
  t.notOk(text.includes(accepted), 'GATEWAY_SECRET_ACCEPTED');

  // A password written into REDIS_URL instead of REDIS_PASSWORD: the same.
  text = '';
  const inUrl = loggerFromConfig(loadConfig({ ...secrets, REDIS_PASSWORD: undefined, REDIS_URL: 'redis://:url-password%2F0123@redis.internal:6379' }), sink);
  inUrl.error({ err: new Error('connect failed: url-password/0123 and url-password%2F0123') }, 'ioredis quoted its options');
  t.notOk(text.includes('url-password'), "REDIS_URL's password, as written and decoded");
});

t.test('no secret a configuration accepts reaches a log line, however short; ordinary text is left alone', async (t) => {
  // The scrubber leaves strings under 8 characters alone (a 1-2 character one is in every line), so a
  // shorter REDIS_PASSWORD, or password in REDIS_URL, was accepted and then printed wherever quoted.
  let text = '';
  const sink = new Writable({ write(c, _e, cb) { text += c.toString(); cb(); } });
  const base = { GATEWAY_SECRET: 'gateway-secret-0123456789abcdef0123456789', ADMIN_TOKEN: 'admin-token-0123456789' };
  const rows: Array<[env: Record<string, string>, secret: string, accepted: boolean]> = [
    [{ REDIS_PASSWORD: 'Q' }, 'Q', false],
    [{ REDIS_PASSWORD: 'Qz' }, 'Qz', false],
    [{ REDIS_PASSWORD: 'Qz7#xy!' }, 'Qz7#xy!', false],
    [{ REDIS_PASSWORD: 'Qz7#xy!w' }, 'Qz7#xy!w', true],
    [{ REDIS_URL: 'redis://:Qz@redis.internal:6379' }, 'Qz', false],
    // Seven characters once decoded, as ioredis sends it, though 21 as written.
    [{ REDIS_URL: 'redis://:%51%7A%37%23%78%79%21@redis.internal:6379' }, 'Qz7#xy!', false],
    [{ REDIS_URL: 'redis://:Qz7-xy.w@redis.internal:6379' }, 'Qz7-xy.w', true],
    [{ REDIS_URL: 'redis://default@redis.internal:6379' }, 'default', true],
    // ioredis also reads a password from the query (`?password=`) when the URL has no userinfo.
    [{ REDIS_URL: 'redis://redis.internal:6379?password=Qz' }, 'Qz', false],
    [{ REDIS_URL: 'redis://redis.internal:6379/0?password=%51%7A%37%23%78%79%21' }, 'Qz7#xy!', false],
    [{ REDIS_URL: 'redis://redis.internal:6379?password=Qz7-xy.w' }, 'Qz7-xy.w', true],
  ];
  for (const [env, secret, accepted] of rows) {
    let config;
    try {
      config = loadConfig({ ...base, ...env });
    } catch (err) {
      t.notOk(accepted, `${JSON.stringify(env)} refused`);
      t.equal((err as ConfigError).variable, Object.keys(env)[0], 'naming the variable');
      t.notOk((err as Error).message.includes(secret), 'not quoting it');
      continue;
    }
    t.ok(accepted, `${JSON.stringify(env)} accepted`);
    text = '';
    const log = loggerFromConfig(config, sink);
    log.info({ event: 'store.error', workspaceId: 'demo' }, 'a Quiet workspace is starting');
    if (secret !== 'default') {
      log.error({ err: new Error(`WRONGPASS ${secret}`) }, 'redis quoted its AUTH');
      t.notOk(text.includes(secret), `${JSON.stringify(env)}: the secret is not in the lines`);
    }
    t.equal(JSON.parse(text.split('\n')[0]).msg, 'a Quiet workspace is starting', 'ordinary text is intact');
  }
});

t.test('a failed start: its code in the line, and the environment\'s secrets scrubbed before any config exists', async (t) => {
  const rows: Array<[err: unknown, fields: Record<string, unknown>]> = [
    [new ConfigError('REDIS_URL', 'names no host'), { code: 'CONFIG_INVALID', variable: 'REDIS_URL' }],
    [new GatewayError('STORE_UNAVAILABLE'), { code: 'STORE_UNAVAILABLE' }],
    [new StartFailure('NO_CAPACITY', 'no Fargate capacity'), { code: 'NO_CAPACITY' }],
    [new Error('listen EADDRINUSE'), {}],
    ['a thrown string', {}],
  ];
  for (const [err, fields] of rows) {
    const line = startupFailureFields(err);
    t.match(line, { event: 'startup.failed', ...fields }, String(err));
    t.ok(line.err instanceof Error, 'the error, for pino to serialize');
    if (!('code' in fields)) t.notOk('code' in line, 'no code where the error has none');
  }
  let text = '';
  const sink = new Writable({ write(c, _e, cb) { text += c.toString(); cb(); } });
  // The values a bad config holds, too short or malformed for loadConfig, are still the operator's secrets.
  const env = { GATEWAY_SECRET: 'gateway-secret-too-short', GATEWAY_SECRET_ACCEPTED: 'accepted-too-short', ADMIN_TOKEN: 'admin-token-x1', REDIS_URL: 'redis://:url-pass%2F99@:port' };
  startupLogger(env, sink).error(startupFailureFields(new Error(`echoed gateway-secret-too-short accepted-too-short admin-token-x1 url-pass/99 url-pass%2F99`)), 'start failed');
  const line = JSON.parse(text) as Record<string, any>;
  t.match(line, { level: 50, service: 'workspace-gateway', event: 'startup.failed' });
  for (const secret of ['gateway-secret-too-short', 'accepted-too-short', 'admin-token-x1', 'url-pass']) t.notOk(text.includes(secret), secret);
});

t.test("process warnings: one JSON line each instead of Node's lines on stderr, until undone", async (t) => {
  let text = '';
  const sink = new Writable({ write(c, _e, cb) { text += c.toString(); cb(); } });
  const before = process.listeners('warning');
  const undo = logProcessWarnings(createLogger('info', sink));
  t.equal(process.listeners('warning').length, 1, "Node's printer is off: only ours listens");
  process.emitWarning('first line\nsecond line', { code: 'WSGW_TEST_WARNING' });
  await new Promise((r) => setImmediate(r));
  undo();
  t.same(process.listeners('warning'), before, 'undone: the listeners there before are back');
  const lines = text.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.equal(lines.length, 1, 'a multi-line warning is one line');
  t.match(lines[0], { level: 40, event: 'process.warning', name: 'Warning', code: 'WSGW_TEST_WARNING', message: 'first line\nsecond line' });
});
