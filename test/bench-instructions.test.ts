// The instruction counter (bench/instructions.ts; issue 7, CPU per request) keeps working: it starts
// a system under callgrind, counts only the requests after the warm-up, and leaves nothing running.
// Small counts: the figure itself is the benchmark's, not this test's.
import t, { type Test } from 'tap';
import { startGatewayState, startUpstream, workDir } from '../bench/field.js';
import { hasCallgrind, launchers, measure, type Measure } from '../bench/instructions.js';
import { processAlive, processTree, stopAll } from '../bench/lib.js';
import { measureWs } from '../bench/ws-instructions.js';

/** The bare relay counted by `count` (small numbers); the notes it gave, and the pid it ran as. */
async function countRelay(t: Test, count: Measure) {
  const up = await startUpstream();
  const state = await startGatewayState(up, workDir());
  t.teardown(async () => { await state.close(); await up.close(); await stopAll(); });
  let pid: number | undefined;
  const relay = launchers(up, state)['node-relay'];
  const notes: string[] = [];
  const value = await count(async (l, n) => { const s = await relay(l, n); pid = s.pid; return s; }, 300, 600, false, (s) => notes.push(s));
  return { value, notes, pid: pid! };
}

t.test('a count per request comes back, and the process counted is gone after', async (t) => {
  t.ok(hasCallgrind(), 'valgrind is installed (.ci/run installs it)');
  const { value: perRequest, notes, pid } = await countRelay(t, measure);
  // 600 requests leave V8 optimizing: the count goes on to a later window, or says what was still compiling.
  t.equal(notes.length, 1);
  t.match(notes[0], /^(window [1-4] of 300 requests|V8 still optimizing after 4 windows of 300: .+)/, `which window was counted: ${notes[0]}`);
  // A request through any Node relay costs thousands of instructions; a count of startup or of
  // nothing at all would be far off either way.
  t.ok(perRequest > 5_000 && perRequest < 1_000_000, `${Math.round(perRequest)} instructions per request`);
  t.same(processTree(pid).filter((p) => p !== pid), [], 'no children left');
  t.notOk(processAlive(pid), 'the counted process is stopped');
});

t.test('a count per echoed WebSocket message comes back through the same counter', async (t) => {
  const { value: perMessage, notes, pid } = await countRelay(t, measureWs);
  t.equal(notes.length, 1);
  // Two reads and two writes through Node a message: thousands of instructions, not a count of nothing.
  t.ok(perMessage > 5_000 && perMessage < 1_000_000, `${Math.round(perMessage)} instructions per message`);
  t.notOk(processAlive(pid), 'the counted process is stopped');
});
