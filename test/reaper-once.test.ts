// The standalone reaper's `--once` (reaper/main.ts), run as a scheduled task runs it: a pass that
// throws is its own JSON line (`reaper.pass_failed`) and a non-zero exit, after the same close as any
// other end; it used to be logged as `startup.failed`, though the reaper had started.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { REAPER_MAIN } from './helpers/process.js';
import { startRedis } from './helpers/redis.js';

const PASS_THROWS = fileURLToPath(new URL('./fixtures/process/reaper-pass-throws.js', import.meta.url));

function run(env: Record<string, string>, nodeArgs: string[]): Promise<{ code: number | null; lines: Array<Record<string, unknown>>; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...nodeArgs, REAPER_MAIN, '--once'], { env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    child.once('close', (code) => resolve({
      code, stderr,
      lines: stdout.trim().split('\n').filter(Boolean).map((l) => { try { return JSON.parse(l) as Record<string, unknown>; } catch { return { unparsed: l }; } }),
    }));
  });
}

t.test('reaper --once: a pass that throws is a failed pass, not a failed start; a pass that works exits 0', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const env = { GATEWAY_SECRET: 'gateway-secret-for-reaper-once-0123456789ab', ADMIN_TOKEN: 'admin-token-for-reaper-once', REDIS_URL: redis.url };
  const rows: Array<[name: string, nodeArgs: string[], exit: number, event: string, level: number]> = [
    ['a pass that works', [], 0, 'reaper.pass', 30],
    ['a pass that throws', ['--import', PASS_THROWS], 1, 'reaper.pass_failed', 50],
  ];
  for (const [name, nodeArgs, exit, event, level] of rows) {
    const r = await run(env, nodeArgs);
    const events = r.lines.map((l) => l.event);
    t.equal(r.code, exit, `${name}: exit ${exit}`);
    t.equal(r.stderr, '', `${name}: nothing on stderr`);
    t.notOk(events.includes('startup.failed'), `${name}: no startup.failed line`);
    t.match(r.lines.find((l) => l.event === event), { level, event }, `${name}: ${event}`);
    t.ok(events.includes('stopped'), `${name}: closed what it held (the shutdown path), then exited`);
  }
});
