// Structural lint of the two Dockerfiles, for what building them on a stand-in base cannot show
// (image.test.ts and codeserver-image.test.ts build and run both): bases pinned to exact versions,
// non-root users, an init as PID 1, a HEALTHCHECK, and no dev dependencies or sources in the
// gateway's shipped stage; and that the code shipped there imports nothing else.
import t from 'tap';
import { readFileSync, statSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { deployedNodeArgs } from '../bench/lib.js';

const root = (p: string) => fileURLToPath(new URL(`../../${p}`, import.meta.url));

interface Instruction { op: string; args: string }
interface Stage { image: string; name?: string; body: Instruction[] }

/** Instructions (continuations joined, comments dropped) grouped by FROM, global ARGs resolved. */
function parseDockerfile(text: string): { args: Record<string, string>; stages: Stage[] } {
  const lines = text.replace(/\\\r?\n/g, ' ').split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
  const args: Record<string, string> = {};
  const stages: Stage[] = [];
  for (const line of lines) {
    const m = /^(\S+)\s*(.*)$/.exec(line)!;
    const op = m[1].toUpperCase();
    const rest = m[2].replace(/\s+/g, ' ');
    if (op === 'FROM') {
      const f = /^(?:--platform=\S+ )?(\S+)(?: AS (\S+))?$/i.exec(rest)!;
      const image = f[1].replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a, b) => args[a ?? b] ?? '');
      stages.push({ image, name: f[2], body: [] });
    } else if (stages.length === 0) {
      if (op === 'ARG') {
        const [k, v] = rest.split('=');
        args[k] = v ?? '';
      }
    } else {
      stages.at(-1)!.body.push({ op, args: rest });
    }
  }
  return { args, stages };
}

const find = (s: Stage, op: string) => s.body.filter((i) => i.op === op);
const last = <T>(xs: T[]) => xs[xs.length - 1];

t.test('parser', async (t) => {
  const p = parseDockerfile('ARG B=node:1\n# c\nFROM ${B} AS a\nRUN x \\\n  y\nFROM a\nUSER 1000\n');
  t.same(p.stages, [
    { image: 'node:1', name: 'a', body: [{ op: 'RUN', args: 'x y' }] },
    { image: 'a', name: undefined, body: [{ op: 'USER', args: '1000' }] },
  ]);
});

t.test('deployedNodeArgs reads the node flags of the last CMD', async (t) => {
  const health = 'HEALTHCHECK --interval=15s \\\n  CMD ["node", "-e", "1"]\n';
  const rows: Array<[string, string[] | 'throws']> = [
    [`${health}CMD ["node","--max-semi-space-size=4","dist/gateway/main.js"]\n`, ['--max-semi-space-size=4']],
    ['CMD ["node","dist/gateway/main.js"]\n', []],
    ['CMD ["node","--a"]\nCMD ["node","--b=1","--c","dist/gateway/main.js"]\n', ['--b=1', '--c']],
    [health, 'throws'],
    ['CMD ["node","dist/reaper/main.js"]\n', 'throws'],
  ];
  for (const [dockerfile, want] of rows) {
    if (want === 'throws') t.throws(() => deployedNodeArgs(dockerfile), dockerfile);
    else t.same(deployedNodeArgs(dockerfile), want, dockerfile);
  }
});

t.test('the gateway Dockerfile', async (t) => {
  const { stages } = parseDockerfile(readFileSync(root('Dockerfile'), 'utf8'));
  const stageNames = new Set(stages.map((s) => s.name));
  t.ok(stages.length >= 2, 'multi-stage');
  for (const s of stages) {
    if (stageNames.has(s.image)) continue;
    t.match(s.image, /^node:20\.\d+\.\d+-(bookworm|bullseye|trixie)-slim(@sha256:[0-9a-f]{64})?$/, `${s.name}: official slim Node 20 pinned to an exact version (${s.image})`);
  }
  const build = stages.find((s) => find(s, 'RUN').some((r) => r.args.includes('npm run build')));
  t.ok(build, 'a stage runs npm run build');
  t.ok(find(build!, 'RUN').some((r) => /npm ci(?!.*--omit=dev)/.test(r.args)), 'the build stage installs dev dependencies');

  const runtime = last(stages);
  const runs = find(runtime, 'RUN').map((r) => r.args).join('\n');
  t.notMatch(runs, /npm (ci|install|i)\b/, 'the shipped stage installs no npm packages itself');
  const copies = find(runtime, 'COPY').map((c) => c.args);
  for (const c of copies) t.match(c, /^--from=\S+ /, `shipped stage copies only from earlier stages: ${c}`);
  const copied = copies.map((c) => {
    const [, from, src] = /^--from=(\S+) (\S+)/.exec(c)!;
    return { from: stages.find((s) => s.name === from)!, src };
  });
  const modules = copied.find((c) => c.src.endsWith('node_modules'));
  t.ok(modules, 'node_modules shipped');
  t.ok(find(modules!.from, 'RUN').some((r) => /npm ci .*--omit=dev/.test(r.args)), 'from a stage that ran npm ci --omit=dev');
  t.notOk(find(modules!.from, 'RUN').some((r) => /npm ci(?!.*--omit=dev)/.test(r.args)), 'and never a full install');
  t.same(copied.map((c) => c.src).filter((s) => !s.endsWith('node_modules')).sort(), ['/app/dist', '/app/package.json'], 'then only dist/ and package.json (for "type": "module")');

  const user = last(find(runtime, 'USER'));
  t.ok(user, 'USER set');
  t.notMatch(user!.args, /^(root|0)(:|$)/, 'not root');
  const hc = find(runtime, 'HEALTHCHECK');
  t.equal(hc.length, 1);
  t.match(hc[0].args, /http:\/\/127\.0\.0\.1:'\+\(process\.env\.ADMIN_PORT\|\|9090\)\+'\/healthz/, 'on the admin port the container was given');
  t.match(last(find(runtime, 'ENTRYPOINT')).args, /tini/, 'an init as PID 1');
  const cmd = JSON.parse(last(find(runtime, 'CMD')).args) as string[];
  t.same([cmd[0], cmd.at(-1)], ['node', 'dist/gateway/main.js'], 'runs the gateway');
  // What the README's `npm start` and every bench scenario run must be what the image runs.
  const pkg = JSON.parse(readFileSync(root('package.json'), 'utf8')) as { scripts: Record<string, string> };
  t.equal(pkg.scripts.start, cmd.join(' '), 'npm start runs the same command, flags included');
  t.same(deployedNodeArgs(readFileSync(root('Dockerfile'), 'utf8')), cmd.slice(1, -1), 'the bench reads the same node flags');

  const ignore = readFileSync(root('.dockerignore'), 'utf8').split('\n').map((l) => l.trim());
  for (const p of ['node_modules', 'dist', '.git', 'test', 'deploy']) t.ok(ignore.includes(p), `.dockerignore leaves out ${p}`);
});

/**
 * Every module specifier the compiled files reachable from `entries` name: static imports and
 * re-exports, literal dynamic imports, createRequire()'d names. A dynamic import of anything but a
 * literal would hide what it loads, so it is reported as `<computed>`.
 */
function reachableSpecifiers(entries: string[]): Set<string> {
  const seen = new Set<string>();
  const bare = new Set<string>();
  const pending = [...entries];
  const spec = /\b(?:from\s*|import\s*\(?\s*|\)\s*\(\s*)(['"])([^'"]+)\1|\bimport\s*\(\s*[^'"\s)]/g;
  while (pending.length) {
    const file = pending.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    for (const m of readFileSync(file, 'utf8').matchAll(spec)) {
      const name = m[2];
      if (name === undefined) bare.add('<computed>');
      else if (name.startsWith('.')) pending.push(resolve(dirname(file), name));
      else bare.add(name);
    }
  }
  return bare;
}

t.test('what the shipped image runs needs only production dependencies', async (t) => {
  // The runtime stage has `npm ci --omit=dev` modules and dist/: a dev dependency imported by the
  // gateway or the reaper would load in every test here and crash only in the image.
  const pkg = JSON.parse(readFileSync(root('package.json'), 'utf8')) as { dependencies: Record<string, string> };
  const packageOf = (s: string) => s.split('/').slice(0, s.startsWith('@') ? 2 : 1).join('/');
  const names = reachableSpecifiers([root('dist/gateway/main.js'), root('dist/reaper/main.js')]);
  t.ok(names.has('ioredis') && names.has('node:http'), 'the walk reaches the store and the server');
  for (const name of names) {
    const ok = name.startsWith('node:') || builtinModules.includes(name) || packageOf(name) in pkg.dependencies;
    t.ok(ok, `${name}: a built-in or in dependencies`);
  }
});

t.test('the workspace (code-server) Dockerfile', async (t) => {
  const { stages } = parseDockerfile(readFileSync(root('codeserver/Dockerfile'), 'utf8'));
  t.equal(stages.length, 1);
  const [s] = stages;
  const m = /^codercom\/code-server:(\d+)\.(\d+)\.(\d+)(@sha256:[0-9a-f]{64})?$/.exec(s.image);
  t.ok(m, `official image pinned to an exact version (${s.image})`);
  const v = m!.slice(1, 4).map(Number);
  const atLeast = (min: number[]) => v[0] > min[0] || (v[0] === min[0] && (v[1] > min[1] || (v[1] === min[1] && v[2] >= min[2])));
  t.ok(atLeast([4, 99, 4]), 'has the proxy-route fix (4.99.4)');
  t.ok(atLeast([4, 124, 2]), 'has the local-port session-cookie fix (4.124.2)');
  const readme = readFileSync(root('codeserver/README.md'), 'utf8');
  t.match(readme, v.join('.'), 'the README explains the pinned version');
  t.notMatch(last(find(s, 'USER')).args, /^(root|0)(:|$)/, 'runs as coder, not root');
  t.match(last(find(s, 'ENTRYPOINT')).args, /dumb-init.*workspace-entrypoint/, 'an init as PID 1, then the entrypoint');
  const copy = find(s, 'COPY').find((c) => /entrypoint\.sh/.test(c.args));
  t.ok(copy);
  // A plain COPY keeps the file's mode: the entrypoint must be executable as checked out (git keeps 0755).
  t.notMatch(copy?.args ?? '', /--chmod/, 'no BuildKit-only COPY flag: the classic builder builds it too');
  t.equal(statSync(root('codeserver/entrypoint.sh')).mode & 0o755, 0o755, 'entrypoint.sh is executable, so the COPY needs no --chmod');
  // The entrypoint preloads workspace-identity.cjs from its own folder when WORKSPACE_ID is set: an
  // image without it would serve requests the gateway meant for another workspace.
  const preload = find(s, 'COPY').find((c) => /workspace-identity\.cjs/.test(c.args));
  t.equal(preload?.args, 'workspace-identity.cjs /usr/local/bin/workspace-identity.cjs', 'the identity preload, next to the entrypoint');
  t.match(copy?.args ?? '', / \/usr\/local\/bin\/workspace-entrypoint$/, 'the entrypoint, in that same folder');
  t.equal(find(s, 'HEALTHCHECK').length, 1);
});
