// Runs part B's scenarios alone and prints their figures (without part A's runner):
//   node dist/bench/scenarios/b-main.js [--full] [cold-herd|class-surge|state-scale ...] [--json FILE]
import { writeFileSync } from 'node:fs';
import type { ScenarioResult } from '../result.js';

const SCENARIOS: Record<string, () => Promise<{ run(o: { quick: boolean; log: (s: string) => void }): Promise<ScenarioResult> }>> = {
  'cold-herd': () => import('./cold-herd.js'),
  'class-surge': () => import('./class-surge.js'),
  'state-scale': () => import('./state-scale.js'),
};

async function main() {
  const args = process.argv.slice(2);
  const quick = !args.includes('--full');
  const jsonAt = args.indexOf('--json');
  const jsonFile = jsonAt >= 0 ? args[jsonAt + 1] : undefined;
  const names = args.filter((a, i) => !a.startsWith('--') && !(jsonAt >= 0 && i === jsonAt + 1));
  const chosen = names.length ? names : Object.keys(SCENARIOS);
  const log = (s: string) => process.stderr.write(`${s}\n`);
  const results: ScenarioResult[] = [];
  let failed = false;
  for (const name of chosen) {
    const load = SCENARIOS[name];
    if (!load) { log(`unknown scenario ${name}; known: ${Object.keys(SCENARIOS).join(', ')}`); process.exitCode = 2; return; }
    const started = Date.now();
    try {
      const result = await (await load()).run({ quick, log });
      results.push(result);
      log(`${name}: done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    } catch (err) {
      failed = true;
      log(`${name}: failed: ${(err as Error).stack ?? err}`);
    }
  }
  for (const r of results) {
    process.stdout.write(`\n## ${r.scenario}\n`);
    for (const s of r.systems) {
      process.stdout.write(`### ${s.system}\n`);
      for (const f of s.figures) process.stdout.write(`  ${f.name.padEnd(58)} ${String(f.value).padStart(12)} ${f.unit}\n`);
    }
    for (const t of r.targets) process.stdout.write(`  [${t.met ? 'met' : 'MISSED'}] ${t.name}: ${t.value} ${t.unit} (target ${t.op} ${t.limit})\n`);
    for (const n of r.notes) process.stdout.write(`  - ${n}\n`);
  }
  if (jsonFile) writeFileSync(jsonFile, JSON.stringify(results, null, 2));
  if (failed) process.exitCode = 1;
}

void main();
