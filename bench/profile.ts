// Profiles the gateway's warm HTTP path (issue 7: "where a target is missed, profile"): starts the
// upstream, Redis and `node --cpu-prof dist/gateway/main.js` as the benchmark does, drives it with wrk
// for a few seconds, stops it (the profile is written at exit) and prints the functions with the most
// self time, and self time grouped by package. `node dist/bench/profile.js [seconds] [KEY=VALUE ...]`.
import { readdirSync, readFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startGateway, startGatewayState, startUpstream, workDir } from './field.js';
import { LOAD_CPU, cpuMicros, runToEnd, stopAll } from './lib.js';
import { spawnSync } from 'node:child_process';

interface Node { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }
interface Profile { nodes: Node[]; samples: number[]; timeDeltas: number[] }

async function main() {
  const seconds = Number(process.argv[2] ?? 8);
  const extra = Object.fromEntries(process.argv.slice(3).map((kv) => kv.split('=') as [string, string]));
  const profDir = mkdtempSync(join(tmpdir(), 'wsgw-prof-'));
  const dir = workDir();
  try {
    const up = await startUpstream();
    const state = await startGatewayState(up, dir);
    const gw = await startGateway(state, 'gateway', extra, ['--cpu-prof', `--cpu-prof-dir=${profDir}`]);
    const hdr = Object.entries(gw.headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
    await runToEnd('wrk', ['-t1', '-c50', '-d2s', '-H', `Host: ${gw.host}`, ...hdr, `http://127.0.0.1:${gw.port}/`], { cpu: LOAD_CPU, timeoutMs: 20_000 });
    const cpu0 = cpuMicros(gw.pid);
    const r = await runToEnd('wrk', ['-t1', '-c50', `-d${seconds}s`, '-H', `Host: ${gw.host}`, ...hdr, `http://127.0.0.1:${gw.port}/`], { cpu: LOAD_CPU, timeoutMs: (seconds + 20) * 1000 });
    process.stdout.write(r.stdout);
    const served = Number(/(\d+) requests in/.exec(r.stdout)?.[1] ?? NaN);
    // Connections to the upstream closed during the run linger in TIME_WAIT: a reused pool leaves few.
    const tw = spawnSync('ss', ['-Htan', 'state', 'time-wait', `( dport = :${up.port} )`]).stdout.toString().split('\n').filter(Boolean).length;
    process.stdout.write(`gateway CPU per request: ${((cpuMicros(gw.pid) - cpu0) / served).toFixed(1)} µs; upstream connections in TIME_WAIT after the run: ${tw}\n`);
    await gw.close();
  } finally {
    await stopAll();
  }
  const file = readdirSync(profDir).find((f) => f.endsWith('.cpuprofile'));
  if (!file) throw new Error(`no profile written in ${profDir}`);
  const prof = JSON.parse(readFileSync(join(profDir, file), 'utf8')) as Profile;
  const self = new Map<number, number>();
  prof.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0)));
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const byFn = new Map<string, number>();
  const byPkg = new Map<string, number>();
  for (const n of prof.nodes) {
    const t = self.get(n.id) ?? 0;
    if (!t) continue;
    const url = n.callFrame.url;
    const short = url.replace(/^file:\/\//, '').replace(/^.*node_modules\//, 'nm:').replace(/^.*\/dist\//, '');
    const key = `${n.callFrame.functionName || '(anonymous)'} ${short}:${n.callFrame.lineNumber + 1}`;
    byFn.set(key, (byFn.get(key) ?? 0) + t);
    const pkg = url === '' ? n.callFrame.functionName.startsWith('(') ? n.callFrame.functionName : '(native)' : url.startsWith('node:') ? `node:${url.slice(5).split('/')[0]}`
      : /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)?.[1] ?? short.split('/').slice(0, 2).join('/');
    byPkg.set(pkg, (byPkg.get(pkg) ?? 0) + t);
  }
  const show = (title: string, m: Map<string, number>, n: number) => {
    process.stdout.write(`\n${title}\n`);
    for (const [k, v] of [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, n)) process.stdout.write(`${((v / total) * 100).toFixed(1).padStart(6)}%  ${k}\n`);
  };
  show('self time by package / area', byPkg, 25);
  show('self time by function', byFn, 40);
  process.stdout.write(`\nprofile: ${join(profDir, file)} (open in Chrome DevTools > Performance)\n`);
}

main().then(() => process.exit(0), async (err) => { process.stderr.write(`${(err as Error).stack}\n`); await stopAll(); process.exit(1); });
