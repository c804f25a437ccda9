// codeserver/entrypoint.sh, outside Docker: first against a stand-in binary (the exact command line,
// exec, settings kept), then against the real code-server (CODE_SERVER_BIN, default
// /usr/local/bin/code-server): /healthz, the workbench, auto-save, the folder opened, files served.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { request as httpsRequest } from 'node:https';
import { createServer as createHttpServer } from 'node:http';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MISDIRECTED_FIELD, WORKSPACE_FIELD } from '../gateway/http-fields.js';
import { launchChromium, watchWebSockets } from './helpers/browser.js';
import { NAVIGATE, TEST_SECRET, XHR, request, startTestGateway } from './helpers/gateway.js';
import { connected, openWs } from './helpers/ws.js';
import { createIdentityKeys } from '../gateway/workspace-proof.js';

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

function run(env: Record<string, string>, args: readonly string[] = [], entrypoint = ENTRYPOINT): ChildProcess {
  // Its own process group, so the test can end code-server and everything it spawned.
  return spawn('sh', [entrypoint, ...args], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
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

  // Extra arguments that would move code-server off WORKSPACE_PORT (the last --bind-addr wins):
  // there the workspace-identity preload guards nothing, and it would serve any request.
  for (const args of [['--bind-addr', '0.0.0.0:9000'], ['--bind-addr=0.0.0.0:9000'], ['--port', '9000'], ['--host=::'], ['--socket', '/tmp/cs.sock']]) {
    const moved = await output(run({ ...env, WORKSPACE_ID: 'alice' }, args));
    t.equal(moved.code, 64, `${args.join(' ')}: refused`);
  }
});

t.test('the real code-server', async (t) => {
  const d = dirs(t);
  const port = await freePort();
  mkdirSync(d.workspace, { recursive: true });
  writeFileSync(join(d.workspace, 'before.txt'), 'written before the start\n');
  // Up when it says so on stdout (no polling); bounded so a broken install fails, not hangs.
  const { child, exited, log } = await started(t, {
    HOME: d.home, USER_DATA_DIR: d.userData, WORKSPACE_DIR: d.workspace, WORKSPACE_BIND_HOST: '127.0.0.1', WORKSPACE_PORT: String(port),
    CODE_SERVER_BIN,
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

t.test('the real code-server with WORKSPACE_ID: a request meant for another workspace gets 421, its own the workbench', async (t) => {
  const d = dirs(t);
  const port = await freePort();
  mkdirSync(d.workspace, { recursive: true });
  const { child } = await started(t, {
    HOME: d.home, USER_DATA_DIR: d.userData, WORKSPACE_DIR: d.workspace, WORKSPACE_BIND_HOST: '127.0.0.1', WORKSPACE_PORT: String(port),
    CODE_SERVER_BIN, WORKSPACE_ID: 'alice', WORKSPACE_KEY: 'alice-start-key',
  });

  const base = `http://127.0.0.1:${port}`;
  const folder = `/?folder=${encodeURIComponent(d.workspace)}`;
  const own = await fetch(`${base}${folder}`, { headers: { [WORKSPACE_FIELD]: 'alice' } });
  t.equal(own.status, 200, 'named for this workspace: served');
  t.match(await own.text(), /vscode-workbench-web-configuration/, 'the workbench HTML');
  for (const [name, headers] of [['meant for another workspace', { [WORKSPACE_FIELD]: 'bob' }], ['not named', {}]] as const) {
    const r = await fetch(`${base}${folder}`, { headers });
    t.same([r.status, r.headers.get(MISDIRECTED_FIELD)], [421, '1'], `${name}: 421 with the marker`);
    t.notMatch(await r.text(), /alice|workbench/, `${name}: nothing of the workspace in the answer`);
  }
  const health = await fetch(`${base}/healthz`);
  t.equal(health.status, 200, "/healthz without a name: the image's HEALTHCHECK");
  t.equal((await fetch(`${base}/healthz`, { headers: { [WORKSPACE_FIELD]: 'bob' } })).status, 421, "another workspace's probe is not healthy");
  const upgrade = await rawRequest(port, `GET /stable-x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n`
    + `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${WORKSPACE_FIELD}: bob\r\n\r\n`);
  t.match(upgrade.text, /^HTTP\/1\.1 421 [^]*\r\nx-gateway-misdirected: 1\r\n/i, 'a WebSocket upgrade meant for another workspace: 421');
  t.ok(upgrade.closed, 'and the socket closed');

  // Ways around the check that node:http or code-server could open: each still answered 421 (or by
  // node itself, with nothing of code-server's), whatever code-server serves at that path.
  const host = `Host: 127.0.0.1:${port}\r\n`;
  const ws = 'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n';
  const refusedRows: Array<[string, string]> = [
    ...['/healthz/', '//healthz', '/./healthz', '/%68ealthz', '/proxy/22/', '/absproxy/22/'].map((p): [string, string] => [`unnamed ${p}`, `GET ${p} HTTP/1.1\r\n${host}\r\n`]),
    ['VS Code\'s socket, upgrade spelled in upper case', `GET /?reconnectionToken=x&reconnection=false&skipWebSocketFrames=false HTTP/1.1\r\n${host}UPGRADE: WebSocket\r\n${ws}${WORKSPACE_FIELD}: bob\r\n\r\n`],
    ['upgrade field repeated', `GET /?reconnectionToken=x HTTP/1.1\r\n${host}Upgrade: websocket\r\nUpgrade: websocket\r\n${ws}\r\n`],
    ['Expect: 100-continue', `POST /vscode-remote-resource HTTP/1.1\r\n${host}Expect: 100-continue\r\nContent-Length: 2\r\n${WORKSPACE_FIELD}: bob\r\n\r\n`],
    ['pipelined behind an allowed /healthz', `GET /healthz HTTP/1.1\r\n${host}\r\nGET ${folder} HTTP/1.1\r\n${host}${WORKSPACE_FIELD}: bob\r\n\r\n`],
  ];
  for (const [name, payload] of refusedRows) {
    const r = await rawRequest(port, payload);
    t.match(r.text, /HTTP\/1\.1 421 [^]*\r\nx-gateway-misdirected: 1\r\n/i, `${name}: 421`);
    t.notMatch(r.text, /workbench|HTTP\/1\.1 101/, `${name}: nothing of code-server's`);
  }
  // A student's app behind code-server's /proxy/<port> answering a marked 421: passed on without the
  // marker, or the gateway would take it for a stale route and re-check the student's own workspace
  // on every such answer (a lever on the provisioner's AWS calls).
  const forger = createHttpServer((req, res) => { res.writeHead(421, { 'X-Gateway-Misdirected': '1' }); res.end('forged'); });
  forger.listen(0, '127.0.0.1');
  await once(forger, 'listening');
  t.teardown(() => { forger.close(); });
  const appPort = (forger.address() as { port: number }).port;
  const viaProxy = await fetch(`${base}/proxy/${appPort}/`, { headers: { [WORKSPACE_FIELD]: 'alice' } });
  t.same([viaProxy.status, viaProxy.headers.get(MISDIRECTED_FIELD), await viaProxy.text()], [421, null, 'forged'], "the app's 421, without the marker");
  forger.on('upgrade', (req, socket: import('node:stream').Duplex) => socket.end('HTTP/1.1 421 Misdirected Request\r\nX-Gateway-Misdirected: 1\r\nContent-Length: 0\r\n\r\n'));
  const forgedUpgrade = await rawRequest(port, `GET /proxy/${appPort}/ HTTP/1.1\r\n${host}Upgrade: websocket\r\n${ws}${WORKSPACE_FIELD}: alice\r\n\r\n`);
  t.match(forgedUpgrade.text, /^HTTP\/1\.1 421 /, "an upgrade: the app's 421");
  t.notMatch(forgedUpgrade.text, /x-gateway-misdirected/i, 'without the marker');
  const implicit = createHttpServer((req, res) => { res.statusCode = 421; res.setHeader(MISDIRECTED_FIELD, '1'); res.end('forged'); });
  implicit.listen(0, '127.0.0.1');
  await once(implicit, 'listening');
  t.teardown(() => { implicit.close(); });
  const viaProxy2 = await fetch(`${base}/proxy/${(implicit.address() as { port: number }).port}/`, { headers: { [WORKSPACE_FIELD]: 'alice' } });
  t.same([viaProxy2.status, viaProxy2.headers.get(MISDIRECTED_FIELD)], [421, null], 'the same with the status and field set before the body');

  const connect = await rawRequest(port, `CONNECT 127.0.0.1:22 HTTP/1.1\r\n${host}\r\n`);
  t.same([connect.text, connect.closed], ['', true], 'CONNECT: closed unanswered (code-server has no connect listener)');
  const expectation = await rawRequest(port, `POST / HTTP/1.1\r\n${host}Expect: other\r\nContent-Length: 0\r\n\r\n`);
  t.match(expectation.text, /^HTTP\/1\.1 417 /, 'another expectation: node answers 417 itself');

  // The workbench in Chromium, every request (WebSockets included) named for this workspace: the
  // extension host, a process code-server forks with NODE_OPTIONS inherited, starts and talks.
  const browser = await launchChromium();
  t.teardown(() => browser.close());
  const page = await browser.newPage();
  await page.setExtraHTTPHeaders({ [WORKSPACE_FIELD]: 'alice' });
  const sockets = watchWebSockets(page);
  await page.goto(`${base}${folder}`);
  await page.waitForSelector('.monaco-workbench', { timeout: 120_000 });
  t.ok((await sockets.waitBusy(2)) >= 2, 'both WebSockets (management, extension host) carry traffic');
  await until(() => /--type=extensionHost/.test(groupCommands(child.pid!)), 30_000);
  t.pass('the extension host runs');
  // Only the server on WORKSPACE_PORT loads the preload: what it forks afterwards has it no more.
  const forked = groupProcesses(child.pid!).filter(([, cmd]) => /--type=(extensionHost|ptyHost)/.test(cmd));
  t.ok(forked.length >= 1);
  for (const [pid, cmd] of forked) t.notMatch(environOf(pid).NODE_OPTIONS ?? '', /workspace-identity/, `${/--type=\w+/.exec(cmd)![0]}: no preload`);
  // Nor the start's key: a program of the student's could print it (their own /proc shows the
  // server's, which proves only that they are themselves).
  for (const [pid, cmd] of forked) t.equal(environOf(pid).WORKSPACE_KEY, undefined, `${/--type=\w+/.exec(cmd)![0]}: no WORKSPACE_KEY`);
  // A terminal: the pty host's shell. The key is pressed again every few seconds until one runs: on a
  // loaded machine (CI) the first press could come before the workbench took its keybindings, and
  // no shell ever started (a CI run found none in 30 s). Pressed again once the terminal is open, it
  // only hides the panel; the shell stays.
  const isShell = ([, cmd]: [number, string]) => /^(\/usr)?\/bin\/(ba|da)?sh( |$)/.test(cmd) && !/entrypoint/.test(cmd);
  for (let press = 0; press < 10 && !groupProcesses(child.pid!).some(isShell); press++) {
    await page.keyboard.press('Control+Backquote');
    await until(() => groupProcesses(child.pid!).some(isShell), 4_000).catch(() => undefined);
  }
  const shells = groupProcesses(child.pid!).filter(isShell);
  t.ok(shells.length >= 1, `a terminal's shell runs (${shells.length})`);
  for (const [pid] of shells) t.equal(environOf(pid).WORKSPACE_KEY, undefined, `the terminal's shell ${pid}: no WORKSPACE_KEY`);
});

t.test('the real code-server with WORKSPACE_KEY behind the gateway: the workbench and a WebSocket, on proven connections only', async (t) => {
  const d = dirs(t);
  const port = await freePort();
  mkdirSync(d.workspace, { recursive: true });
  const generation = 5;
  const key = createIdentityKeys(TEST_SECRET)('carol', generation);
  await started(t, {
    HOME: d.home, USER_DATA_DIR: d.userData, WORKSPACE_DIR: d.workspace, WORKSPACE_BIND_HOST: '127.0.0.1', WORKSPACE_PORT: String(port),
    CODE_SERVER_BIN, WORKSPACE_ID: 'carol', WORKSPACE_KEY: key,
  });
  const gw = await startTestGateway();
  t.teardown(() => gw.close());
  const now = Date.now();
  const record = { id: 'carol', state: 'running' as const, generation, since: now, endpoint: { host: '127.0.0.1', port, proves: true as const }, startedAt: now };
  await gw.store.putWorkspace(record);
  await gw.store.publish({ record });
  const cookie = await gw.cookie('carol');
  const host = 'ws-carol.localhost';
  const page = await request(gw.port, { host, path: `/?folder=${encodeURIComponent(d.workspace)}`, headers: { ...NAVIGATE, cookie } });
  t.equal(page.status, 200, 'the workbench page through the gateway');
  t.match(page.body, /vscode-workbench-web-configuration/);
  const ws = await connected(openWs(gw.port, '/?reconnectionToken=proof-test&reconnection=false&skipWebSocketFrames=false', { cookie, host }));
  t.pass('a WebSocket upgrade through the gateway opened');
  ws.terminate();
  t.match(await gw.metrics.registry.metrics(), /workspace_identity_failures_total\{reason="unproven"\} 0\n/, 'no identity failure');
  // The previous generation's route, at the same address: refused before any request is sent.
  await gw.store.putWorkspace({ ...record, generation: generation + 1 });
  await gw.store.publish({ record: { ...record, generation: generation + 1 } });
  const stale = await request(gw.port, { host, path: '/', headers: { ...XHR, cookie } });
  t.same([stale.status, stale.headers['x-gateway-error']], [502, 'UPSTREAM_UNREACHABLE'], 'a route of another start: not proven');
});

/** Started with `args` after the entrypoint's own; ended (its whole process group) at teardown once `ready` was printed. */
async function started(t: { teardown(fn: () => unknown): void }, env: Record<string, string>, args: readonly string[] = [], ready = /HTTP server listening on/, entrypoint = ENTRYPOINT): Promise<{ child: ChildProcess; exited: Promise<unknown[]>; log: string }> {
  const child = run(env, args, entrypoint);
  const exited = once(child, 'exit');
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      process.kill(-child.pid!, 'SIGTERM');
      const timer = setTimeout(() => process.kill(-child.pid!, 'SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
  });
  let log = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not started within 45 s:\n${log}`)), 45_000);
    const onData = (b: Buffer) => { log += b; if (ready.test(log)) { clearTimeout(timer); resolve(); } };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    void exited.then(() => reject(new Error(`exited before it listened:\n${log}`)));
  });
  return { child, exited, log };
}

t.test('code-server serving HTTPS (--cert passed through the entrypoint) refuses requests meant for another workspace too', async (t) => {
  // code-server's --cert server is httpolyglot's (an https.Server answering plain HTTP as well), not an
  // http.Server: the gateway still reaches it in plain HTTP, so the check must hold there.
  const d = dirs(t);
  const port = await freePort();
  mkdirSync(d.workspace, { recursive: true });
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1',
    '-keyout', join(d.base, 'key.pem'), '-out', join(d.base, 'cert.pem')], { stdio: 'ignore' });
  await started(t, {
    HOME: d.home, USER_DATA_DIR: d.userData, WORKSPACE_DIR: d.workspace, WORKSPACE_BIND_HOST: '127.0.0.1', WORKSPACE_PORT: String(port),
    CODE_SERVER_BIN, WORKSPACE_ID: 'alice',
  }, ['--cert', join(d.base, 'cert.pem'), '--cert-key', join(d.base, 'key.pem')], /HTTPS server listening on/);
  const folder = `/?folder=${encodeURIComponent(d.workspace)}`;
  const get = (headers: Record<string, string>) => new Promise<{ status: number; marked: boolean; body: string }>((resolve, reject) => {
    const req = httpsRequest({ host: '127.0.0.1', port, path: folder, headers, rejectUnauthorized: false, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (c: string) => (body += c)).on('end', () => resolve({ status: res.statusCode ?? 0, marked: res.headers[MISDIRECTED_FIELD] === '1', body }));
    });
    req.on('error', reject);
    req.end();
  });
  const own = await get({ [WORKSPACE_FIELD]: 'alice' });
  t.equal(own.status, 200, 'its own: the workbench');
  t.match(own.body, /vscode-workbench-web-configuration/);
  for (const [name, headers] of [['meant for another workspace', { [WORKSPACE_FIELD]: 'bob' }], ['not named', {}]] as const) {
    const r = await get(headers);
    t.same([r.status, r.marked], [421, true], `${name} (TLS): 421 with the marker`);
  }
  const plain = await rawRequest(port, `GET ${folder} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${WORKSPACE_FIELD}: bob\r\n\r\n`);
  t.match(plain.text, /^HTTP\/1\.1 421 [^]*\r\nx-gateway-misdirected: 1\r\n/i, 'meant for another workspace (plain HTTP, as the gateway speaks): 421');
});

t.test('the preload from a folder whose name has spaces, quotes and a backslash, beside the image\'s own NODE_OPTIONS', async (t) => {
  // A stand-in code-server (a Node program, as code-server is) that reports the NODE_OPTIONS it runs
  // with and those a program it starts gets, and whether the image's own preload ran in each.
  const d = dirs(t);
  const odd = join(d.base, 'a b "c" d\\e');
  mkdirSync(odd, { recursive: true });
  const entrypoint = join(odd, 'entrypoint.sh');
  copyFileSync(ENTRYPOINT, entrypoint);
  copyFileSync(fileURLToPath(new URL('../../codeserver/workspace-identity.cjs', import.meta.url)), join(odd, 'workspace-identity.cjs'));
  const imagePreload = join(d.base, 'image preload.cjs');
  writeFileSync(imagePreload, 'globalThis.imagePreloaded = true;\n');
  const fake = join(d.base, 'fake-code-server');
  writeFileSync(fake, `#!/usr/bin/env node
const http = require('node:http');
const { execFileSync } = require('node:child_process');
const bind = process.argv[process.argv.indexOf('--bind-addr') + 1];
const report = 'process.stdout.write(JSON.stringify({ options: process.env.NODE_OPTIONS ?? null, image: globalThis.imagePreloaded === true }))';
http.createServer((req, res) => {
  const child = JSON.parse(execFileSync(process.execPath, ['-e', report]).toString());
  res.end(JSON.stringify({ image: globalThis.imagePreloaded === true, child }));
}).listen(Number(bind.slice(bind.lastIndexOf(':') + 1)), bind.slice(0, bind.lastIndexOf(':')), () => console.log('HTTP server listening on'));
`);
  chmodSync(fake, 0o755);
  const port = await freePort();
  await started(t, {
    HOME: d.home, USER_DATA_DIR: d.userData, WORKSPACE_DIR: d.workspace, WORKSPACE_BIND_HOST: '127.0.0.1', WORKSPACE_PORT: String(port),
    CODE_SERVER_BIN: fake, WORKSPACE_ID: 'alice', NODE_OPTIONS: `--require "${imagePreload}"`,
  }, [], /HTTP server listening on/, entrypoint);
  const ask = (headers: Record<string, string>) => fetch(`http://127.0.0.1:${port}/`, { headers });
  t.same([(await ask({})).status, (await ask({ [WORKSPACE_FIELD]: 'bob' })).status], [421, 421], 'others refused');
  const own = await ask({ [WORKSPACE_FIELD]: 'alice' });
  t.equal(own.status, 200, 'its own served');
  const seen = (await own.json()) as { image: boolean; child: { options: string | null; image: boolean } };
  t.ok(seen.image, "the image's own preload ran in code-server");
  t.ok(seen.child.image, "and in what code-server starts");
  t.notMatch(seen.child.options ?? '', /workspace-identity/, 'which does not load the workspace preload');
});

/** Sends bytes on one connection; what came back before the server closed it (or 2 s passed). */
function rawRequest(port: number, payload: string): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1', () => s.write(payload));
    let text = '';
    const timer = setTimeout(() => { s.destroy(); resolve({ text, closed: false }); }, 2000);
    s.on('data', (b) => { text += b.toString('latin1'); });
    s.on('close', () => { clearTimeout(timer); resolve({ text, closed: true }); });
    s.on('error', () => undefined);
  });
}

/** [pid, command line] of every process in a process group. */
function groupProcesses(pgid: number): Array<[number, string]> {
  const out: Array<[number, string]> = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]) !== pgid) continue;
      out.push([Number(entry), readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').join(' ')]);
    } catch { /* gone */ }
  }
  return out;
}
const groupCommands = (pgid: number) => groupProcesses(pgid).map(([, c]) => c).join('\n');

function environOf(pid: number): Record<string, string> {
  const env: Record<string, string> = {};
  try {
    for (const entry of readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0')) {
      const eq = entry.indexOf('=');
      if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
    }
  } catch { /* gone */ }
  return env;
}

async function until(cond: () => boolean, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 100));
  }
}
