// Two builds side by side (bench/compare.ts; issue 7): paired rounds summed up, and one real run of
// this build against itself that prints both builds' figures and leaves nothing running.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { comparePaired, entryOf, type RoundFigures } from '../bench/compare.js';
import { processAlive } from '../bench/lib.js';

const f = (cpuUsPerReq: number, p50us: number, p99us: number): RoundFigures => ({ cpuUsPerReq, p50us, p99us });

t.test('paired rounds: medians of each build, and the rounds this build was lower in', async (t) => {
  const cases: Array<[string, RoundFigures[], RoundFigures[], Record<string, [number, number, number]>]> = [
    ['one round', [f(10, 100, 300)], [f(11, 90, 300)], { cpuUsPerReq: [10, 11, 1], p50us: [100, 90, 0], p99us: [300, 300, 0] }],
    ['three rounds, drifting together: pairs decide, not the medians',
      [f(10, 100, 400), f(20, 120, 500), f(30, 140, 600)], [f(11, 99, 410), f(21, 121, 490), f(31, 141, 610)],
      { cpuUsPerReq: [20, 21, 3], p50us: [120, 121, 2], p99us: [500, 490, 2] }],
    ['even rounds: the median is the middle two\'s mean', [f(1, 1, 1), f(3, 3, 3)], [f(2, 2, 2), f(2, 2, 2)],
      { cpuUsPerReq: [2, 2, 1], p50us: [2, 2, 1], p99us: [2, 2, 1] }],
  ];
  for (const [what, mine, theirs, want] of cases) {
    const c = comparePaired(mine, theirs);
    t.equal(c.rounds, mine.length, `${what}: rounds`);
    for (const [fig, [m, th, lower]] of Object.entries(want)) {
      t.same(c.figures[fig as keyof typeof c.figures], { mine: m, theirs: th, mineLower: lower }, `${what}: ${fig}`);
    }
  }
  t.throws(() => comparePaired([f(1, 1, 1)], []), 'unpaired rounds are refused');
});

t.test('this build against itself: both run, both are reported, nothing is left running', async (t) => {
  const root = fileURLToPath(new URL('../..', import.meta.url));
  const script = fileURLToPath(new URL('../bench/compare.js', import.meta.url));
  t.ok(entryOf(root).endsWith('dist/gateway/main.js'), 'the other checkout is run from its build');
  const r = spawnSync(process.execPath, [script, root, '--rounds=1', '--seconds=1'], { encoding: 'utf8', timeout: 120_000 });
  t.equal(r.status, 0, `exits 0 (${r.stderr.slice(-500)})`);
  const rounds = r.stdout.split('\n').filter((l) => l.startsWith('round 1/1'));
  t.equal(rounds.length, 2, 'one round of each build');
  for (const l of rounds) t.match(l, /µs CPU\/req, open p50 \d+\.\d µs, p99 \d+\.\d µs$/, 'figures in the round line');
  const last = JSON.parse(r.stdout.trim().split('\n').pop()!);
  t.equal(last.rounds, 1, 'the summary as JSON');
  for (const fig of ['cpuUsPerReq', 'p50us', 'p99us']) t.ok(last.figures[fig].mine > 0 && last.figures[fig].theirs > 0, `${fig} measured for both`);
  t.equal(last.pids.length, 2, 'both gateways\' pids');
  t.same(last.pids.filter(processAlive), [], 'no gateway left running');
});
