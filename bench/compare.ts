// Two builds of the gateway side by side in one run (issue 7): a change worth a few per cent cannot be
// told from this machine's drift between runs (the bare relay's CPU per request read 18.3 and 20.3 µs in two
// quick runs in a row), so both run at once, against the same upstream and state, and take turns round by
// round; each round's two figures are compared with each other, never with another round's.
// `node dist/bench/compare.js <checkout> [--rounds=N] [--seconds=S]`: <checkout> is another working tree of this
// project, built, whose gateway reads the same state (say `git worktree add ../base HEAD~1`, then
// `npm ci && npm run build` there). Prints, per round and as medians, the closed loop's CPU per
// request and the open loop's p50 and p99 at 1,000 req/s, and in how many rounds this build did better.
import { join, resolve } from 'node:path';
import { existsSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { benchCommand, startGateway, type System } from './field.js';
import { median } from './lib.js';
import { openLoop, wrk } from './scenarios/http.js';

export interface RoundFigures { cpuUsPerReq: number; p50us: number; p99us: number }
export const FIGURES = ['cpuUsPerReq', 'p50us', 'p99us'] as const;

export interface Comparison {
  rounds: number;
  /** Per figure: both builds' medians, and the rounds in which this build's figure was lower (better). */
  figures: Record<(typeof FIGURES)[number], { mine: number; theirs: number; mineLower: number }>;
}

/** A checkout's built gateway. */
export const entryOf = (checkout: string) => join(checkout, 'dist', 'gateway', 'main.js');

/** Paired rounds (this build's, the other's) summed up; lower is better for every figure. */
export function comparePaired(mine: readonly RoundFigures[], theirs: readonly RoundFigures[]): Comparison {
  if (mine.length !== theirs.length) throw new Error('rounds must be paired');
  const figures = {} as Comparison['figures'];
  for (const f of FIGURES) {
    figures[f] = {
      mine: median(mine.map((r) => r[f])),
      theirs: median(theirs.map((r) => r[f])),
      mineLower: mine.filter((r, i) => r[f] < theirs[i][f]).length,
    };
  }
  return { rounds: mine.length, figures };
}

/** One round against one gateway: a closed loop of `seconds` at 50 connections, then the open loop for `seconds` + 2. */
async function round(s: System, seconds: number): Promise<RoundFigures> {
  const closed = await wrk(s, seconds, 50);
  const open = await openLoop(s, seconds + 2, 1000);
  return { cpuUsPerReq: closed.cpuUsPerReq, p50us: open.p50us, p99us: open.p99us };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const other = args.find((a) => !a.startsWith('--'));
  const rounds = Number(args.find((a) => a.startsWith('--rounds='))?.slice(9) ?? 8);
  const seconds = Number(args.find((a) => a.startsWith('--seconds='))?.slice(10) ?? 3);
  // Checked before anything is started: a wrong path costs no upstream, Redis or gateway.
  const theirEntry = other === undefined ? undefined : entryOf(resolve(other));
  if (theirEntry === undefined || !existsSync(theirEntry)) {
    process.stderr.write(`usage: compare.js <checkout> [--rounds=N] [--seconds=S]; ${theirEntry ?? 'no checkout given'}: not built\n`);
    process.exit(1);
  }
  await benchCommand(async (_up, state) => {
    const mine = await startGateway(state, 'this build');
    const theirs = await startGateway(state, `${other}`, {}, [], [], theirEntry);
    // Warm both (JIT, keep-alive pools, route cache) as the benchmark does.
    for (const s of [mine, theirs]) await wrk(s, seconds + 2, 50);
    const a: RoundFigures[] = [];
    const b: RoundFigures[] = [];
    for (let r = 0; r < rounds; r++) {
      // Who goes first alternates: the second of a pair meets a machine the first has warmed.
      for (const s of r % 2 ? [theirs, mine] : [mine, theirs]) {
        const f = await round(s, seconds);
        (s === mine ? a : b).push(f);
        process.stdout.write(`round ${r + 1}/${rounds} ${s.name}: ${f.cpuUsPerReq.toFixed(2)} µs CPU/req, open p50 ${f.p50us.toFixed(1)} µs, p99 ${f.p99us.toFixed(1)} µs\n`);
      }
    }
    const c = comparePaired(a, b);
    process.stdout.write(`\nmedians over ${rounds} paired rounds: this build / ${other} (rounds where this build was lower)\n`);
    for (const f of FIGURES) process.stdout.write(`${f}: ${c.figures[f].mine.toFixed(2)} / ${c.figures[f].theirs.toFixed(2)} (${c.figures[f].mineLower} of ${rounds})\n`);
    process.stdout.write(`${JSON.stringify({ ...c, pids: [mine.pid, theirs.pid] })}\n`);
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) void main();
