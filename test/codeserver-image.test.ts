// The workspace image (codeserver/Dockerfile), built from this checkout and run as its ECS task
// definition runs it (deploy/stack.ts: ECS's init, WORKSPACE_PORT and WORKSPACE_DIR, the student's
// EFS access point mounted there, owned by uid 1000). First on its own; then as the task a cold start
// launches, through the gateway, in Chromium: the workbench, its WebSockets, a file the student edits
// saved to the mounted folder, and the task stopped by StopTask with the file kept (issue 9).
import { chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { launchChromium, watchWebSockets } from './helpers/browser.js';
import { DEFAULT_BASE_TASK_DEFINITION, startFakeAws, type WorkspaceFactory } from './fake-aws/index.js';
import { fakeAwsEnv } from './fake-aws/config.js';
import { TEST_ADMIN_TOKEN, until } from './helpers/gateway.js';
import { containerHealth, containerProcesses, dockerEnv, run, workspaceImage } from './helpers/image.js';
import { spawnGateway } from './helpers/process.js';
import { freePort } from './helpers/redis.js';

/** The task definition's container settings (deploy/stack.ts), and the uid EFS access points enforce. */
const WORKSPACE_MOUNT = '/home/coder/workspace';
const TASK = { WORKSPACE_PORT: '8080', WORKSPACE_DIR: WORKSPACE_MOUNT };
const EFS_UID = 1000;
const SETTINGS = '/home/coder/.local/share/code-server/User/settings.json';
const HELLO = 'print("hello")\n';

/** A student's folder as their EFS access point presents it: owned by uid/gid 1000, one file in it. */
function studentFolder(dir: string, id: string): string {
  const folder = join(dir, id);
  mkdirSync(folder, { recursive: true });
  writeFileSync(join(folder, 'hello.py'), HELLO);
  for (const p of [folder, join(folder, 'hello.py')]) chownSync(p, EFS_UID, EFS_UID);
  return folder;
}

/** How the container ended: Docker's exit code (137: killed at the stop timeout, SIGTERM not handled). */
async function stopContainer(name: string): Promise<number> {
  await run('docker', ['stop', '--time', '30', name], { timeoutMs: 60_000 });
  return Number((await run('docker', ['inspect', '--format', '{{.State.ExitCode}}', name])).stdout.trim());
}

t.test('the workspace image on its own: user, init, code-server flags, settings, HEALTHCHECK, SIGTERM', async (t) => {
  const { image, base } = await workspaceImage();
  t.comment(`built on ${base}`);
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-csimage-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const folder = studentFolder(dir, 'alice');
  const port = await freePort();
  const name = `wsgw-test-cs-${process.pid}`;
  // --init: the task definition's initProcessEnabled. A one-second health interval only so the test
  // need not wait the image's fifteen; the check itself is the image's.
  const started = await run('docker', ['run', '-d', '--name', name, '--init', '--health-interval', '1s',
    '-p', `127.0.0.1:${port}:8080`, ...dockerEnv(TASK), '-v', `${folder}:${WORKSPACE_MOUNT}`, image]);
  t.teardown(() => run('docker', ['rm', '-f', name]));
  t.equal(started.code, 0, `the container starts${started.code === 0 ? '' : `: ${started.stderr}`}`);

  const healthz = await until(async () => {
    const r = await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => undefined);
    return r?.ok ? r.status : undefined;
  }, 60_000, 250);
  t.equal(healthz, 200, '/healthz answers on the published container port (bound to 0.0.0.0:8080)');
  const root = await fetch(`http://127.0.0.1:${port}/`, { redirect: 'manual' });
  t.match(root.headers.get('location') ?? '', `folder=${WORKSPACE_MOUNT}`, 'code-server opens the mounted folder');
  const workbench = await fetch(`http://127.0.0.1:${port}/?folder=${WORKSPACE_MOUNT}`);
  t.match(await workbench.text(), /vscode-workbench|workbench/, 'the workbench page, with no password (--auth none)');

  t.equal((await run('docker', ['exec', name, 'id', '-u'])).stdout.trim(), String(EFS_UID), 'code-server runs as coder, the uid EFS access points enforce');
  t.match((await run('docker', ['exec', name, 'cat', '/proc/1/cmdline'])).stdout.split('\0')[0], /docker-init$/, "ECS's init is PID 1");
  const ps = await containerProcesses(name);
  t.ok(ps.includes('/usr/bin/dumb-init -- /usr/local/bin/workspace-entrypoint'), "the image's dumb-init under it, running the entrypoint");
  const codeServer = ps.find((l) => l.includes('--auth none'));
  t.ok(codeServer, `code-server replaced the entrypoint's shell (exec): ${ps.join(' | ')}`);
  t.match(codeServer ?? '', `--bind-addr 0.0.0.0:8080 `, 'bound to every address on WORKSPACE_PORT');
  t.ok(codeServer?.endsWith(` ${WORKSPACE_MOUNT}`), 'the folder opened is WORKSPACE_DIR');
  const settings = JSON.parse((await run('docker', ['exec', name, 'cat', SETTINGS])).stdout) as Record<string, unknown>;
  t.same([settings['files.autoSave'], settings['files.autoSaveDelay']], ['afterDelay', 1000], "the platform's settings: auto-save after a second");

  const health = await containerHealth(name);
  t.equal(health, 'healthy', "the image's HEALTHCHECK (curl /healthz) passes");

  t.not(await stopContainer(name), 137, 'docker stop: SIGTERM reaches code-server through both inits, no kill at the timeout');
  t.equal(readFileSync(join(folder, 'hello.py'), 'utf8'), HELLO, "the student's file is where it was");
});

/**
 * Each fake ECS task runs the workspace image, as Fargate would, on the task's private address: the
 * host's network and WORKSPACE_BIND_HOST stand in for the task's own network interface (awsvpc), where
 * the image's default 0.0.0.0 is right. The folder is the student's, as their access point mounts it.
 */
function containerTasks(image: string, dir: string, ended: Map<string, Promise<number>>): WorkspaceFactory {
  return async (info) => {
    const id = info.workspaceId ?? 'x';
    const name = `wsgw-test-task-${process.pid}-${info.taskArn.split('/').pop()}`;
    const r = await run('docker', ['run', '-d', '--name', name, '--init', '--network', 'host',
      ...dockerEnv({ ...info.environment, WORKSPACE_BIND_HOST: info.host }),
      '-v', `${studentFolder(dir, id)}:${info.environment.WORKSPACE_DIR}`, image]);
    if (r.code !== 0) throw new Error(`docker run: ${r.stderr}`);
    return {
      close: () => {
        const exit = stopContainer(name).finally(() => run('docker', ['rm', '-f', name]));
        ended.set(id, exit);
        return exit.then(() => undefined);
      },
    };
  };
}

t.test('a cold start runs the workspace image as the task: the workbench in Chromium, a saved edit on the mounted folder, StopTask', async (t) => {
  const { image } = await workspaceImage();
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-cstask-'));
  const ended = new Map<string, Promise<number>>();
  const [container] = DEFAULT_BASE_TASK_DEFINITION.containerDefinitions;
  // A free port rather than 8080: on the host's network a task's port must not meet the machine's own.
  const port = await freePort();
  const fake = await startFakeAws({
    workspace: containerTasks(image, dir, ended),
    workspacePort: port,
    durations: { provisioningMs: 50, pendingMs: 50 },
    baseTaskDefinition: {
      ...DEFAULT_BASE_TASK_DEFINITION,
      containerDefinitions: [{
        ...container, image,
        environment: Object.entries({ ...TASK, WORKSPACE_PORT: String(port) }).map(([k, v]) => ({ name: k, value: v })),
        mountPoints: [{ sourceVolume: 'home', containerPath: WORKSPACE_MOUNT }],
      }],
    },
  });
  t.teardown(async () => {
    await fake.close();
    rmSync(dir, { recursive: true, force: true });
  });
  // Two minutes to start: code-server's first start in a fresh container takes seconds, more on a busy machine.
  const gw = await spawnGateway({ ...fakeAwsEnv(fake), START_DEADLINE: '120s' });
  t.teardown(() => gw.stop());

  const admin = (path: string, body = {}) => fetch(`http://127.0.0.1:${gw.adminPort}/api/workspaces/alice/${path}`, {
    method: 'POST', headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  const { url } = (await (await admin('login-url')).json()) as { url: string };
  const browser = await launchChromium();
  t.teardown(() => browser.close());
  const page = await browser.newPage();
  const sockets = watchWebSockets(page);
  await page.goto(url);
  await page.waitForSelector('.monaco-workbench', { timeout: 150_000 });
  t.pass('the workbench, served by the task through the gateway');
  t.equal(fake.count('RunTask'), 1, 'one RunTask');

  const row = page.locator('.explorer-folders-view .monaco-list-row', { hasText: 'hello.py' });
  await row.waitFor({ timeout: 60_000 });
  t.pass("the explorer lists the student's file from the mounted folder");
  const busy = await sockets.waitBusy(2);
  const { opened } = sockets;
  t.ok(opened.length >= 2 && opened.every((u) => u.startsWith(`ws://ws-alice.localhost:${gw.port}/`)), `its WebSockets go through the gateway: ${opened.join(' ')}`);
  t.ok(busy >= 2, 'and traffic flows on them');

  // Edit the file as a student would; the image's settings save it after a second, no keystroke needed.
  await row.click();
  const editor = page.locator('.editor-instance .monaco-editor .view-lines');
  await editor.waitFor({ timeout: 30_000 });
  await page.waitForSelector('.editor-instance .view-line >> text=hello', { timeout: 30_000 });
  await editor.click();
  await page.keyboard.press('Control+Home');
  await page.keyboard.type('# edited in the browser\n');
  const file = join(dir, 'alice', 'hello.py');
  const saved = await until(() => (readFileSync(file, 'utf8').startsWith('# edited in the browser\n') ? true : undefined), 30_000, 250).catch(() => false);
  t.ok(saved, `the edit is saved to the folder: ${JSON.stringify(readFileSync(file, 'utf8'))}`);
  t.equal(statSync(file).uid, EFS_UID, 'written as uid 1000');

  const stop = await admin('stop', { reason: 'test' });
  t.equal(stop.status, 200, 'the platform stops the workspace');
  t.ok(fake.count('StopTask') >= 1, 'through StopTask');
  await until(() => ended.has('alice') || undefined, 30_000, 100);
  t.not(await ended.get('alice'), 137, 'the task ends on SIGTERM, not killed at the stop timeout');
  t.match(readFileSync(file, 'utf8'), /^# edited in the browser\nprint\("hello"\)/, 'the file outlives the task, as on EFS');
});
