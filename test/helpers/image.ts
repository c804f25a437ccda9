// The two Docker images, built from this checkout for tests that run them as ECS would (issue 9):
// the gateway's (Dockerfile) and the workspace's (codeserver/Dockerfile). Needs a running Docker
// daemon (.ci/run starts one).
//
// Both bases come from Docker Hub (node:<version>-bookworm-slim, codercom/code-server:<version>),
// which a machine with no network but the npm registry and Debian's mirror cannot reach. Then a
// stand-in for each is made once per machine and kept (nodeBase, codeServerBase below), and
// everything the Dockerfiles themselves do runs unchanged on top of it.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { until } from './gateway.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
/** Tags are per checkout: two checkouts testing at once on one machine must not run each other's image. */
const CHECKOUT = createHash('sha256').update(ROOT).digest('hex').slice(0, 12);

interface Run { code: number | null; stdout: string; stderr: string }

/** Runs a command to its end; never throws (the caller decides what a failure means). */
export function run(cmd: string, args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { stderr = (stderr + c.toString()).slice(-8000); });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 300_000);
    child.on('error', (err) => { clearTimeout(timer); resolve({ code: -1, stdout, stderr: String(err) }); });
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
    // A command that exits without reading its input (most docker commands) closes the pipe first; the
    // write's EPIPE then came as an uncaught exception and failed a test whose command had succeeded.
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
  });
}

/** The command line of every process in a running container, its arguments joined by spaces. */
export async function containerProcesses(name: string): Promise<string[]> {
  const r = await run('docker', ['exec', name, 'sh', '-c', 'for f in /proc/[0-9]*/cmdline; do tr "\\0" " " < "$f"; echo; done']);
  return r.stdout.split('\n').map((l) => l.trim()).filter(Boolean);
}

/** Docker's HEALTHCHECK verdict on a container, once it has one: 'healthy' or 'unhealthy'. */
export function containerHealth(name: string, timeoutMs = 60_000): Promise<string> {
  return until(async () => {
    const s = (await run('docker', ['inspect', '--format', '{{.State.Health.Status}}', name])).stdout.trim();
    return s === 'healthy' || s === 'unhealthy' ? s : undefined;
  }, timeoutMs, 500) as Promise<string>;
}

/** Settings as `docker run` flags: one `-e NAME=value` each. */
export const dockerEnv = (settings: Record<string, string>): string[] => Object.entries(settings).flatMap(([k, v]) => ['-e', `${k}=${v}`]);

async function must(cmd: string, args: string[], what: string, opts: { input?: string; timeoutMs?: number } = {}): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${what} failed (${cmd} ${args.slice(0, 3).join(' ')}…, exit ${r.code}): ${r.stderr.slice(-2000)}`);
  return r.stdout;
}

/** A Dockerfile's `ARG <name>=` default: the base image it is built on. */
function dockerfileBase(file: string, arg: string): string {
  const m = new RegExp(`^ARG ${arg}=(\\S+)\\s*$`, 'm').exec(readFileSync(join(ROOT, file), 'utf8'));
  if (!m) throw new Error(`${file} has no ARG ${arg}=<image>`);
  return m[1];
}

const present = async (image: string) => (await run('docker', ['image', 'inspect', image])).code === 0;

/** The official base if Docker has it or can pull it; else undefined. */
async function official(image: string): Promise<string | undefined> {
  if (await present(image)) return image;
  if ((await run('docker', ['pull', image], { timeoutMs: 60_000 })).code === 0) return image;
  return undefined;
}

/**
 * Makes `tag` once per machine: Debian bookworm (debootstrap, minimal, plus `packages`) with this
 * machine's Node.js and npm and its CA bundle (it reaches the npm registry through a TLS proxy whose
 * CA it trusts), then `setup` (a shell script given the root's path as $1), imported with `changes`
 * (`docker import --change`).
 */
async function debianWithNode(tag: string, packages: string[], setup: string, changes: string[]): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), 'wsgw-base-'));
  try {
    await must('debootstrap', ['--variant=minbase', ...(packages.length ? [`--include=${packages.join(',')}`] : []), 'bookworm', root, 'http://deb.debian.org/debian'], 'debootstrap', { timeoutMs: 600_000 });
    // This machine's Node.js and npm, as the official node image lays them out (/usr/local there, /usr here).
    const files = (await must('sh', ['-c', 'dpkg -L nodejs | while read f; do [ -f "$f" ] && echo "${f#/}"; done'], 'listing nodejs')).trim();
    await must('sh', ['-c', 'tar -C / -cf - -T - | tar -C "$1" -xf - && rm -rf "$1/usr/lib/node_modules/npm" && cp -a /usr/lib/node_modules/npm "$1/usr/lib/node_modules/" && ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$1/usr/bin/npm"', 'sh', root], 'copying node', { input: `${files}\n` });
    await must('sh', ['-c', 'mkdir -p "$1/etc/ssl/certs" && cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/"', 'sh', root], 'copying CA certificates');
    await must('sh', ['-c', setup, 'sh', root], `setting up ${tag}`, { timeoutMs: 300_000 });
    await must('sh', ['-c', 'rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*', 'sh', root], 'cleaning');
    const change = changes.map((c) => `--change '${c}'`).join(' ');
    await must('sh', ['-c', `tar -C "$1" -c . | docker import ${change} - "$2"`, 'sh', root, tag], 'docker import', { timeoutMs: 300_000 });
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

/**
 * The gateway's base: the Dockerfile's own if Docker has or can pull it, else the stand-in (above)
 * with the official image's unprivileged user (node, uid 1000), made at most once per machine and kept.
 */
async function nodeBase(): Promise<string> {
  const image = dockerfileBase('Dockerfile', 'NODE_IMAGE');
  if (await official(image)) return image;
  const version = /^node:(\d+\.\d+\.\d+)-bookworm-slim$/.exec(image)?.[1];
  if (!version) throw new Error(`cannot stand in for ${image}: not a node:<version>-bookworm-slim tag`);
  // The stand-in carries this machine's Node.js, so it is only the same base if the version is.
  if (process.version !== `v${version}`) throw new Error(`cannot stand in for ${image}: this machine runs Node.js ${process.version}`);
  const standIn = `wsgw-test/node:${version}-bookworm-slim`;
  if (await present(standIn)) return standIn;
  await debianWithNode(standIn, [],
    'chroot "$1" sh -c "groupadd -g 1000 node && useradd -u 1000 -g node -s /bin/bash -m node && node --version"',
    ['ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt', 'CMD ["node"]']);
  return standIn;
}

/**
 * The workspace image's base, codercom/code-server:<version>, is on Docker Hub only. Its stand-in is
 * what that image is to the workspace Dockerfile: Debian bookworm with curl and dumb-init, the
 * unprivileged user coder (uid 1000, home /home/coder, the owner EFS access points enforce), and
 * code-server on the PATH as `code-server`, here this machine's (../shared/tools/install-code-server.sh,
 * 4.96.4, on this machine's Node.js, where the official image bundles its own). Its tag names the
 * version it carries, not the one it stands in for.
 */
async function codeServerBase(): Promise<string> {
  const image = dockerfileBase('codeserver/Dockerfile', 'CODE_SERVER_IMAGE');
  if (await official(image)) return image;
  const home = process.env.CS_HOME ?? '/opt/code-server';
  const entry = join(home, 'app/node_modules/code-server/out/node/entry.js');
  const version = JSON.parse(readFileSync(join(home, 'app/node_modules/code-server/package.json'), 'utf8')).version as string;
  const standIn = `wsgw-test/code-server:${version}`;
  if (await present(standIn)) return standIn;
  await debianWithNode(standIn, ['curl', 'dumb-init', 'ca-certificates', 'libstdc++6'], [
    `mkdir -p "$1${home}" && cp -a "${home}/." "$1${home}/"`,
    `printf '#!/bin/sh\\nexec node "%s" "$@"\\n' "${entry}" > "$1/usr/bin/code-server" && chmod 0755 "$1/usr/bin/code-server"`,
    // env -i: the test runner puts its own module loader into every child's NODE_OPTIONS; the chroot has none of it.
    'chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin sh -c "groupadd -g 1000 coder && useradd -u 1000 -g coder -s /bin/bash -m coder && code-server --version"',
  ].join(' && '), ['USER 1000', 'ENV USER=coder', 'WORKDIR /home/coder', 'EXPOSE 8080',
    'ENTRYPOINT ["/usr/bin/dumb-init", "--", "code-server", "--bind-addr", "0.0.0.0:8080", "."]']);
  return standIn;
}

/** Builds `context` on `base` (passed as the build ARG `arg`) with the classic builder, tagged per checkout. */
async function build(context: string, arg: string, base: string, name: string): Promise<string> {
  const info = await run('docker', ['info', '--format', '{{.ServerVersion}}']);
  if (info.code !== 0) throw new Error(`no Docker daemon (start dockerd; .ci/run does): ${info.stderr.trim()}`);
  const tag = `wsgw-test/${name}:${CHECKOUT}`;
  const r = await run('docker', ['build', '--build-arg', `${arg}=${base}`, '--label', `wsgw-test=${name}`, '-t', tag, join(ROOT, context)], { env: { ...process.env, DOCKER_BUILDKIT: '0' }, timeoutMs: 600_000 });
  if (r.code !== 0) throw new Error(`docker build of ${context} failed: ${r.stdout.slice(-3000)}${r.stderr.slice(-2000)}`);
  // The build before, now untagged: without this every run would leave one behind (its layers stay cached).
  await run('docker', ['image', 'prune', '-f', '--filter', `label=wsgw-test=${name}`]);
  return tag;
}

let gateway: Promise<{ image: string; base: string }> | undefined;
let workspace: Promise<{ image: string; base: string }> | undefined;

/**
 * Builds the gateway image from this checkout (once per test process). The classic builder: BuildKit
 * fetches the `# syntax=` frontend from Docker Hub first; the Dockerfile uses nothing only BuildKit has.
 */
export function gatewayImage(): Promise<{ image: string; base: string }> {
  gateway ??= (async () => {
    const base = await nodeBase();
    return { image: await build('.', 'NODE_IMAGE', base, 'workspace-gateway'), base };
  })();
  return gateway;
}

/** Builds the workspace image (codeserver/) from this checkout, once per test process. */
export function workspaceImage(): Promise<{ image: string; base: string }> {
  workspace ??= (async () => {
    const base = await codeServerBase();
    return { image: await build('codeserver', 'CODE_SERVER_IMAGE', base, 'workspace-code-server'), base };
  })();
  return workspace;
}
