// `npm run bench` (quick, under 5 minutes) or `npm run bench -- --full` (under 30): runs every scenario
// of issue 7 through the ScenarioResult interface (bench/result.ts), prints one table, and writes the
// raw figures (bench/results/latest.json) and a chart (bench/results/latest.svg). Every process a
// scenario starts through bench/lib.ts is killed when it ends, when it fails, and when the runner exits.
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, hostname, release, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CPUS, loadAverage, openFilesLimit, pinned, stopAll } from './lib.js';
import { chpVersion, nginxVersion } from './field.js';
import { svg, table } from './report.js';
import type { ScenarioResult } from './result.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const args = process.argv.slice(2);
const full = args.includes('--full');
const only = args.find((a) => a.startsWith('--only='))?.slice(7).split(',');
const quick = !full;

type Run = (opts: { quick: boolean; log: (s: string) => void }) => Promise<ScenarioResult>;
const SCENARIOS: Array<{ id: string; title: string; file: string; limitS: { quick: number; full: number } }> = [
  { id: 'http', title: '1+6 HTTP and bookkeeping', file: './scenarios/http.js', limitS: { quick: 180, full: 1100 } },
  { id: 'instructions', title: '1+2 instructions and heap allocated per request and per WebSocket message', file: './scenarios/instructions.js', limitS: { quick: 10, full: 240 } },
  { id: 'websocket', title: '2 WebSocket', file: './scenarios/websocket.js', limitS: { quick: 200, full: 600 } },
  { id: 'cold-herd', title: '3 cold-start herd', file: './scenarios/cold-herd.js', limitS: { quick: 90, full: 300 } },
  { id: 'class-surge', title: '4 class-start surge', file: './scenarios/class-surge.js', limitS: { quick: 90, full: 420 } },
  { id: 'state-scale', title: '5 scale of state', file: './scenarios/state-scale.js', limitS: { quick: 90, full: 300 } },
];

const log = (s: string) => process.stdout.write(`${s}\n`);
const sh = (cmd: string, a: string[]) => { const r = spawnSync(cmd, a); return r.error ? undefined : `${r.stdout}${r.stderr}`.trim(); };

function environment() {
  const wrk = sh('wrk', ['--version'])?.split('\n')[0].split(' ').slice(0, 2).join(' ');
  let ours = '';
  try { ours = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version; } catch { /* not found */ }
  return {
    date: new Date().toISOString(),
    host: hostname(),
    kernel: release(),
    cpuModel: cpus()[0]?.model ?? 'unknown',
    cores: CPUS,
    memoryGB: Math.round(totalmem() / 1e8) / 10,
    pinned: pinned ? 'proxy on core 0, load generators on core 1 (taskset); upstream unpinned' : 'not pinned (one core or no taskset)',
    openFilesLimit: openFilesLimit(),
    versions: {
      node: process.version, gateway: `${ours} (${sh('git', ['-C', root, 'rev-parse', '--short', 'HEAD']) ?? '?'})`, nginx: nginxVersion() ?? 'missing',
      'configurable-http-proxy': chpVersion() ?? 'missing', wrk: wrk ?? 'missing', redis: sh('redis-server', ['--version'])?.split(' ')[2] ?? 'missing',
    },
    loadAverageStart: loadAverage(),
    busiestProcesses: sh('ps', ['-eo', 'pcpu,comm', '--sort=-pcpu', '--no-headers'])?.split('\n').slice(0, 8).map((l) => l.trim()) ?? [],
  };
}

async function runOne(s: (typeof SCENARIOS)[number]): Promise<ScenarioResult> {
  let mod: { run?: Run };
  try {
    mod = await import(s.file) as { run?: Run };
  } catch (err) {
    const e = err as Error & { code?: string };
    const missing = e.code === 'ERR_MODULE_NOT_FOUND' && e.message.includes(s.file.slice(2));
    return { scenario: s.title, systems: [], targets: [], notes: [missing ? 'not run: module not present' : `not run: ${e.message}`] };
  }
  if (typeof mod.run !== 'function') return { scenario: s.title, systems: [], targets: [], notes: ['not run: module has no run()'] };
  const limit = (quick ? s.limitS.quick : s.limitS.full) * 1000;
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      mod.run({ quick, log }),
      new Promise<never>((_, rej) => { timer = setTimeout(() => rej(new Error(`did not finish within ${limit / 1000} s`)), limit); }),
    ]);
  } catch (err) {
    return { scenario: s.title, systems: [], targets: [], notes: [`failed: ${(err as Error).message}`] };
  } finally {
    clearTimeout(timer);
    await stopAll();
  }
}

async function main() {
  const env = environment();
  log(`workspace-gateway benchmarks, ${quick ? 'quick' : 'full'} mode; ${env.cores} cores (${env.cpuModel}), load average ${env.loadAverageStart}`);
  for (const [k, v] of Object.entries(env.versions)) log(`  ${k}: ${v}`);
  if (env.versions.wrk === 'missing') log('  wrk is missing: apt-get install -y wrk (the HTTP closed loop needs it)');
  if (env.versions.nginx === 'missing') log('  nginx is missing: apt-get install -y nginx-light');
  const t0 = Date.now();
  const results: Array<ScenarioResult & { seconds: number; loadAverage: string }> = [];
  for (const s of SCENARIOS) {
    if (only && !only.includes(s.id)) continue;
    log(`\n== ${s.title} (load average ${loadAverage()})`);
    const started = Date.now();
    const r = await runOne(s);
    results.push({ ...r, seconds: Math.round((Date.now() - started) / 1000), loadAverage: loadAverage() });
    for (const n of r.notes) if (n.startsWith('not run') || n.startsWith('failed')) log(`  ${n}`);
  }
  const environmentEnd = { loadAverageEnd: loadAverage(), totalSeconds: Math.round((Date.now() - t0) / 1000) };

  const header = [
    `Machine: ${env.cores} cores, ${env.cpuModel}, ${env.memoryGB} GB, Linux ${env.kernel}; ${env.pinned}.`,
    `Versions: ${Object.entries(env.versions).map(([k, v]) => `${k} ${v}`).join(', ')}.`,
    `Load average ${env.loadAverageStart} at start, ${environmentEnd.loadAverageEnd} at end (other processes share the machine); ${quick ? 'quick' : 'full'} mode, ${environmentEnd.totalSeconds} s.`,
    '',
  ].join('\n');
  const text = `${header}\n${results.map((r) => table(r)).join('\n')}`;
  log(`\n${text}`);
  const missed = results.flatMap((r) => r.targets.filter((t) => !t.met).map((t) => t.name));
  log(`Targets: ${results.reduce((n, r) => n + r.targets.filter((t) => t.met).length, 0)} met, ${missed.length} missed.`);

  const outDir = join(root, 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'latest.json'), `${JSON.stringify({ mode: quick ? 'quick' : 'full', environment: { ...env, ...environmentEnd }, results }, null, 2)}\n`);
  writeFileSync(join(outDir, 'latest.svg'), svg(results, `workspace-gateway benchmarks (${quick ? 'quick' : 'full'}), ${env.cores} cores, load ${env.loadAverageStart}, ${env.date.slice(0, 10)}`));
  writeFileSync(join(outDir, 'latest.md'), text);
  log(`Wrote bench/results/latest.json, latest.svg and latest.md`);
}

main().then(async () => { await stopAll(); process.exit(0); }, async (err) => {
  process.stderr.write(`benchmark runner failed: ${(err as Error).stack}\n`);
  await stopAll();
  process.exit(1);
});
