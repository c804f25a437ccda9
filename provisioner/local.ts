// The local provisioner: one process per workspace on a free loopback port, with a data folder per
// workspace that survives stops (as EFS does in production). It runs the real code-server when one
// is installed, otherwise the built-in demo workspace. Readiness is a probe of the workspace's
// /healthz, never a sleep.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { accessSync, constants, linkSync, mkdirSync, renameSync, writeFileSync, existsSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { request } from 'node:http';
import { connect, createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WORKSPACE_FIELD } from '../gateway/http-fields.js';
import { nodeOption } from '../codeserver/workspace-identity.cjs';
import {
  START_STAGES, StartFailure, type Endpoint, type Provisioner, type RunningWorkspace, type StartRequest, type StartResult,
} from './contract.js';
import { UNPROVEN_PROBES_TO_FAIL, provenForProbe, unprovenInARow, type ProbeVerdict } from './readiness.js';

export interface LocalProvisionerOptions {
  /** `auto`: code-server when `codeServerBin` is found, else the demo workspace. */
  workspace: 'auto' | 'demo' | 'code-server';
  dataDir: string;
  codeServerBin: string;
  /** The demo workspace answers its health probe only after this long (to see the starting page). */
  demoReadyDelayMs: number;
  probeIntervalMs?: number;
  log?: (obj: Record<string, unknown>, msg: string) => void;
  /** The environment the gateway was started with; a workspace inherits only `workspaceEnv` of it. */
  parentEnv: Readonly<Record<string, string | undefined>>;
  /** code-server's workspace-identity preload; default: the one this build ships (dist/codeserver/). */
  identityPreload?: string;
  /** Picks the port a workspace is started on; default: one the kernel has free now (tests inject a taken one). */
  choosePort?: () => Promise<number>;
  /**
   * Kill or adopt what a dead gateway left (sweepLeftovers); default true. The standalone reaper says
   * false: it serves no one, and closing after one pass would stop what it adopted, in use or not.
   */
  adoptLeftovers?: boolean;
  /**
   * The gateway's start keys (gateway/workspace-proof.ts createIdentityKeys): a ready leftover started
   * with another key (by a gateway with another GATEWAY_SECRET, a generated one in development) could
   * never prove itself to this one, so it is killed instead of adopted. Without it: adopted, as before.
   */
  identityKeys?: (workspaceId: string, generation: number) => string;
  /** The keys under GATEWAY_SECRET_ACCEPTED (a rotation): a leftover started with one proves itself here too, so it is adopted. */
  acceptedIdentityKeys?: (workspaceId: string, generation: number) => string;
}

/**
 * What a workspace may inherit from the gateway's environment: what a shell, git and code-server need
 * (search path, locale, time zone, terminal, user, the proxies and CA files its extension gallery goes
 * through), never the gateway's own settings. The student types into a terminal of this process tree,
 * and GATEWAY_SECRET signs every workspace's sessions (ADMIN_TOKEN, REDIS_URL, REDIS_PASSWORD and AWS
 * credentials likewise open more than this workspace). A Fargate task gets only its task definition's.
 */
const INHERITED = /^(PATH|LANG|LANGUAGE|LC_[A-Z]+|TZ|TERM|COLORTERM|SHELL|USER|LOGNAME|TMPDIR|(HTTPS?|NO|ALL)_PROXY|(https?|no|all)_proxy|NODE_EXTRA_CA_CERTS|SSL_CERT_(FILE|DIR))$/;

export function workspaceEnv(parent: Readonly<Record<string, string | undefined>>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries(parent)) if (value !== undefined && INHERITED.test(name)) env[name] = value;
  return env;
}

/** run.json as writeRun wrote it (fields after RunningWorkspace's: absent in one an older gateway wrote). */
type RunRecord = RunningWorkspace & { owner?: number; starting?: boolean; pidStart?: string; keyCheck?: string };

interface Running { child: ChildProcess; endpoint: Endpoint; generation: number; startedAt: number; exited: Promise<void>; pidStart: string | undefined; keyCheck: string }

/**
 * What run.json keeps of a start's key: enough to tell whether a gateway derives the same key, not the
 * key (which only its workspace holds). An HMAC, so the key cannot be read back from it.
 */
export function keyCheckOf(identityKey: string): string {
  return createHmac('sha256', identityKey).update('workspace-gateway/run.json').digest('base64url').slice(0, 22);
}

/**
 * `bin` itself when it names a path, else the first executable file called `bin` in `searchPath`'s
 * folders, as a shell's `command -v` finds it, but with no shell: CODE_SERVER_BIN was once put into
 * `sh -c`, where a `$(…)` in it ran. An empty entry (the current folder, to POSIX) is skipped.
 */
export function findOnPath(bin: string, searchPath: string | undefined): string | undefined {
  if (bin.includes('/')) return existsSync(bin) ? resolve(bin) : undefined;
  for (const dir of (searchPath ?? '').split(':')) {
    if (!dir) continue;
    const candidate = join(dir, bin);
    try {
      accessSync(candidate, constants.X_OK);
      if (statSync(candidate).isFile()) return candidate;
    } catch { /* not here */ }
  }
  return undefined;
}

/**
 * Which process a pid names: the boot and the start time in clock ticks since it (proc(5),
 * /proc/<pid>/stat field 22), so a pid the kernel handed to another process, after the first one
 * died or the machine rebooted, does not match. Undefined where there is no /proc (not Linux) or no
 * such process.
 */
export function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name, which may hold spaces and parentheses: its closing one is the last.
    const startTicks = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
    const boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    return startTicks ? `${boot}:${startTicks}` : undefined;
  } catch { return undefined; }
}

/**
 * Whether a process with this pid exists: signal 0 checks without sending anything. EPERM is a
 * process that exists and is not ours to signal (a gateway replica of another user sharing
 * LOCAL_DATA_DIR): taken for dead, its workspaces were killed or adopted from under it.
 */
export function processExists(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (err) { return (err as NodeJS.ErrnoException).code === 'EPERM'; }
}

/** Whether anything accepts a connection at `endpoint` now. */
function accepts(endpoint: Endpoint, timeoutMs = 1000): Promise<boolean> {
  return new Promise((res) => {
    const socket = connect({ host: endpoint.host, port: endpoint.port });
    const done = (yes: boolean) => { clearTimeout(t); socket.destroy(); res(yes); };
    const t = setTimeout(() => done(false), timeoutMs);
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/**
 * The `n`-th claim to adopt (or kill) the leftover in workspace folder `dir` that gateway process `owner`
 * left when it died (sweepLeftovers): it names the claiming process as `{ pid, pidStart }`.
 */
export const adoptionClaimFile = (dir: string, owner: number, n: number): string => join(dir, `adopt.${owner}.${n}.claim`);
const CLAIM_NAME = /^adopt\.\d+\.\d+\.claim$/;

async function anyFreePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address() as { port: number }; s.close(() => res(port)); });
  });
}

/**
 * One GET /healthz with a short timeout, naming the workspace it is for; healthy on 2xx. Another
 * workspace's process on a reused port answers 421 (codeserver/workspace-identity.cjs). Asked on a
 * connection that has first proven it reaches this start (its key): whatever else took the port
 * (a process of the student's own) is never taken for the workspace.
 */
async function probe(id: string, endpoint: Endpoint, key: string, timeoutMs = 1000): Promise<ProbeVerdict> {
  const socket = await provenForProbe(endpoint.host, endpoint.port, { workspaceId: id, key }, timeoutMs);
  if (typeof socket === 'string') return socket;
  return new Promise((res) => {
    const req = request({ host: endpoint.host, port: endpoint.port, path: '/healthz', timeout: timeoutMs, createConnection: () => socket, headers: { [WORKSPACE_FIELD]: id } }, (r) => {
      r.resume();
      r.once('end', () => socket.destroy());
      res((r.statusCode ?? 500) < 300 ? 'healthy' : 'down');
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => res('down'));
    req.end();
  });
}

/**
 * Ports one start tries. freePort() lets its port go before the child binds it, so another process
 * (another workspace's start, anything on the machine) can take it meanwhile: the child then exits
 * with EADDRINUSE, which is no fault of the workspace. Bounded: a port chooser that keeps handing
 * out taken ports must still end the start.
 */
export const PORT_TRIES = 3;

/** The child could not bind its port (EADDRINUSE): the start is tried again on another one. */
class PortTaken extends Error {
  constructor(readonly port: number, readonly failure: unknown) {
    super(`port ${port} was taken before the workspace bound it`);
  }
}

/** Passes each stage on once, never backwards: a start tried again on another port goes through them again. */
function forwardOnly(onStage: StartRequest['onStage']): StartRequest['onStage'] {
  let last = -1;
  return (report) => {
    const i = START_STAGES.indexOf(report.stage);
    if (i < last || (i === last && report.stage !== 'queued')) return;
    last = i;
    onStage(report);
  };
}

/** code-server's user settings as the platform's image has them: auto-save after 1 s. */
export const CODE_SERVER_SETTINGS = {
  'files.autoSave': 'afterDelay',
  'files.autoSaveDelay': 1000,
  'workbench.startupEditor': 'none',
  'telemetry.telemetryLevel': 'off',
  'security.workspace.trust.enabled': false,
};

export function createLocalProvisioner(opts: LocalProvisionerOptions): Provisioner & { mode: 'demo' | 'code-server' } {
  const running = new Map<string, Running>();
  const codeServer = opts.workspace === 'demo' ? undefined : findOnPath(opts.codeServerBin, opts.parentEnv.PATH);
  if (opts.workspace === 'code-server' && !codeServer) throw new Error(`CODE_SERVER_BIN: "${opts.codeServerBin}" not found (LOCAL_WORKSPACE=code-server)`);
  const mode = codeServer ? 'code-server' : 'demo';
  const demoScript = fileURLToPath(new URL('./demo-workspace.js', import.meta.url));
  // code-server's preload that refuses requests meant for another workspace (as the image's
  // entrypoint loads it): a port freed by one workspace and taken by another's process must not
  // serve the first one's student. The demo workspace makes the same check itself.
  const identityPreload = opts.identityPreload ?? fileURLToPath(new URL('../codeserver/workspace-identity.cjs', import.meta.url));
  // Quoted as Node reads NODE_OPTIONS (the preload's own rule): a checkout under a path with a space,
  // a " or a \ must not stop code-server from starting.
  const preloadOption = nodeOption(`--require=${identityPreload}`);
  const probeEvery = opts.probeIntervalMs ?? 100;
  const log = opts.log ?? (() => undefined);
  const inherited = workspaceEnv(opts.parentEnv);
  const freePort = opts.choosePort ?? anyFreePort;

  /** `key`: the start's identityKey, as WORKSPACE_KEY (its preload, or the demo, proves with it and keeps it from what it forks). */
  function command(id: string, port: number, dir: string, key: string): { cmd: string; args: string[]; env: Record<string, string> } {
    if (mode === 'demo') {
      return { cmd: process.execPath, args: [demoScript, '--port', String(port), '--data', join(dir, 'project'), '--id', id, '--ready-delay-ms', String(opts.demoReadyDelayMs)], env: { ...inherited, WORKSPACE_KEY: key } };
    }
    const home = join(dir, 'home');
    const userData = join(dir, 'user-data');
    mkdirSync(join(userData, 'User'), { recursive: true });
    mkdirSync(home, { recursive: true });
    writeFileSync(join(userData, 'User', 'settings.json'), JSON.stringify(CODE_SERVER_SETTINGS, null, 2));
    return {
      cmd: codeServer!,
      args: ['--auth', 'none', '--bind-addr', `127.0.0.1:${port}`, '--user-data-dir', userData, '--extensions-dir', join(dir, 'extensions'),
        '--disable-telemetry', '--disable-update-check', '--disable-workspace-trust', join(dir, 'project')],
      // Its own HOME: code-server writes ~/.config/code-server/config.yaml at every start.
      env: { ...inherited, HOME: home, WORKSPACE_ID: id, WORKSPACE_PORT: String(port), WORKSPACE_KEY: key, NODE_OPTIONS: preloadOption },
    };
  }

  async function start(req: StartRequest): Promise<StartResult> {
    const once = { ...req, onStage: forwardOnly(req.onStage) };
    for (let tries = 1; ; tries++) {
      try {
        return await startOnce(once);
      } catch (err) {
        if (!(err instanceof PortTaken)) throw err;
        if (tries >= PORT_TRIES) {
          throw new StartFailure('TASK_STOPPED', `the workspace process could not bind its port (EADDRINUSE), ${tries} ports tried`, { cause: err.failure });
        }
        log({ workspaceId: req.workspaceId, port: err.port, tries }, 'workspace port taken before it was bound: trying another');
      }
    }
  }

  /** One try of a start, on one port. */
  async function startOnce(req: StartRequest): Promise<StartResult> {
    const { workspaceId: id, signal } = req;
    const existing = running.get(id);
    if (existing && existing.generation === req.generation) {
      return { endpoint: existing.endpoint, handle: String(existing.child.pid) };
    }
    req.onStage({ stage: 'provisioning' });
    const dir = resolve(opts.dataDir, id);
    mkdirSync(join(dir, 'project'), { recursive: true });
    const port = await freePort();
    // Both kinds of local workspace prove who they are: the route asks every new connection to.
    const endpoint: Endpoint = { host: '127.0.0.1', port, proves: true };
    const { cmd, args, env } = command(id, port, dir, req.identityKey);
    req.onStage({ stage: 'pending' });
    // Its own process group: code-server forks an extension host and a pty host, and a stop must take
    // them all, as stopping a Fargate task does (an orphaned extension host was seen outliving its server).
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    let stderr = '';
    child.stderr?.on('data', (c: Buffer) => { stderr = (stderr + c.toString()).slice(-2000); });
    let exitInfo: string | undefined;
    const exited = new Promise<void>((res) => child.once('exit', (code, sig) => { exitInfo = sig ? `signal ${sig}` : `code ${code}`; res(); }));
    child.once('error', (err) => { exitInfo = err.message; });
    const entry: Running = { child, endpoint, generation: req.generation, startedAt: Date.now(), exited, pidStart: child.pid ? processStart(child.pid) : undefined, keyCheck: keyCheckOf(req.identityKey) };
    running.set(id, entry);
    exited.then(() => {
      if (running.get(id) === entry) running.delete(id);
      // Exited by itself (a crash): what it forked (extension host, pty host and the student's
      // shells) would run on unowned next to the next start's tree. Its group id stays reserved
      // while any of them lives, so this reaches only them.
      if (child.pid !== undefined) signalGroup(child.pid, 'SIGKILL');
    });
    // Recorded at once, not only when ready: it runs detached, so a gateway killed mid-start (SIGKILL,
    // a crash) left it running where nothing knew of it. The next provisioner finds it (sweepLeftovers).
    if (child.pid) {
      writeRun(id, entry, true);
      exited.then(() => forgetRun(id, child.pid!));
    }
    if (child.pid) req.onHandle?.(String(child.pid));
    log({ workspaceId: id, pid: child.pid, port, mode }, 'workspace process started');
    req.onStage({ stage: 'running' });
    req.onStage({ stage: 'probing' });
    let unproven = 0;
    try {
      for (;;) {
        if (signal.aborted) throw signal.reason instanceof Error ? signal.reason : new StartFailure('ABORTED', 'start aborted');
        if (exitInfo) {
          const last = stderr.trim().split('\n').slice(-3).join(' | ');
          throw new StartFailure('TASK_STOPPED', `the workspace process exited (${exitInfo})${last ? `: ${last}` : ''}`);
        }
        const verdict = await probe(id, endpoint, req.identityKey);
        if (verdict === 'healthy') break;
        // It answers, without the proof its preload gives: waiting would only reach START_DEADLINE.
        unproven = unprovenInARow(unproven, verdict);
        if (unproven >= UNPROVEN_PROBES_TO_FAIL) {
          throw new StartFailure('BAD_CONFIG', `the workspace answers but cannot prove it is this start (${unproven} probes in a row): `
            + (mode === 'demo' ? 'the demo workspace did not get WORKSPACE_KEY' : `${cmd} does not pass NODE_OPTIONS (the workspace-identity preload) or WORKSPACE_KEY on to code-server`));
        }
        await new Promise<void>((res) => {
          // Wake early on abort or exit; listeners are removed every round so long starts do not pile them up.
          const wake = () => { clearTimeout(t); signal.removeEventListener('abort', wake); child.off('exit', onExit); res(); };
          const onExit = () => setImmediate(wake);
          const t = setTimeout(wake, probeEvery);
          signal.addEventListener('abort', wake, { once: true });
          child.once('exit', onExit);
        });
      }
    } catch (err) {
      await stopProcess(entry);
      if (exitInfo && /EADDRINUSE/.test(stderr) && !signal.aborted) throw new PortTaken(port, err);
      // The unproven answers may have come from a server of anything else that took the port before the
      // workspace bound it (code-server takes seconds to): then it still listens once this start's
      // processes are gone, and the start goes on on another port, where a workspace without its
      // preload would have fallen silent.
      if (unproven >= UNPROVEN_PROBES_TO_FAIL && !signal.aborted && child.pid !== undefined && await heldByAnother(child.pid, endpoint)) {
        throw new PortTaken(port, err);
      }
      throw err;
    }
    req.onStage({ stage: 'ready' });
    writeRun(id, entry, false);
    return { endpoint, handle: String(child.pid) };
  }

  /** Signals a workspace's whole process group; false once nothing is left in it. */
  const signalGroup = (pid: number, sig: NodeJS.Signals | 0) => { try { process.kill(-pid, sig); return true; } catch { return false; } };

  /**
   * Whether a server outside process group `pid` listens at `endpoint`: asked once the group is gone
   * (bounded); false when it cannot be told (a member left as a zombie nobody reaps).
   */
  async function heldByAnother(pid: number, endpoint: Endpoint): Promise<boolean> {
    for (let i = 0; i < 100 && signalGroup(pid, 0); i++) await new Promise((r) => setTimeout(r, 20));
    return !signalGroup(pid, 0) && accepts(endpoint);
  }

  async function stopProcess(entry: Running) {
    const pid = entry.child.pid;
    if (pid === undefined) return;
    if (entry.child.exitCode === null && entry.child.signalCode === null) {
      signalGroup(pid, 'SIGTERM');
      const killer = setTimeout(() => signalGroup(pid, 'SIGKILL'), 5000);
      await entry.exited;
      clearTimeout(killer);
    }
    // Whatever the server left behind once it is gone.
    signalGroup(pid, 'SIGKILL');
  }

  const view = (id: string, r: Running): RunningWorkspace => ({ workspaceId: id, generation: r.generation, endpoint: r.endpoint, handle: String(r.child.pid), startedAt: r.startedAt });

  // run.json in the workspace folder is the local stand-in for Cloud Map: another gateway process on
  // this machine (two replicas in development and tests) can find and stop a workspace through it.
  const runFile = (id: string) => join(resolve(opts.dataDir, id), 'run.json');
  const alive = processExists;
  /**
   * `owner`: the gateway process that started (or adopted) it; `starting`: not ready yet, so no route;
   * `pidStart`: which process the pid named then (processStart), where the system says; `keyCheck`:
   * which key the workspace was given (keyCheckOf).
   */
  const writeRun = (id: string, r: Running, starting: boolean) =>
    replaceRun(id, { ...view(id, r), owner: process.pid, starting, pidStart: r.pidStart, keyCheck: r.keyCheck });
  /**
   * Writes run.json whole or not at all (aside, then renamed over it): another replica reading it
   * meanwhile (a describe, a stop, a sweep) must not find it unreadable, taken for no workspace.
   */
  function replaceRun(id: string, record: object): void {
    const next = `${runFile(id)}.${process.pid}.next`;
    writeFileSync(next, JSON.stringify(record));
    renameSync(next, runFile(id));
  }
  /**
   * run.json as written, if its process is still the one it names; undefined if none or unreadable.
   * run.json outlives its process when the gateway dies too (a reboot, the OOM killer taking both),
   * and the kernel hands the pid to another process: alive alone took that one for the workspace,
   * so a sweep killed or adopted it and a stop signalled its process group.
   */
  function readRecord(id: string): RunRecord | undefined {
    try {
      const r = JSON.parse(readFileSync(runFile(id), 'utf8')) as RunRecord;
      const pid = Number(r.handle);
      return (r.pidStart === undefined ? alive(pid) : processStart(pid) === r.pidStart) ? r : undefined;
    } catch { return undefined; }
  }
  /** A ready workspace recorded in run.json, as the contract reports it. */
  function readRun(id: string): RunningWorkspace | undefined {
    const r = readRecord(id);
    if (!r || r.starting) return undefined;
    return { workspaceId: r.workspaceId, generation: r.generation, endpoint: r.endpoint, handle: r.handle, startedAt: r.startedAt };
  }

  /** Stops a workspace this process did not spawn by its recorded pid's group, waiting (bounded) until it is gone. */
  async function stopRecorded(id: string, pid: number): Promise<void> {
    signalGroup(pid, 'SIGTERM');
    for (let i = 0; i < 100 && alive(pid); i++) await new Promise((r) => setTimeout(r, 50));
    signalGroup(pid, 'SIGKILL');
    forgetRun(id, pid);
  }

  /** Removes run.json once `pid`'s workspace is gone, unless it names another live workspace by now (a new start). */
  function forgetRun(id: string, pid: number): void {
    const r = readRecord(id);
    if (!r || r.handle === String(pid)) rmSync(runFile(id), { force: true });
  }

  const adopted = new Map<string, RunningWorkspace>();

  /** This process as a claim names it; with its start, so a pid the kernel hands on later is not taken for it. */
  const claimant = JSON.stringify({ pid: process.pid, pidStart: processStart(process.pid) });
  /** Whether a claim's process still runs: one that cannot be read (hand-edited, a torn disk) is taken for dead. */
  function claimHeld(file: string): boolean | 'gone' {
    let c: { pid?: unknown; pidStart?: unknown };
    try { c = JSON.parse(readFileSync(file, 'utf8')) as typeof c; } catch (err) { return (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'gone' : false; }
    if (typeof c.pid !== 'number') return false;
    return typeof c.pidStart === 'string' ? processStart(c.pid) === c.pidStart : alive(c.pid);
  }
  /**
   * Claims the leftover dead gateway `owner` left in workspace folder `dir` for this process, so that
   * of replicas sharing LOCAL_DATA_DIR and starting together exactly one adopts (or kills) it: each
   * read run.json naming the dead owner, and each adopted it. The claims are numbered; this process
   * holds the lowest one whose holder lives. Each is whole before it appears (a link, which fails
   * when the name is taken), so none is seen half written and taken for a dead one's. One whose holder
   * died mid-adoption is passed over, never removed while run.json names that owner (two replicas
   * removing it at once could each then take the name): it blocks nothing. Undefined: a live process
   * holds one, so the leftover is that one's to adopt. Else our claim, to remove when done.
   */
  function claimLeftover(dir: string, owner: number): string | undefined {
    const draft = join(dir, `adopt.${process.pid}.draft`);
    writeFileSync(draft, claimant);
    try {
      // Bounded: each claim passed over is a gateway that died while adopting this very leftover.
      for (let n = 0, tries = 0; n < 64 && tries < 256; tries++) {
        const file = adoptionClaimFile(dir, owner, n);
        try {
          linkSync(draft, file);
          return file;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        }
        const held = claimHeld(file);
        if (held === true) return undefined;
        // Gone: its holder is done with it (and run.json says what it did, which the re-read sees): try it again.
        if (held === false) n++;
      }
      log({ dir, owner }, 'left a dead gateway\'s workspace alone: too many claims to adopt it');
      return undefined;
    } finally {
      rmSync(draft, { force: true });
    }
  }
  /**
   * Once run.json no longer names the dead owner (adopted: it names us; killed: removed), no claim of
   * that owner's, or an earlier one's, can be acted on any more (its holder's re-read sees that), and
   * none of a later owner's exists yet: what dead replicas left is removed.
   */
  function removeSpentClaims(dir: string): void {
    let names: string[];
    try { names = readdirSync(dir); } catch { return; }
    for (const name of names) if (CLAIM_NAME.test(name)) rmSync(join(dir, name), { force: true });
  }

  /**
   * Workspaces whose gateway process died without closing (SIGKILL, a crash, the machine's OOM
   * killer): each runs detached, in its own process group, so it outlived that gateway. One still
   * starting is killed: nobody finishes its start, and the next page load starts it anew. A ready
   * one is adopted: list() reports it, so the gateway records it (reconcile) and reaps it when idle,
   * and close() stops it. Those of a live gateway (replicas sharing LOCAL_DATA_DIR) are left alone,
   * and of replicas sweeping at once only the one holding the claim acts (claimLeftover).
   */
  function sweepLeftovers(): void {
    let names: string[];
    try { names = readdirSync(resolve(opts.dataDir)); } catch { return; }
    for (const id of names) {
      const seen = readRecord(id);
      // No owner recorded: written by something other than a provisioner of this build (an older
      // gateway, the bench's stand-in for a workspace): not ours to kill or stop, as before.
      if (!seen || seen.owner === undefined || alive(seen.owner)) continue;
      const owner = seen.owner;
      const dir = resolve(opts.dataDir, id);
      const claim = claimLeftover(dir, owner);
      if (!claim) {
        log({ workspaceId: id, owner }, 'left a dead gateway\'s workspace to the live gateway claiming it');
        continue;
      }
      try {
        // Read again under the claim: another replica may have adopted or killed it meanwhile.
        const r = readRecord(id);
        if (r?.owner !== owner) continue;
        sweepOne(id, r, owner);
        removeSpentClaims(dir);
      } finally {
        // Only after run.json is written or removed: a claim taken after this sees what it says.
        rmSync(claim, { force: true });
      }
    }
  }

  /** Kills or adopts one leftover whose owner (dead) is `owner`; the caller holds its claim. */
  function sweepOne(id: string, r: RunRecord, owner: number): void {
    const pid = Number(r.handle);
    // Given another key than this gateway derives for its start, or accepts (that gateway had another
    // GATEWAY_SECRET: a generated one, in development): it fails every connection's proof, so
    // adopted it would be routed to, never reached, and kept from the reaper by the page loads
    // that fail on it. Recorded before run.json kept the check: adopted, as before.
    const foreign = !r.starting && r.keyCheck !== undefined && opts.identityKeys !== undefined && r.keyCheck !== keyCheckOf(opts.identityKeys(id, r.generation))
      && (opts.acceptedIdentityKeys === undefined || r.keyCheck !== keyCheckOf(opts.acceptedIdentityKeys(id, r.generation)));
    if (r.starting || foreign) {
      signalGroup(pid, 'SIGKILL');
      rmSync(runFile(id), { force: true });
      log({ workspaceId: id, pid, owner }, foreign ? 'killed a workspace a gateway that died started with another key (GATEWAY_SECRET): it cannot prove itself here'
        : 'killed a workspace left starting by a gateway that died');
      return;
    }
    adopted.set(id, { workspaceId: r.workspaceId, generation: r.generation, endpoint: r.endpoint, handle: r.handle, startedAt: r.startedAt });
    replaceRun(id, { ...r, owner: process.pid });
    log({ workspaceId: id, pid, owner }, 'adopted a workspace left running by a gateway that died');
  }
  if (opts.adoptLeftovers !== false) sweepLeftovers();

  return {
    kind: 'local',
    mode,
    start,
    async stop(id) {
      const entry = running.get(id);
      if (entry) { await stopProcess(entry); running.delete(id); return; }
      // Started by another gateway process (or adopted): stop it by pid, and wait until it is gone
      // (bounded). Only a pid recorded in run.json and still alive: never a bare, possibly reused, pid.
      adopted.delete(id);
      const other = readRecord(id);
      if (other) await stopRecorded(id, Number(other.handle));
    },
    async describe(id) {
      const r = running.get(id);
      return r ? view(id, r) : readRun(id);
    },
    async list() {
      for (const [id, ws] of adopted) if (!alive(Number(ws.handle))) adopted.delete(id);
      return [...running.entries()].map(([id, r]) => view(id, r)).concat([...adopted.values()].filter((ws) => !running.has(ws.workspaceId)));
    },
    async close() {
      await Promise.all([...running.values()].map(stopProcess));
      running.clear();
      await Promise.all([...adopted.values()].map((ws) => stopRecorded(ws.workspaceId, Number(ws.handle))));
      adopted.clear();
    },
  };
}
