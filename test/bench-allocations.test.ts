// The allocation counter (bench/allocations.ts; issue 7, added latency at 1,000 req/s) keeps working:
// it samples a system's heap through the inspector over the requests after the warm-up only, and
// leaves nothing running. Small counts: the figure itself is the benchmark's, not this test's.
import t from 'tap';
import { measureAllocations } from '../bench/allocations.js';
import { startGatewayState, startUpstream, workDir } from '../bench/field.js';
import { launchers } from '../bench/instructions.js';
import { processAlive, processTree, stopAll } from '../bench/lib.js';

for (const name of ['node-relay', 'gateway'] as const) {
  t.test(`${name}: bytes per request come back, and the process sampled is gone after`, async (t) => {
    const up = await startUpstream();
    const state = await startGatewayState(up, workDir());
    t.teardown(async () => { await state.close(); await up.close(); await stopAll(); });
    let pid: number | undefined;
    const launch = launchers(up, state)[name];
    const perRequest = await measureAllocations(async (l, n) => { const s = await launch(l, n); pid = s.pid; return s; }, 500, 500);
    // Any Node proxy allocates hundreds of bytes per request at least (a Buffer per read); a sample
    // of startup, or of nothing, would be far off either way.
    t.ok(perRequest > 200 && perRequest < 200_000, `${Math.round(perRequest)} bytes per request`);
    t.same(processTree(pid!).filter((p) => p !== pid), [], 'no children left');
    t.notOk(processAlive(pid), 'the sampled process is stopped');
  });
}
