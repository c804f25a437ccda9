// The gateway's Docker image, built from this checkout and run as the ECS service runs it (issue 9):
// production settings (a real domain, HTTPS at the load balancer, Redis, the ECS provisioner against
// the fake AWS endpoint), traffic shaped as the ALB forwards it, and a stop by signal to PID 1. What
// only the image can get wrong is checked here: a production-only dependency tree that still starts,
// tini forwarding SIGTERM, the unprivileged user, the HEALTHCHECK, and the reaper's command override.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { Redis } from 'ioredis';
import { launchChromium } from './helpers/browser.js';
import { demoTasks, startFakeAws } from './fake-aws/index.js';
import { fakeAwsEnv } from './fake-aws/config.js';
import { NAVIGATE, TEST_ADMIN_TOKEN, TEST_SECRET, request, sessionCookie, waitRunning } from './helpers/gateway.js';
import { containerHealth, containerProcesses, dockerEnv, gatewayImage, run } from './helpers/image.js';
import { spawnGateway } from './helpers/process.js';
import { freePort, startRedis } from './helpers/redis.js';
import { closed, connected, nextMessage, openWs } from './helpers/ws.js';

const DOMAIN = 'ws.example.test';
/** What the ALB adds to every request it forwards (it terminates TLS). */
const ALB = { 'x-forwarded-proto': 'https', 'x-forwarded-for': '203.0.113.7', 'x-forwarded-port': '443' };
/**
 * What the gateway's task definition sets (deploy/stack.ts): a read-only root filesystem, and ECS's own
 * init (initProcessEnabled, docker's --init) in front of the image's tini. Not its 65,535 file
 * descriptors: this machine's hard limit is lower, and runc may not raise it.
 */
const TASK_DEFINITION = ['--read-only', '--init'];

t.test('the gateway image serves a cold start, a page and a WebSocket, reports healthy, and drains on SIGTERM', async (t) => {
  const { image, base } = await gatewayImage();
  t.comment(`built on ${base}`);
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-image-'));
  const fake = await startFakeAws({ workspace: demoTasks(dir), durations: { provisioningMs: 50, pendingMs: 50 } });
  const redis = await startRedis();
  const env = {
    ...fakeAwsEnv(fake), REDIS_URL: redis.url, BASE_DOMAIN: DOMAIN, PUBLIC_SCHEME: 'https', TRUSTED_PROXIES: '127.0.0.0/8',
    DRAIN_PERIOD: '2s',
  };
  t.teardown(async () => {
    await fake.close();
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const gw = await spawnGateway(env, { image, dockerArgs: TASK_DEFINITION });
  t.teardown(() => run('docker', ['rm', '-f', gw.container!]));

  const exec = (...cmd: string[]) => run('docker', ['exec', gw.container!, ...cmd]);
  t.equal((await exec('id', '-u')).stdout.trim(), '1000', 'the gateway runs as the unprivileged user');
  const processes = await containerProcesses(gw.container!);
  t.match((await exec('cat', '/proc/1/cmdline')).stdout.split('\0')[0], /docker-init$/, "ECS's init is PID 1");
  t.ok(processes.includes('/usr/bin/tini -s -- node --max-semi-space-size=4 --no-memory-reducer dist/gateway/main.js'), "the image's tini (a subreaper, -s) under it");
  t.ok(processes.includes('node --max-semi-space-size=4 --no-memory-reducer dist/gateway/main.js'), 'node runs the Dockerfile CMD');
  for (const dev of ['typescript', 'tap', 'playwright-core']) t.not((await exec('test', '-e', `/app/node_modules/${dev}`)).code, 0, `${dev} (a dev dependency) is not shipped`);

  const cookie = await sessionCookie('alice', 'https');
  const host = `ws-alice.${DOMAIN}`;
  const first = await request(gw.port, { host, headers: { ...NAVIGATE, ...ALB, cookie } });
  t.equal(first.status, 200, 'the starting page');
  t.equal(first.headers['x-gateway-cold-start'], '1');
  t.equal((await waitRunning(gw.port, cookie, host)).state, 'running');
  const page = await request(gw.port, { host, headers: { ...NAVIGATE, ...ALB, cookie } });
  t.match(page.body, /Demo workspace <code>alice<\/code>/, 'the workspace page, served from the task');
  t.equal(fake.count('RunTask'), 1, 'one RunTask');
  t.equal(fake.count('RegisterInstance'), 1, 'one Cloud Map registration');
  const unsigned = await request(gw.port, { host, headers: { ...NAVIGATE, ...ALB } });
  t.equal(unsigned.headers['x-gateway-error'], 'NOT_SIGNED_IN', 'no session, no workspace');

  // The Host the ALB forwards carries no port (443 is the default).
  const ws = await connected(openWs(gw.port, '/echo', { cookie, host, origin: `https://${host}`, headers: { ...ALB, host } }));
  const echoed = nextMessage(ws);
  ws.send('through the container');
  t.equal((await echoed).data.toString(), 'through the container', 'a WebSocket round trip');

  const redisClient = new Redis(redis.url);
  t.teardown(() => redisClient.disconnect());
  t.ok(await redisClient.exists('wsgw:w:alice'), 'the workspace record is in the shared store');
  const metrics = await fetch(`http://127.0.0.1:${gw.adminPort}/metrics`);
  t.match(await metrics.text(), /^wsgw_cold_starts_total\{outcome="ready"\} 1$/m, 'metrics on the admin port');
  const health = await containerHealth(gw.container!);
  t.equal(health, 'healthy', "Docker's HEALTHCHECK passes, on the ADMIN_PORT given (not 9090)");

  const goingAway = closed(ws);
  const exit = gw.stop('SIGTERM');
  t.equal((await goingAway).code, 1001, 'the WebSocket is closed with 1001 after the drain period');
  t.equal(await exit, 0, 'SIGTERM through tini: a clean exit');
  t.ok(gw.logs.some((l) => l.event === 'stopped'), 'the gateway logged its stop');

  // The same image as the standalone reaper (a scheduled task's command override): alice's task
  // has been idle longer than IDLE_TIMEOUT, so one pass stops it.
  await new Promise((r) => setTimeout(r, 1100));
  const reaper = await run('docker', ['run', '--rm', '--network', 'host',
    ...dockerEnv({ ...env, IDLE_TIMEOUT: '1s', GATEWAY_SECRET: TEST_SECRET, ADMIN_TOKEN: TEST_ADMIN_TOKEN }),
    image, 'node', 'dist/reaper/main.js', '--once'], { timeoutMs: 60_000 });
  t.equal(reaper.code, 0, `the reaper exits 0${reaper.code === 0 ? '' : `: ${reaper.stderr.slice(-500)}`}`);
  t.notMatch(reaper.stderr, /Warning/, 'a process warning (the AWS SDK on Node 20) is a log line, not stderr text');
  const pass = reaper.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.event === 'reaper.pass');
  t.same((pass?.stopped as Array<{ id: string }> | undefined)?.map((s) => s.id), ['alice'], 'the idle workspace stopped');
  t.ok(fake.count('StopTask') >= 1, 'through StopTask');
});

t.test('docker run -p with no settings: the sign-in link it prints opens the demo workspace in Chromium', async (t) => {
  const { image } = await gatewayImage();
  // GATEWAY_PORT only so that no fixed host port is needed; the printed link then names that port.
  const port = await freePort();
  const name = `wsgw-test-try-${process.pid}`;
  const child = spawn('docker', ['run', '--rm', '--name', name, '-p', `127.0.0.1:${port}:${port}`, '-e', `GATEWAY_PORT=${port}`, image], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => run('docker', ['rm', '-f', name]));
  const link = await new Promise<string>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`no sign-in link printed: ${out.slice(-2000)}`)), 60_000);
    const seen = (c: Buffer) => {
      out += c.toString();
      const m = /http:\/\/ws-demo\.localhost:\d+\/__gateway\/login\?token=\S+/.exec(out);
      if (m) { clearTimeout(timer); resolve(m[0]); }
    };
    child.stdout!.on('data', seen);
    child.stderr!.on('data', seen);
  });
  t.match(link, new RegExp(`^http://ws-demo\\.localhost:${port}/`), 'the link names the published port');
  const browser = await launchChromium();
  t.teardown(() => browser.close());
  const page = await browser.newPage();
  await page.goto(link);
  await page.waitForSelector('text=Starting your workspace', { timeout: 10_000 });
  t.pass('the starting page');
  await page.waitForSelector('#ws >> text=round trip ok', { timeout: 30_000 });
  t.match(await page.textContent('h1'), /Demo workspace/, 'the demo workspace, its WebSocket through the gateway');
  const files = await run('docker', ['exec', name, 'ls', '/home/node/workspaces']);
  t.match(files.stdout, /demo/, "the local provisioner's folder, where the node user may write");
});
