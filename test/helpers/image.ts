// The gateway's Docker image, built from this checkout's Dockerfile for tests that run it as ECS
// would (issue 9). Needs a running Docker daemon (.ci/run starts one).
//
// The Dockerfile's base, node:<version>-bookworm-slim, comes from Docker Hub, which a machine with
// no network but the npm registry and Debian's mirror cannot reach. Then a stand-in is made once:
// Debian bookworm (debootstrap, minimal) with this machine's own Node.js of the same version and the
// official image's unprivileged user (node, uid 1000). Everything the Dockerfile itself does (npm ci,
// the build, the production-only dependencies, tini from Debian, USER, HEALTHCHECK, ENTRYPOINT, CMD)
// runs unchanged on top of it.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
/** One tag per checkout: two checkouts testing at once on one machine must not run each other's image. */
const GATEWAY_TAG = `wsgw-test/workspace-gateway:${createHash('sha256').update(ROOT).digest('hex').slice(0, 12)}`;

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
    child.stdin.end(opts.input ?? '');
  });
}

/** Settings as `docker run` flags: one `-e NAME=value` each. */
export const dockerEnv = (settings: Record<string, string>): string[] => Object.entries(settings).flatMap(([k, v]) => ['-e', `${k}=${v}`]);

async function must(cmd: string, args: string[], what: string, opts: { input?: string; timeoutMs?: number } = {}): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${what} failed (${cmd} ${args.slice(0, 3).join(' ')}…, exit ${r.code}): ${r.stderr.slice(-2000)}`);
  return r.stdout;
}

/** The Dockerfile's `ARG NODE_IMAGE=` default: the base image it is built on. */
function dockerfileBase(dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8')): string {
  const m = /^ARG NODE_IMAGE=(\S+)\s*$/m.exec(dockerfile);
  if (!m) throw new Error('Dockerfile has no ARG NODE_IMAGE=<image>');
  return m[1];
}

const present = async (image: string) => (await run('docker', ['image', 'inspect', image])).code === 0;

/**
 * The base to build on: the Dockerfile's own if Docker has or can pull it, else the stand-in
 * (above), made at most once per machine and kept.
 */
async function baseImage(): Promise<string> {
  const official = dockerfileBase();
  if (await present(official)) return official;
  if ((await run('docker', ['pull', official], { timeoutMs: 60_000 })).code === 0) return official;
  const version = /^node:(\d+\.\d+\.\d+)-bookworm-slim$/.exec(official)?.[1];
  if (!version) throw new Error(`cannot stand in for ${official}: not a node:<version>-bookworm-slim tag`);
  // The stand-in carries this machine's Node.js, so it is only the same base if the version is.
  if (process.version !== `v${version}`) throw new Error(`cannot stand in for ${official}: this machine runs Node.js ${process.version}`);
  const standIn = `wsgw-test/node:${version}-bookworm-slim`;
  if (await present(standIn)) return standIn;
  const root = mkdtempSync(join(tmpdir(), 'wsgw-nodebase-'));
  try {
    await must('debootstrap', ['--variant=minbase', 'bookworm', root, 'http://deb.debian.org/debian'], 'debootstrap', { timeoutMs: 600_000 });
    // This machine's Node.js and npm, as the official image lays them out (/usr/local there, /usr here).
    const files = (await must('sh', ['-c', 'dpkg -L nodejs | while read f; do [ -f "$f" ] && echo "${f#/}"; done'], 'listing nodejs')).trim();
    await must('sh', ['-c', 'tar -C / -cf - -T - | tar -C "$1" -xf - && rm -rf "$1/usr/lib/node_modules/npm" && cp -a /usr/lib/node_modules/npm "$1/usr/lib/node_modules/" && ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$1/usr/bin/npm"', 'sh', root], 'copying node', { input: `${files}\n` });
    // This machine reaches the npm registry through a TLS proxy whose CA it trusts: so must npm ci in the build.
    await must('sh', ['-c', 'mkdir -p "$1/etc/ssl/certs" && cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/"', 'sh', root], 'copying CA certificates');
    await must('chroot', [root, 'sh', '-c', 'groupadd -g 1000 node && useradd -u 1000 -g node -s /bin/bash -m node && node --version'], 'adding the node user');
    await must('sh', ['-c', 'rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*', 'sh', root], 'cleaning');
    await must('sh', ['-c', `tar -C "$1" -c . | docker import --change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' --change 'CMD ["node"]' - "$2"`, 'sh', root, standIn], 'docker import', { timeoutMs: 300_000 });
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  return standIn;
}

let built: Promise<{ image: string; base: string }> | undefined;

/**
 * Builds the gateway image from this checkout (once per test process). The classic builder: BuildKit
 * fetches the `# syntax=` frontend from Docker Hub first; the Dockerfile uses nothing only BuildKit has.
 */
export function gatewayImage(): Promise<{ image: string; base: string }> {
  built ??= (async () => {
    const info = await run('docker', ['info', '--format', '{{.ServerVersion}}']);
    if (info.code !== 0) throw new Error(`no Docker daemon (start dockerd; .ci/run does): ${info.stderr.trim()}`);
    const base = await baseImage();
    const r = await run('docker', ['build', '--build-arg', `NODE_IMAGE=${base}`, '--label', 'wsgw-test=gateway', '-t', GATEWAY_TAG, ROOT], { env: { ...process.env, DOCKER_BUILDKIT: '0' }, timeoutMs: 600_000 });
    if (r.code !== 0) throw new Error(`docker build failed: ${r.stdout.slice(-3000)}${r.stderr.slice(-2000)}`);
    // The build before, now untagged: without this every run would leave one behind (its layers stay cached).
    await run('docker', ['image', 'prune', '-f', '--filter', 'label=wsgw-test=gateway']);
    return { image: GATEWAY_TAG, base };
  })();
  return built;
}
