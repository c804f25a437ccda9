// A start that fails, in the gateway or the standalone reaper, run as an operator runs them: one JSON
// log line like every other (event `startup.failed`, the config or catalogue code, secrets scrubbed)
// and a non-zero exit, where it was a plain-text "configuration error: ..." or "fatal: <stack>" on
// stderr that a log pipeline splits into one event per line.
import { spawn } from 'node:child_process';
import net from 'node:net';
import t from 'tap';
import { MAIN, REAPER_MAIN } from './helpers/process.js';
import { freePort, startRedis } from './helpers/redis.js';

interface Ran { code: number | null; stdout: string; stderr: string }

function run(script: string, env: Record<string, string>, args: string[] = []): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [script, ...args], { env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const SECRET = 'gateway-secret-for-startup-0123456789abcdef';
const TOKEN = 'admin-token-for-startup-0123';
const REDIS_PASSWORD = 'redis-password-for-startup';

t.test('a start that fails: one JSON line, startup.failed with its code, and the exit status', async (t) => {
  const busy = net.createServer();
  await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => busy.close(() => resolve())));
  const busyPort = String((busy.address() as net.AddressInfo).port);
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const closed = await freePort();

  const secrets = { GATEWAY_SECRET: SECRET, ADMIN_TOKEN: TOKEN, REDIS_PASSWORD };
  const rows: Array<[name: string, script: string, env: Record<string, string>, exit: number, expect: Record<string, unknown>]> = [
    ['gateway, a bad setting', MAIN, { ...secrets, SHUTDOWN_TIMEOUT: '1s' }, 2, { code: 'CONFIG_INVALID', variable: 'SHUTDOWN_TIMEOUT' }],
    ['gateway, a secret too short', MAIN, { GATEWAY_SECRET: SECRET, ADMIN_TOKEN: 'short', BASE_DOMAIN: 'example.com' }, 2, { code: 'CONFIG_INVALID', variable: 'ADMIN_TOKEN' }],
    ['gateway, a bad ECS setting', MAIN, { ...secrets, PROVISIONER: 'ecs' }, 2, { code: 'CONFIG_INVALID', variable: 'AWS_REGION' }],
    ['gateway, its port taken', MAIN, { ...secrets, LISTEN_HOST: '127.0.0.1', GATEWAY_PORT: busyPort, ADMIN_PORT: '0', LOCAL_WORKSPACE: 'demo' }, 1, { err: { code: 'EADDRINUSE' } }],
    ['reaper, no REDIS_URL', REAPER_MAIN, { ...secrets }, 2, { code: 'CONFIG_INVALID', variable: 'REDIS_URL' }],
    ['reaper, a bad ECS setting', REAPER_MAIN, { ...secrets, REDIS_PASSWORD: '', REDIS_URL: redis.url, PROVISIONER: 'ecs' }, 2, { code: 'CONFIG_INVALID', variable: 'AWS_REGION' }],
    ['reaper, Redis not there', REAPER_MAIN, { ...secrets, REDIS_URL: `redis://127.0.0.1:${closed}` }, 1, {}],
  ];
  for (const [name, script, env, exit, expect] of rows) {
    const r = await run(script, env, ['--once']);
    t.equal(r.code, exit, `${name}: exit ${exit}`);
    t.equal(r.stderr, '', `${name}: nothing on stderr`);
    const lines = r.stdout.trim().split('\n').filter(Boolean);
    const parsed = lines.map((l) => { try { return JSON.parse(l) as Record<string, unknown>; } catch { return undefined; } });
    t.ok(parsed.every(Boolean), `${name}: every stdout line is JSON: ${r.stdout.slice(0, 300)}`);
    const failed = parsed.filter((l) => l?.event === 'startup.failed');
    t.equal(failed.length, 1, `${name}: one startup.failed line`);
    t.match(failed[0], { level: 50, service: 'workspace-gateway', msg: String, err: { message: String }, ...expect }, `${name}: its shape and code`);
    for (const secret of [SECRET, TOKEN, REDIS_PASSWORD]) t.notOk(r.stdout.includes(secret) || r.stderr.includes(secret), `${name}: no configured secret printed`);
  }
});
