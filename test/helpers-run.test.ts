// The test helpers' command runner (test/helpers/image.ts run()): it never throws, whatever the
// command does with its input.
import t from 'tap';
import { run } from './helpers/image.js';

t.test('a command that exits without reading its input: its exit code, no uncaught EPIPE', async (t) => {
  // A megabyte is more than a pipe holds, so the write meets the closed pipe (a docker command did).
  const rows: Array<[cmd: string, code: number]> = [['true', 0], ['false', 1]];
  for (const [cmd, code] of rows) t.equal((await run(cmd, [], { input: 'x'.repeat(1 << 20) })).code, code, cmd);
});

t.test('a command that reads its input gets all of it', async (t) => {
  const input = 'line\n'.repeat(50_000);
  const r = await run('wc', ['-c'], { input });
  t.same([r.code, r.stdout.trim()], [0, String(input.length)]);
});
