// codeserver/entrypoint.sh, outside Docker: first against a stand-in binary (the exact command line,
// exec, settings kept), then against the real code-server (CODE_SERVER_BIN, default
// /usr/local/bin/code-server): /healthz, the workbench, auto-save, the folder opened, files served.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ENTRYPOINT = fileURLToPath(new URL('../../codeserver/entrypoint.sh', import.meta.url));
const CODE_SERVER_BIN = process.env.CODE_SERVER_BIN ?? '/usr/local/bin/code-server';

function dirs(t: { teardown(fn: () => void): void }) {
  const base = mkdtempSync(join(tmpdir(), 'cs-entry-'));
  t.teardown(() => rmSync(base, { recursive: true, force: true }));
  return { base, home: join(base, 'home'), userData: join(base, 'user-data'), workspace: join(base, 'efs', 'student-1') };
}

async function freePort(): Promise<number> {
  const srv = createServer().listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as { port: number }).port;
  srv.close();
  await once(srv, 'close');
  return port;
}

function run(env: Record<string, string>): ChildProcess {
  // Its own process group, so the test can end code-server and everything it spawned.
  return spawn('sh', [ENTRYPOINT], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
}

async function output(child: ChildProcess): Promise<{ code: number | null; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d));
  child.stderr!.on('data', (d: Buffer) => (stderr += d));
  const [code] = (await once(child, 'close')) as [number | null];
  return { code, stdout, stderr };
}

t.test('the command line, with a stand-in for code-server', async (t) => {
  const d = dirs(t);
  const fake = join(d.base, 'fake-code-server');
  // Prints its pid (equal to the spawned shell's pid only if the entrypoint exec'd), PORT and argv.
  writeFileSync(fake, '#!/bin/sh\necho "pid=$$"\necho "PORT=${PORT-unset}"\nfor a in "$@"; do echo "arg=$a"; done\n');
  chmodSync(fake, 0o755);
  const env = { HOME: d.home, USER_DATA_DIR: d.userData, WORKSPACE_DIR: d.workspace, CODE_SERVER_BIN: fake, PORT: '1234' };

  const child = run(env);
  const { code, stdout } = await output(child);
  t.equal(code, 0);
  const lines = stdout.trim().split('\n');
  t.equal(lines[0], `pid=${child.pid}`, 'exec: code-server replaces the shell, so signals reach it');
  t.equal(lines[1], 'PORT=unset', 'a stray $PORT cannot move code-server off WORKSPACE_PORT');
  t.same(
    lines.slice(2).map((l) => l.slice(4)),
    [
      '--auth', 'none',
      '--bind-addr', '0.0.0.0:8080',
      '--user-data-dir', d.userData,
      '--extensions-dir', join(d.userData, 'extensions'),
      '--disable-telemetry', '--disable-update-check', '--disable-workspace-trust',
      '--disable-getting-started-override', '--ignore-last-opened',
      d.workspace,
    ],
    'defaults: all interfaces on 8080, the workspace folder last',
  );

  // A student's own settings survive a restart when the user-data dir is kept.
  const settings = join(d.userData, 'User', 'settings.json');
  writeFileSync(settings, '{"files.autoSave": "off"}\n');
  const again = await output(run({ ...env, WORKSPACE_PORT: '9000', EXTENSIONS_DIR: join(d.base, 'ext') }));
  t.equal(again.code, 0);
  t.match(again.stdout, /arg=0\.0\.0\.0:9000\n/);
  t.match(again.stdout, new RegExp(`arg=--extensions-dir\\narg=${join(d.base, 'ext')}\\n`));
  t.equal(readFileSync(settings, 'utf8'), '{"files.autoSave": "off"}\n');

  const bad = await output(run({ ...env, WORKSPACE_PORT: '80; rm -rf /' }));
  t.equal(bad.code, 64, 'a non-numeric port is refused');
  t.match(bad.stderr, /WORKSPACE_PORT/);
});

t.test('the real code-server', async (t) => {
  const d = dirs(t);
  const port = await freePort();
  mkdirSync(d.workspace, { recursive: true });
  writeFileSync(join(d.workspace, 'before.txt'), 'written before the start\n');
  const child = run({
    HOME: d.home,
    USER_DATA_DIR: d.userData,
    WORKSPACE_DIR: d.workspace,
    WORKSPACE_BIND_HOST: '127.0.0.1',
    WORKSPACE_PORT: String(port),
    CODE_SERVER_BIN,
  });
  const exited = once(child, 'exit');
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      process.kill(-child.pid!, 'SIGTERM');
      const timer = setTimeout(() => process.kill(-child.pid!, 'SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
  });

  // Up when it says so on stdout (no polling); bounded so a broken install fails, not hangs.
  let log = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`code-server did not start within 45 s:\n${log}`)), 45_000);
    const onData = (d: Buffer) => {
      log += d;
      if (log.includes('HTTP server listening on')) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    void exited.then(() => reject(new Error(`code-server exited:\n${log}`)));
  });
  t.match(log, new RegExp(`listening on http://127\\.0\\.0\\.1:${port}/`));

  const base = `http://127.0.0.1:${port}`;
  const health = await fetch(`${base}/healthz`);
  t.equal(health.status, 200, '/healthz answers');
  t.ok('status' in ((await health.json()) as object));

  const root = await fetch(`${base}/`, { redirect: 'manual' });
  t.equal(root.status, 302);
  t.equal(root.headers.get('location'), `./?folder=${d.workspace}`, 'the workspace folder is the one opened');

  const page = await fetch(`${base}/?folder=${encodeURIComponent(d.workspace)}`);
  t.equal(page.status, 200);
  const html = await page.text();
  t.match(html, /vscode-workbench-web-configuration/, 'the workbench HTML');
  t.match(html, /workbench\.js/);
  t.notMatch(html, /type="password"/, 'no login page: --auth none');

  const settings = JSON.parse(readFileSync(join(d.userData, 'User', 'settings.json'), 'utf8')) as Record<string, unknown>;
  t.equal(settings['files.autoSave'], 'afterDelay');
  t.equal(settings['files.autoSaveDelay'], 1000, 'auto-save after 1 s');
  t.equal(settings['telemetry.telemetryLevel'], 'off');

  // Files in WORKSPACE_DIR, written before and while it runs, are what code-server serves.
  writeFileSync(join(d.workspace, 'during.txt'), 'written while it runs\n');
  for (const [name, body] of [['before.txt', 'written before the start\n'], ['during.txt', 'written while it runs\n']]) {
    const r = await fetch(`${base}/vscode-remote-resource?path=${encodeURIComponent(join(d.workspace, name))}`);
    t.equal(r.status, 200, name);
    t.equal(await r.text(), body, `${name} served from the workspace folder`);
  }

  process.kill(-child.pid!, 'SIGTERM');
  const [code, signal] = (await exited) as [number | null, string | null];
  t.ok(code !== null || signal !== null, `code-server stopped on SIGTERM (code ${code}, signal ${signal})`);
});
