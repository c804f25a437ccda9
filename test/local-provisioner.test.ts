// The local provisioner stops a workspace's whole process tree, as stopping a Fargate task does:
// code-server forks an extension host and a pty host, and one of those was seen outliving its server.
// A stand-in for code-server (same command line) forks a helper that ignores SIGTERM.
// And no process of that tree, where the student's terminal runs, inherits the gateway's secrets.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { provisionerFromConfig } from '../gateway/compose.js';
import { loadConfig } from '../gateway/config.js';
import { createLogger } from '../gateway/log.js';
import { createMetrics } from '../gateway/metrics.js';
import { systemClock } from '../gateway/clock.js';
import type { StateStore } from '../gateway/store/contract.js';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { adoptionClaimFile, createLocalProvisioner, findOnPath, processStart, workspaceEnv } from '../provisioner/local.js';
import { MISDIRECTED_FIELD, WORKSPACE_FIELD } from '../gateway/http-fields.js';
import { createIdentityKeys, provenConnection } from '../gateway/workspace-proof.js';
import { request as httpRequest } from 'node:http';
import { fileURLToPath } from 'node:url';
import { createServer as createNetServer } from 'node:net';
import { spawnGateway, type GatewayProcess } from './helpers/process.js';
import { TEST_ADMIN_TOKEN, TEST_SECRET } from './helpers/gateway.js';

const STAND_IN = `#!/usr/bin/env node
const http = require('node:http');
const { spawn } = require('node:child_process');
const { writeFileSync } = require('node:fs');
const bind = process.argv[process.argv.indexOf('--bind-addr') + 1];
const helper = spawn('sh', ['-c', 'trap "" TERM; while :; do sleep 1; done'], { stdio: 'ignore' });
writeFileSync(process.env.HOME + '/helper.pid', String(helper.pid));
http.createServer((req, res) => res.end('ok')).listen(Number(bind.split(':')[1]), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
`;

/** Running, not a zombie waiting for an init that reaps slowly (kill(pid, 0) succeeds on those). */
const alive = (pid: number) => {
  try { return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8')); } catch { return false; }
};

/** A loopback port held until the test ends by a server of the test's (`onConnection`). */
async function heldPort(t: Test, onConnection: (socket: import('node:net').Socket) => void): Promise<number> {
  const server = createNetServer(onConnection);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return (server.address() as { port: number }).port;
}

/** A port free a moment ago, as the provisioner's own chooser finds one. */
const anyFree = () => new Promise<number>((resolve) => {
  const s = createNetServer();
  s.listen(0, '127.0.0.1', () => { const { port } = s.address() as { port: number }; s.close(() => resolve(port)); });
});

/** A folder, removed after the test, holding the stand-in as an executable file. */
function standIn(t: Test): { dir: string; bin: string } {
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-local-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bin = join(dir, 'code-server-stand-in.cjs');
  writeFileSync(bin, STAND_IN);
  chmodSync(bin, 0o755);
  return { dir, bin };
}

t.test('stopping a workspace ends every process it started, even one ignoring SIGTERM', async (t) => {
  const { dir, bin } = standIn(t);
  const provisioner = createLocalProvisioner({ workspace: 'code-server', dataDir: join(dir, 'data'), codeServerBin: bin, demoReadyDelayMs: 0, parentEnv: process.env });
  t.teardown(() => provisioner.close());
  for (const how of ['stop', 'close'] as const) {
    const id = `tree-${how}`;
    const started = await provisioner.start({ workspaceId: id, generation: 1, identityKey: 'key', signal: new AbortController().signal, onStage: () => undefined });
    const helper = Number(readFileSync(join(dir, 'data', id, 'home', 'helper.pid'), 'utf8'));
    t.ok(alive(helper), `${how}: the helper runs`);
    if (how === 'stop') await provisioner.stop(id, started.handle, 'test'); else await provisioner.close();
    for (let i = 0; i < 40 && alive(helper); i++) await new Promise((r) => setTimeout(r, 25));
    t.notOk(alive(helper), `${how}: the helper is gone too`);
    t.notOk(alive(Number(started.handle)), `${how}: the server is gone`);
  }
});

t.test('a workspace whose server exits by itself: reported stopped, nothing of it left running, started again', async (t) => {
  // code-server crashing leaves its extension host and pty host (the student's shells) in its
  // process group; the next start runs a new tree on the same folder next to them.
  const { dir, bin } = standIn(t);
  const provisioner = createLocalProvisioner({ workspace: 'code-server', dataDir: join(dir, 'data'), codeServerBin: bin, demoReadyDelayMs: 0, parentEnv: process.env });
  t.teardown(() => provisioner.close());
  const start = (generation: number) => provisioner.start({ workspaceId: 'crash', generation, identityKey: 'key', signal: new AbortController().signal, onStage: () => undefined });
  const first = await start(1);
  const helper = Number(readFileSync(join(dir, 'data', 'crash', 'home', 'helper.pid'), 'utf8'));
  t.teardown(() => { try { process.kill(helper, 'SIGKILL'); } catch { /* gone */ } });
  process.kill(Number(first.handle), 'SIGKILL');
  for (let i = 0; i < 80 && (await provisioner.describe('crash')); i++) await new Promise((r) => setTimeout(r, 25));
  t.equal(await provisioner.describe('crash'), undefined, 'describe: not running');
  t.same(await provisioner.list(), [], 'list: not running');
  for (let i = 0; i < 40 && alive(helper); i++) await new Promise((r) => setTimeout(r, 25));
  t.notOk(alive(helper), 'the helper it forked is gone too');
  const second = await start(2);
  t.not(second.handle, first.handle, 'the next start runs a new process');
  t.equal((await provisioner.describe('crash'))?.generation, 2);
});

/** The gateway's own settings that must never reach a workspace, each with a value to look for. */
const GATEWAY_SECRETS = {
  GATEWAY_SECRET: 'gateway-secret-that-signs-every-session-0123456789',
  ADMIN_TOKEN: 'admin-token-0123456789-0123456789',
  REDIS_URL: 'redis://:hunter2@127.0.0.1:6379/0',
  REDIS_PASSWORD: 'hunter2',
  AWS_SECRET_ACCESS_KEY: 'aws-secret-0123456789',
  PASSWORD: 'code-server-password',
};

/** A process's environment, from /proc; undefined once it is gone. */
function environOf(pid: number): Record<string, string> | undefined {
  try {
    const env: Record<string, string> = {};
    for (const entry of readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0')) {
      const eq = entry.indexOf('=');
      if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
    }
    return env;
  } catch { return undefined; }
}

/** Neither a name nor a value of GATEWAY_SECRETS in `env`, a process's environment. */
function checkNoSecrets(t: Test, env: Record<string, string>, who: string): void {
  for (const name of Object.keys(GATEWAY_SECRETS)) t.notOk(name in env, `${who}: ${name} not inherited`);
  t.notOk(Object.values(env).some((v) => Object.values(GATEWAY_SECRETS).some((secret) => v.includes(secret))), `${who}: no value carries a secret`);
}

/** Every process in process group `pgid` (the local provisioner starts each workspace as its own group). */
function groupMembers(pgid: number): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      // pid (comm) state ppid pgrp …: comm may hold spaces and parentheses, so read after the last ')'.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[2]) === pgid) pids.push(Number(name));
    } catch { /* gone meanwhile */ }
  }
  return pids;
}

t.test('workspaceEnv table: a workspace inherits what a shell and code-server need, nothing of the gateway\'s', async (t) => {
  const rows: Array<[name: string, kept: boolean]> = [
    ['PATH', true], ['LANG', true], ['LC_ALL', true], ['LC_CTYPE', true], ['TZ', true], ['TERM', true], ['SHELL', true],
    ['USER', true], ['TMPDIR', true], ['HTTPS_PROXY', true], ['no_proxy', true], ['NODE_EXTRA_CA_CERTS', true], ['SSL_CERT_FILE', true],
    ['GATEWAY_SECRET', false], ['ADMIN_TOKEN', false], ['REDIS_URL', false], ['REDIS_PASSWORD', false], ['AWS_ACCESS_KEY_ID', false],
    ['AWS_SECRET_ACCESS_KEY', false], ['AWS_SESSION_TOKEN', false], ['PASSWORD', false], ['HASHED_PASSWORD', false],
    ['HOME', false], ['NODE_OPTIONS', false], ['PATHS', false], ['XPATH', false], ['LC_', false], ['BASE_DOMAIN', false],
  ];
  for (const [name, kept] of rows) {
    t.equal(name in workspaceEnv({ [name]: 'v' }), kept, `${name} ${kept ? 'kept' : 'dropped'}`);
  }
  t.same(workspaceEnv({ PATH: undefined }), {}, 'an unset name is not passed on');
});

t.test('a port another workspace\'s code-server took over refuses this one\'s requests (the preload, as the image loads it)', async (t) => {
  // freePort() hands out a port a stopped workspace let go of; a stale route to it must not reach
  // the workspace now listening there. The stand-in is a Node program, as code-server is.
  const { dir, bin } = standIn(t);
  const provisioner = createLocalProvisioner({ workspace: 'code-server', dataDir: join(dir, 'data'), codeServerBin: bin, demoReadyDelayMs: 0, parentEnv: process.env });
  t.teardown(() => provisioner.close());
  const started = await provisioner.start({ workspaceId: 'bravo', generation: 1, identityKey: 'key', signal: new AbortController().signal, onStage: () => undefined });
  const ask = (path: string, workspace?: string) => new Promise<{ status: number; marked: boolean }>((resolve, reject) => {
    const req = httpRequest({ host: started.endpoint.host, port: started.endpoint.port, path, agent: false, headers: workspace === undefined ? {} : { [WORKSPACE_FIELD]: workspace } }, (res) => {
      res.resume();
      resolve({ status: res.statusCode ?? 0, marked: res.headers[MISDIRECTED_FIELD] === '1' });
    });
    req.on('error', reject);
    req.end();
  });
  t.same(await ask('/', 'bravo'), { status: 200, marked: false }, 'its own requests are served');
  t.same(await ask('/', 'alpha'), { status: 421, marked: true }, "another workspace's request: 421 with the marker");
  t.same(await ask('/', undefined), { status: 421, marked: true }, 'an unnamed request: 421 with the marker');
  t.same(await ask('/healthz', undefined), { status: 200, marked: false }, '/healthz without a name (a health check on the box itself)');
});

t.test('a checkout whose path holds spaces, a quote and a backslash still starts code-server with the preload', async (t) => {
  // Node reads NODE_OPTIONS' double quotes with backslash escapes: the path must be escaped in it.
  const { dir, bin } = standIn(t);
  const odd = join(dir, 'a b "c" d\\e');
  mkdirSync(odd);
  const identityPreload = join(odd, 'workspace-identity.cjs');
  copyFileSync(fileURLToPath(new URL('../codeserver/workspace-identity.cjs', import.meta.url)), identityPreload);
  const provisioner = createLocalProvisioner({ workspace: 'code-server', dataDir: join(dir, 'data'), codeServerBin: bin, demoReadyDelayMs: 0, parentEnv: process.env, identityPreload });
  t.teardown(() => provisioner.close());
  const started = await provisioner.start({ workspaceId: 'bravo', generation: 1, identityKey: 'key', signal: new AbortController().signal, onStage: () => undefined });
  const ask = (workspace: string) => new Promise<number>((resolve, reject) => {
    const req = httpRequest({ host: started.endpoint.host, port: started.endpoint.port, path: '/', agent: false, headers: { [WORKSPACE_FIELD]: workspace } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
  t.same([await ask('bravo'), await ask('alpha')], [200, 421], 'its own served, another refused');
});

t.test('no process of a workspace, down to the shell it forks, sees the gateway\'s secrets', async (t) => {
  const { dir, bin } = standIn(t);
  const parentEnv = { ...process.env, ...GATEWAY_SECRETS, LANG: 'C.UTF-8' };
  for (const workspace of ['code-server', 'demo'] as const) {
    const provisioner = createLocalProvisioner({ workspace, dataDir: join(dir, workspace), codeServerBin: bin, demoReadyDelayMs: 0, parentEnv });
    t.teardown(() => provisioner.close());
    const started = await provisioner.start({ workspaceId: 'env', generation: 1, identityKey: 'key', signal: new AbortController().signal, onStage: () => undefined });
    const pids = workspace === 'demo' ? [Number(started.handle)] : [Number(started.handle), Number(readFileSync(join(dir, workspace, 'env', 'home', 'helper.pid'), 'utf8'))];
    for (const pid of pids) {
      const env = environOf(pid);
      t.ok(env, `${workspace}: process ${pid} runs`);
      checkNoSecrets(t, env!, workspace);
      t.equal(env!.PATH, process.env.PATH, `${workspace}: PATH inherited`);
      t.equal(env!.LANG, 'C.UTF-8', `${workspace}: LANG inherited`);
    }
    await provisioner.close();
  }
});

t.test('a start hands the workspace its key (WORKSPACE_KEY): it proves itself with it, and its route asks it to', async (t) => {
  const { dir, bin } = standIn(t);
  for (const workspace of ['code-server', 'demo'] as const) {
    const provisioner = createLocalProvisioner({ workspace, dataDir: join(dir, workspace), codeServerBin: bin, demoReadyDelayMs: 0, parentEnv: process.env });
    t.teardown(() => provisioner.close());
    const started = await provisioner.start({ workspaceId: 'keyed', generation: 3, identityKey: 'start-key-3', signal: new AbortController().signal, onStage: () => undefined });
    t.equal(started.endpoint.proves, true, `${workspace}: its route requires proof`);
    const { host, port } = started.endpoint;
    const socket = await provenConnection(host, port, { workspaceId: 'keyed', key: 'start-key-3' }, 2000);
    socket.destroy();
    t.pass(`${workspace}: proven with the start's key`);
    await t.rejects(provenConnection(host, port, { workspaceId: 'keyed', key: 'start-key-2' }, 2000), { name: 'IdentityFailure', reason: 'unproven' }, `${workspace}: not with another start's`);
    t.equal((await provisioner.describe('keyed'))?.endpoint.proves, true, `${workspace}: rediscovered, it still does`);
    await provisioner.close();
  }
});

// A terminal's shell in the real code-server, opened in a browser, is checked by reaper-browser.test.
t.test('the real code-server: no process it starts sees the gateway\'s secrets', async (t) => {
  const bin = findOnPath('code-server', process.env.PATH);
  t.ok(bin, 'code-server is installed (.ci/run installs it)');
  if (!bin) return;
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-local-cs-env-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const provisioner = createLocalProvisioner({ workspace: 'code-server', dataDir: dir, codeServerBin: bin, demoReadyDelayMs: 0, parentEnv: { ...process.env, ...GATEWAY_SECRETS } });
  t.teardown(() => provisioner.close());
  const started = await provisioner.start({ workspaceId: 'cs-env', generation: 1, identityKey: 'key', signal: new AbortController().signal, onStage: () => undefined });
  const members = groupMembers(Number(started.handle));
  t.ok(members.length >= 1, `the workspace's process group has ${members.length} processes`);
  for (const pid of members) {
    const env = environOf(pid);
    if (!env) continue;
    checkNoSecrets(t, env, `process ${pid}`);
  }
  t.equal(environOf(Number(started.handle))?.HOME, join(dir, 'cs-env', 'home'), 'HOME is the workspace\'s own');
});

t.test('findOnPath table: the first executable file of that name on the search path, and no shell', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-path-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const [first, second] = [join(dir, 'first'), join(dir, 'second')];
  mkdirSync(first);
  mkdirSync(second);
  writeFileSync(join(first, 'plain'), 'not executable');
  writeFileSync(join(second, 'plain'), '#!/bin/sh\n');
  chmodSync(join(second, 'plain'), 0o755);
  writeFileSync(join(second, 'cs'), '#!/bin/sh\n');
  chmodSync(join(second, 'cs'), 0o755);
  writeFileSync(join(first, 'cs'), '#!/bin/sh\n');
  chmodSync(join(first, 'cs'), 0o755);
  mkdirSync(join(first, 'a-folder'));
  const marker = join(dir, 'ran');
  const searchPath = `${first}::${second}`;
  const rows: Array<[bin: string, path: string | undefined, expected: string | undefined]> = [
    ['cs', searchPath, join(first, 'cs')],
    ['plain', searchPath, join(second, 'plain')],
    ['a-folder', searchPath, undefined],
    ['missing', searchPath, undefined],
    ['cs', undefined, undefined],
    ['cs', '', undefined],
    [join(second, 'cs'), undefined, join(second, 'cs')],
    // No slash in these (a name with one is taken as a path): the marker's path comes from the environment,
    // which a shell would have expanded.
    ['$(touch "$WSGW_TEST_MARKER")', searchPath, undefined],
    ['`touch "$WSGW_TEST_MARKER"`', searchPath, undefined],
    ['cs"; touch "$WSGW_TEST_MARKER"; "', searchPath, undefined],
  ];
  process.env.WSGW_TEST_MARKER = marker;
  t.teardown(() => { delete process.env.WSGW_TEST_MARKER; });
  for (const [bin, path, expected] of rows) t.equal(findOnPath(bin, path), expected, `${bin} on ${path === undefined ? 'no PATH' : JSON.stringify(path)}`);
  t.notOk(existsSync(marker), 'nothing in a name was run');
});

t.test('a port taken between choosing it and the workspace binding it: the start goes on on another port, a bounded number of times', async (t) => {
  // freePort() lets the port go before the child binds it: anything may take it meanwhile (another
  // workspace's start, any process on the machine), and the child then exits with EADDRINUSE.
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-local-port-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // Holds the port; a probe that reaches it is cut off.
  const takenPort = await heldPort(t, (socket) => socket.destroy());

  const chosen: number[] = [];
  const once = createLocalProvisioner({
    workspace: 'demo', dataDir: join(dir, 'once'), codeServerBin: 'none', demoReadyDelayMs: 0, parentEnv: process.env,
    choosePort: async () => { const p = chosen.length === 0 ? takenPort : await anyFree(); chosen.push(p); return p; },
  });
  t.teardown(() => once.close());
  const stages: string[] = [];
  const r = await once.start({ workspaceId: 'porty', generation: 1, identityKey: 'key', signal: new AbortController().signal, onStage: (s) => stages.push(s.stage) }).catch((e) => e);
  t.notOk(r.code, `started (${r.code ?? 'ok'}: ${r.message ?? ''})`);
  t.equal(chosen[0], takenPort, 'the first port chosen was the taken one');
  t.equal(chosen.length, 2, 'one more port chosen');
  t.ok(chosen[1] !== undefined && r.endpoint?.port === chosen[1], 'running on the second');
  t.same(stages, ['provisioning', 'pending', 'running', 'probing', 'ready'], 'stages reported once each, in order');

  let tries = 0;
  const always = createLocalProvisioner({
    workspace: 'demo', dataDir: join(dir, 'always'), codeServerBin: 'none', demoReadyDelayMs: 0, parentEnv: process.env,
    choosePort: async () => { tries++; return takenPort; },
  });
  t.teardown(() => always.close());
  const err = await always.start({ workspaceId: 'porty', generation: 1, identityKey: 'key', signal: new AbortController().signal, onStage: () => undefined }).catch((e) => e);
  t.equal(err.code, 'TASK_STOPPED', 'a port that is always taken fails the start');
  t.match(err.message, 'EADDRINUSE');
  t.ok(tries > 1 && tries <= 5, `bounded: ${tries} ports tried`);
});

t.test('a port taken by a server that is no workspace before a slow workspace binds it: tried on another port, not failed BAD_CONFIG', async (t) => {
  // freePort() lets the port go before code-server binds it, seconds later: a server of anything else
  // on the machine (one on port 0, as every test's) may take it meanwhile and answer the probes in full,
  // without a proof. Three such answers in a row are not a workspace without its preload.
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-local-stolen-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bin = join(dir, 'slow-code-server.cjs');
  // The stand-in binds its port late, as code-server does, and exits on EADDRINUSE, as code-server does.
  writeFileSync(bin, `#!/usr/bin/env node
const http = require('node:http');
const bind = process.argv[process.argv.indexOf('--bind-addr') + 1];
setTimeout(() => {
  const s = http.createServer((req, res) => res.end('ok'));
  s.on('error', (err) => { process.stderr.write(String(err.code) + '\\n'); process.exit(1); });
  s.listen(Number(bind.split(':')[1]), '127.0.0.1');
}, 1500);
process.on('SIGTERM', () => process.exit(0));
`);
  chmodSync(bin, 0o755);
  const takenPort = await heldPort(t, (socket) => socket.on('data', () => socket.end('HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n')));
  const chosen: number[] = [];
  const provisioner = createLocalProvisioner({
    workspace: 'code-server', dataDir: join(dir, 'data'), codeServerBin: bin, demoReadyDelayMs: 0, parentEnv: process.env, probeIntervalMs: 20,
    choosePort: async () => { const p = chosen.length === 0 ? takenPort : await anyFree(); chosen.push(p); return p; },
  });
  t.teardown(() => provisioner.close());
  const r = await provisioner.start({ workspaceId: 'stolen', generation: 1, identityKey: 'key', signal: new AbortController().signal, onStage: () => undefined })
    .then((ok) => ({ ok, code: undefined }), (err: { code?: string }) => ({ ok: undefined, code: err.code }));
  t.equal(r.code, undefined, 'started, not failed');
  t.equal(chosen[0], takenPort, 'the first port chosen was the taken one');
  t.equal(chosen.length, 2, 'one more port chosen');
  t.ok(r.ok !== undefined && r.ok.endpoint.port === chosen[1], 'running on the second');
});

/** POST to a gateway's admin API with the test token; the status code. */
function adminPost(port: number, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, method: 'POST', agent: false, headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}` } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
}

t.test('workspaces a SIGKILLed gateway left behind: one still starting is killed, a ready one adopted, by the next gateway\'s provisioner', async (t) => {
  // Each workspace runs detached (its own process group), so it outlives a gateway killed with
  // SIGKILL; only a ready one was recorded in run.json, so one still starting ran on, unrecorded.
  const dataDir = mkdtempSync(join(tmpdir(), 'wsgw-local-sigkill-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  const leftovers: number[] = [];
  t.teardown(() => { for (const pid of leftovers) { try { process.kill(-pid, 'SIGKILL'); } catch { /* gone */ } } });
  const started = async (gw: GatewayProcess, id: string) => {
    t.equal(await adminPost(gw.adminPort, `/api/workspaces/${id}/start`), 202, `${id}: start requested`);
    const line = await gw.waitFor((l) => l.msg === 'workspace process started' && l.workspaceId === id);
    leftovers.push(Number(line.pid));
    return Number(line.pid);
  };

  // A gateway whose demo workspaces answer their probe only after a minute: killed mid-start.
  const slow = await spawnGateway({ LOCAL_DATA_DIR: dataDir, DEMO_READY_DELAY: '60s' });
  t.teardown(() => slow.stop('SIGKILL'));
  const starting = await started(slow, 'half');
  await slow.stop('SIGKILL');
  t.ok(alive(starting), 'the workspace still starting outlived the gateway');

  // One that became ready before its gateway was killed.
  const quick = await spawnGateway({ LOCAL_DATA_DIR: dataDir, DEMO_READY_DELAY: '0ms' });
  t.teardown(() => quick.stop('SIGKILL'));
  const ready = await started(quick, 'whole');
  await quick.waitFor((l) => l.event === 'start.ready' && l.workspaceId === 'whole');
  await quick.stop('SIGKILL');
  t.ok(alive(ready), 'the ready workspace outlived the gateway');

  const next = createLocalProvisioner({ workspace: 'demo', dataDir, codeServerBin: 'none', demoReadyDelayMs: 0, parentEnv: process.env });
  t.teardown(() => next.close());
  for (let i = 0; i < 80 && alive(starting); i++) await new Promise((r) => setTimeout(r, 25));
  t.notOk(alive(starting), 'the one left starting is killed');
  t.equal(await next.describe('half'), undefined, 'and not reported');
  t.same((await next.list()).map((w) => [w.workspaceId, w.handle]), [['whole', String(ready)]], 'the ready one is listed, so the gateway adopts it');
  t.equal((await next.describe('whole'))?.handle, String(ready));
  await next.close();
  for (let i = 0; i < 80 && alive(ready); i++) await new Promise((r) => setTimeout(r, 25));
  t.notOk(alive(ready), 'and, adopted, it is stopped with the provisioner that adopted it');
});

/**
 * A gateway replica of its own: a process that, once told to go (a line on stdin), creates a local
 * provisioner over `dataDir` (which sweeps leftovers) and prints what it lists; it lives on until killed.
 */
async function replica(t: Test, dataDir: string): Promise<{ child: ChildProcessWithoutNullStreams; listed: Promise<string[]> }> {
  const module = fileURLToPath(new URL('../provisioner/local.js', import.meta.url));
  const script = `import(${JSON.stringify(module)}).then((m) => {
    process.stdin.once('data', async () => {
      const p = m.createLocalProvisioner({ workspace: 'demo', dataDir: ${JSON.stringify(dataDir)}, codeServerBin: 'none', demoReadyDelayMs: 0, parentEnv: process.env });
      process.stdout.write(JSON.stringify((await p.list()).map((w) => w.workspaceId)) + '\\n');
    });
    setInterval(() => {}, 1000);
    process.stdout.write('ready\\n');
  })`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['pipe', 'pipe', 'pipe'] });
  t.teardown(() => { child.kill('SIGKILL'); });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  const lines: string[] = [];
  const waiters: Array<() => void> = [];
  let buffered = '';
  let exited = false;
  child.stdout.on('data', (d: Buffer) => {
    buffered += d.toString();
    for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) { lines.push(buffered.slice(0, nl)); buffered = buffered.slice(nl + 1); }
    for (const w of waiters.splice(0)) w();
  });
  child.once('close', () => { exited = true; for (const w of waiters.splice(0)) w(); });
  // A replica whose provisioner threw (it read run.json while the other wrote it) exits without its line.
  const line = async (n: number) => {
    while (lines.length <= n) {
      if (exited) throw new Error(`replica ${child.pid} exited before line ${n}: ${stderr.trim().split('\n').slice(-3).join(' | ')}`);
      await new Promise<void>((r) => waiters.push(r));
    }
    return lines[n]!;
  };
  t.equal(await line(0), 'ready', `replica ${child.pid} is ready`);
  return { child, listed: line(1).then((l) => JSON.parse(l) as string[]) };
}

t.test('two replicas starting at once over one data dir: each leftover of a dead gateway is adopted by exactly one of them', async (t) => {
  // Both read run.json naming the dead owner, and both adopted: both listed it, so both recorded,
  // reaped or stopped it, and each closing replica stopped it under the other.
  const dataDir = mkdtempSync(join(tmpdir(), 'wsgw-local-race-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  // Several leftovers, so the two sweeps overlap on some of them; stand-ins for workspaces, recorded
  // as this build's provisioner records them (owner, not starting, the process's own start).
  const ids = Array.from({ length: 8 }, (_, i) => `left-${i}`);
  const workspacePids: number[] = [];
  t.teardown(() => { for (const pid of workspacePids) { try { process.kill(-pid, 'SIGKILL'); } catch { /* gone */ } } });
  const dead = spawn(process.execPath, ['-e', '0']);
  await new Promise((r) => dead.once('exit', r));
  for (const id of ids) {
    const ws = spawn('sleep', ['600'], { detached: true, stdio: 'ignore' });
    workspacePids.push(ws.pid!);
    mkdirSync(join(dataDir, id), { recursive: true });
    writeFileSync(join(dataDir, id, 'run.json'), JSON.stringify({
      workspaceId: id, generation: 1, endpoint: { host: '127.0.0.1', port: 1, proves: true }, handle: String(ws.pid), startedAt: Date.now(),
      owner: dead.pid, starting: false, pidStart: processStart(ws.pid!),
    }));
  }
  // Each round's replicas are SIGKILLed after it, as their dead owner was: the next round's adopt anew.
  for (let round = 1; round <= 5; round++) {
    const pair = [await replica(t, dataDir), await replica(t, dataDir)];
    for (const r of pair) r.child.stdin.write('go\n');
    const listed = await Promise.all(pair.map((r) => r.listed.catch((err: Error) => { t.fail(err.message); return [] as string[]; })));
    for (const id of ids) {
      const adopters = pair.filter((_, i) => listed[i]!.includes(id)).map((r) => r.child.pid);
      t.equal(adopters.length, 1, `round ${round}, ${id}: adopted by exactly one replica (${adopters.join(', ') || 'none'})`);
      const owner = (JSON.parse(readFileSync(join(dataDir, id, 'run.json'), 'utf8')) as { owner: number }).owner;
      t.same([owner], adopters, `round ${round}, ${id}: run.json names the one that adopted it`);
    }
    for (const r of pair) { if (r.child.exitCode === null && r.child.signalCode === null) { r.child.kill('SIGKILL'); await new Promise((res) => r.child.once('exit', res)); } }
  }
  t.ok(workspacePids.every(alive), 'no replica stopped a workspace: each left a live gateway\'s alone');
});

t.test('a leftover another live gateway is claiming is left alone; claims of gateways that died mid-adoption do not block it', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'wsgw-local-claim-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  const ws = spawn('sleep', ['600'], { detached: true, stdio: 'ignore' });
  t.teardown(() => { try { process.kill(-ws.pid!, 'SIGKILL'); } catch { /* gone */ } });
  const dead = spawn(process.execPath, ['-e', '0']);
  await new Promise((r) => dead.once('exit', r));
  const dir = join(dataDir, 'left');
  mkdirSync(dir, { recursive: true });
  const runFile = join(dir, 'run.json');
  writeFileSync(runFile, JSON.stringify({
    workspaceId: 'left', generation: 1, endpoint: { host: '127.0.0.1', port: 1, proves: true }, handle: String(ws.pid), startedAt: Date.now(),
    owner: dead.pid, starting: false, pidStart: processStart(ws.pid!),
  }));
  const owner = () => (JSON.parse(readFileSync(runFile, 'utf8')) as { owner: number }).owner;
  // Another replica, alive, holds the claim (it is adopting it now): not ours.
  const claimer = spawn('sleep', ['600'], { stdio: 'ignore' });
  t.teardown(() => { claimer.kill('SIGKILL'); });
  writeFileSync(adoptionClaimFile(dir, dead.pid!, 0), JSON.stringify({ pid: claimer.pid, pidStart: processStart(claimer.pid!) }));
  const first = createLocalProvisioner({ workspace: 'demo', dataDir, codeServerBin: 'none', demoReadyDelayMs: 0, parentEnv: process.env });
  t.same(await first.list(), [], 'claimed by a live replica: not adopted');
  t.equal(owner(), dead.pid, 'run.json left as it was');
  await first.close();
  t.ok(alive(ws.pid!), 'nor stopped');

  // That replica died mid-adoption, and so did two after it, one under a pid the kernel has since handed on (to this process).
  claimer.kill('SIGKILL');
  await new Promise((r) => claimer.once('exit', r));
  writeFileSync(adoptionClaimFile(dir, dead.pid!, 1), JSON.stringify({ pid: dead.pid, pidStart: 'an-earlier-boot:12345' }));
  writeFileSync(adoptionClaimFile(dir, dead.pid!, 2), JSON.stringify({ pid: process.pid, pidStart: 'an-earlier-boot:67890' }));
  const next = createLocalProvisioner({ workspace: 'demo', dataDir, codeServerBin: 'none', demoReadyDelayMs: 0, parentEnv: process.env });
  t.teardown(() => next.close());
  t.same((await next.list()).map((w) => w.handle), [String(ws.pid)], 'claims of dead replicas do not block it: adopted');
  t.equal(owner(), process.pid, 'run.json names the adopter');
  t.same(readdirSync(dir).filter((name) => name.endsWith('.claim')), [], 'and the dead replicas\' claims are cleared away');
});

t.test('a run.json that names no owner (an older gateway, the bench\'s stand-in) is neither adopted nor stopped', async (t) => {
  // The bench points run.json at its own upstream process; adopting it made the bench's gateway
  // stop that upstream on close.
  const dataDir = mkdtempSync(join(tmpdir(), 'wsgw-local-noowner-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { detached: true, stdio: 'ignore' });
  t.teardown(() => { try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* gone */ } });
  mkdirSync(join(dataDir, 'bench'), { recursive: true });
  writeFileSync(join(dataDir, 'bench', 'run.json'), JSON.stringify({ workspaceId: 'bench', generation: 1, endpoint: { host: '127.0.0.1', port: 1 }, handle: String(child.pid), startedAt: Date.now() }));
  const p = createLocalProvisioner({ workspace: 'demo', dataDir, codeServerBin: 'none', demoReadyDelayMs: 0, parentEnv: process.env });
  t.same(await p.list(), [], 'not listed as adopted');
  t.equal((await p.describe('bench'))?.handle, String(child.pid), 'still described, as before');
  await p.close();
  await new Promise((r) => setTimeout(r, 200));
  t.ok(alive(child.pid!), 'closing the provisioner leaves it running');
});

t.test('a run.json whose pid now names another process (a reboot, a reused pid) is neither killed, adopted, described nor stopped', async (t) => {
  // The gateway and its workspace both died (the machine rebooted, the OOM killer took both) and
  // nothing removed run.json; the kernel has since handed the workspace's pid to an unrelated
  // process. A detached process stands in for it: a process-group leader, as many are.
  const gone = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
  await new Promise((r) => gone.once('exit', r));
  for (const starting of [true, false]) {
    const stranger = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { detached: true, stdio: 'ignore' });
    t.teardown(() => { try { process.kill(-stranger.pid!, 'SIGKILL'); } catch { /* gone */ } });
    const dataDir = mkdtempSync(join(tmpdir(), 'wsgw-local-reused-'));
    t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
    // Written by a provisioner of this build: owner, starting, and the workspace process's own start.
    mkdirSync(join(dataDir, 'old'), { recursive: true });
    writeFileSync(join(dataDir, 'old', 'run.json'), JSON.stringify({
      workspaceId: 'old', generation: 1, endpoint: { host: '127.0.0.1', port: 1 }, handle: String(stranger.pid), startedAt: Date.now() - 60_000,
      owner: gone.pid, starting, pidStart: 'an-earlier-boot:12345',
    }));
    const p = createLocalProvisioner({ workspace: 'demo', dataDir, codeServerBin: 'none', demoReadyDelayMs: 0, parentEnv: process.env });
    const what = starting ? 'left starting' : 'left ready';
    t.same(await p.list(), [], `${what}: not adopted`);
    t.equal(await p.describe('old'), undefined, `${what}: not described as running`);
    await p.stop('old', undefined, 'test');
    await p.close();
    await new Promise((r) => setTimeout(r, 200));
    t.ok(alive(stranger.pid!), `${what}: the process now holding that pid is left running`);
  }
});

t.test('the standalone reaper\'s local provisioner neither adopts nor kills what a dead gateway left; a gateway\'s adopts it', async (t) => {
  // The reaper closes its provisioner after a --once pass: had it adopted a dead gateway's ready
  // workspaces, closing would have stopped them, in use or not.
  const dataDir = mkdtempSync(join(tmpdir(), 'wsgw-local-reaper-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  const dead = spawn(process.execPath, ['-e', '0']);
  await new Promise((r) => dead.once('exit', r));
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { detached: true, stdio: 'ignore' });
  t.teardown(() => { try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* gone */ } });
  const record = (starting: boolean) => JSON.stringify({ workspaceId: 'left', generation: 1, endpoint: { host: '127.0.0.1', port: 1 }, handle: String(child.pid), startedAt: Date.now(), owner: dead.pid, starting });
  mkdirSync(join(dataDir, 'left'), { recursive: true });
  const config = loadConfig({ LOCAL_DATA_DIR: dataDir, LOCAL_WORKSPACE: 'demo' });
  const silent = createLogger('silent');
  const noStore = undefined as unknown as StateStore;
  for (const starting of [false, true]) {
    writeFileSync(join(dataDir, 'left', 'run.json'), record(starting));
    const reaper = await provisionerFromConfig(config, systemClock, createMetrics({ enabled: false, defaultMetrics: false }), silent, noStore, 'reaper');
    t.same(await reaper.list(), [], `${starting ? 'starting' : 'ready'}: not adopted by the reaper`);
    await reaper.close();
    await new Promise((r) => setTimeout(r, 100));
    t.ok(alive(child.pid!), `${starting ? 'starting' : 'ready'}: still running after the reaper closed`);
  }
  writeFileSync(join(dataDir, 'left', 'run.json'), record(false));
  const gateway = await provisionerFromConfig(config, systemClock, createMetrics({ enabled: false, defaultMetrics: false }), silent, noStore);
  t.same((await gateway.list()).map((w) => w.handle), [String(child.pid)], 'a gateway\'s provisioner adopts it');
  await gateway.close();
});

t.test('a ready workspace a dead gateway started under another GATEWAY_SECRET is killed, not adopted: it could never prove itself', async (t) => {
  // A development gateway generates its secret at each start (no GATEWAY_SECRET): killed and started
  // again, its next self derives other start keys. Adopted, the leftover was routed to and failed every
  // connection's proof (502), re-checks found it running, and page loads kept it from being reaped.
  const dataDir = mkdtempSync(join(tmpdir(), 'wsgw-local-secret-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  const ours = createIdentityKeys(TEST_SECRET);
  const theirs = createIdentityKeys('another-gateway-secret-of-32-characters');
  // GATEWAY_SECRET_ACCEPTED's (a rotation): its starts prove themselves here, so they are adopted.
  const accepted = createIdentityKeys('an-accepted-gateway-secret-of-32-characters');
  const first = createLocalProvisioner({ workspace: 'demo', dataDir, codeServerBin: 'none', demoReadyDelayMs: 0, parentEnv: process.env, adoptLeftovers: false });
  t.teardown(() => first.close());
  const pids: Record<string, number> = {};
  for (const [id, keys] of [['foreign', theirs], ['own', ours], ['rotated', accepted]] as const) {
    const r = await first.start({ workspaceId: id, generation: 3, identityKey: keys(id, 3), signal: new AbortController().signal, onStage: () => undefined });
    pids[id] = Number(r.handle);
  }
  // Their gateway died: run.json names an owner that is gone.
  const dead = spawn(process.execPath, ['-e', '0']);
  await new Promise((r) => dead.once('exit', r));
  for (const id of ['foreign', 'own', 'rotated']) {
    const file = join(dataDir, id, 'run.json');
    writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, 'utf8')), owner: dead.pid }));
  }
  const endpoint = (await first.describe('foreign'))!.endpoint;
  await t.rejects(provenConnection(endpoint.host, endpoint.port, { workspaceId: 'foreign', key: ours('foreign', 3) }, 2000), { name: 'IdentityFailure' }, 'the leftover cannot prove itself to this secret');

  const next = createLocalProvisioner({ workspace: 'demo', dataDir, codeServerBin: 'none', demoReadyDelayMs: 0, parentEnv: process.env, identityKeys: ours, acceptedIdentityKeys: accepted });
  t.teardown(() => next.close());
  t.same((await next.list()).map((w) => w.workspaceId).sort(), ['own', 'rotated'], 'only those started under this secret or the accepted one are adopted');
  for (let i = 0; i < 80 && alive(pids.foreign); i++) await new Promise((r) => setTimeout(r, 25));
  t.notOk(alive(pids.foreign), 'the other is killed');
  t.equal(await next.describe('foreign'), undefined, 'and not described as running');
  t.ok(alive(pids.own) && alive(pids.rotated), 'the adopted ones run on');
});

t.test('a workspace command that answers but never proves itself fails the start with BAD_CONFIG, not at the deadline', async (t) => {
  // A CODE_SERVER_BIN (a wrapper of the developer's) that drops NODE_OPTIONS loses the identity
  // preload: every probe is answered in full without a proof, and only START_DEADLINE ended the start.
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-local-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bin = join(dir, 'no-preload.sh');
  writeFileSync(bin, `#!/bin/sh\nNODE_OPTIONS= exec ${JSON.stringify(process.execPath)} ${JSON.stringify(bin.replace(/\.sh$/, '.cjs'))} "$@"\n`);
  writeFileSync(bin.replace(/\.sh$/, '.cjs'), STAND_IN);
  chmodSync(bin, 0o755);
  const provisioner = createLocalProvisioner({ workspace: 'code-server', dataDir: join(dir, 'data'), codeServerBin: bin, demoReadyDelayMs: 0, parentEnv: process.env, probeIntervalMs: 20 });
  t.teardown(() => provisioner.close());
  // The stand-in for the gateway's deadline: without the verdict, this is what ends the start.
  const abort = new AbortController();
  const deadline = setTimeout(() => abort.abort(new Error('test deadline')), 15_000);
  t.teardown(() => clearTimeout(deadline));
  const failure = await provisioner.start({ workspaceId: 'bare', generation: 1, identityKey: 'key', signal: abort.signal, onStage: () => undefined })
    .then(() => undefined, (err: unknown) => err as { code?: string });
  t.equal(failure?.code, 'BAD_CONFIG', 'failed as a configuration fault');
  t.notOk(abort.signal.aborted, 'before the deadline');
  t.same(await provisioner.list(), [], 'and nothing of it left running');
});

t.test('processExists table: a process of another user (EPERM) exists; a pid nobody has does not', async (t) => {
  // Asked by an unprivileged user, as a gateway of another user sharing LOCAL_DATA_DIR would be: pid 1 is root's.
  const module = fileURLToPath(new URL('../provisioner/local.js', import.meta.url));
  const gone = spawn(process.execPath, ['-e', '']);
  await new Promise((r) => gone.once('exit', r));
  const script = `import(${JSON.stringify(module)}).then((m) => process.stdout.write(JSON.stringify([m.processExists(1), m.processExists(${gone.pid}), m.processExists(process.pid)])))`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { uid: 65534, gid: 65534, cwd: '/' });
  let out = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  // stderr holds tap's exit hook failing to write its process record as that user (tap's spawn wrapper
  // puts it back into the child's environment): not the check's business.
  child.stderr.resume();
  await new Promise((r) => child.once('exit', r));
  t.equal(out, JSON.stringify([true, false, true]), 'another user\'s process, an exited one, its own');
});
