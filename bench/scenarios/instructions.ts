// Instructions per proxied request (issue 7, CPU per request) counted by callgrind, and heap bytes
// allocated per request (added latency: how often a scavenge holds requests up), for the gateway and
// the bare Node relay in the full run: figures that do not move with the machine's load the way time
// does (bench/instructions.ts, bench/allocations.ts, bench/ws-instructions.ts). Full mode only: they
// take about a minute.
import { startGatewayState, startUpstream, workDir } from '../field.js';
import { COUNTED as ALLOC_COUNTED, SAMPLING_INTERVAL, WARMUP as ALLOC_WARMUP, measureAllocations } from '../allocations.js';
import { COUNTED, MAX_WINDOWS, WARMUP, hasCallgrind, launchers, measure } from '../instructions.js';
import { WS_COUNTED, WS_WARMUP, measureWs } from '../ws-instructions.js';
import { round } from '../lib.js';
import type { ScenarioResult } from '../result.js';

const TITLE = '1+2 instructions and heap allocated per request and per WebSocket message';

export async function run(opts: { quick: boolean; log: (s: string) => void }): Promise<ScenarioResult> {
  if (opts.quick) return { scenario: TITLE, systems: [], targets: [], notes: ['full mode only (npm run bench -- --full), or on their own: node dist/bench/instructions.js, node dist/bench/allocations.js'] };
  if (!hasCallgrind()) return { scenario: TITLE, systems: [], targets: [], notes: ['not run: valgrind missing (apt-get install -y valgrind)'] };
  const up = await startUpstream();
  const state = await startGatewayState(up, workDir());
  try {
    const systems: ScenarioResult['systems'] = [];
    const settled: string[] = [];
    const settledWs: string[] = [];
    for (const [name, launch] of Object.entries(launchers(up, state))) {
      const perRequest = await measure(launch, COUNTED, WARMUP, false, (s) => settled.push(`${name}: ${s}`));
      const bytes = await measureAllocations(launch, ALLOC_COUNTED, ALLOC_WARMUP);
      const perMessage = await measureWs(launch, WS_COUNTED, WS_WARMUP, false, (s) => settledWs.push(`${name}: ${s}`));
      opts.log(`  ${name}: ${Math.round(perRequest)} instructions, ${Math.round(bytes)} heap bytes allocated per request; ${Math.round(perMessage)} instructions per WebSocket message`);
      systems.push({ system: name, figures: [
        { name: 'instructions/req, user space', value: round(perRequest / 1000, 1), unit: 'k' },
        { name: 'heap allocated/req', value: round(bytes / 1000, 2), unit: 'KB' },
        { name: 'instructions/WebSocket message, both ways, user space', value: round(perMessage / 1000, 1), unit: 'k' },
      ] });
    }
    return {
      scenario: TITLE, systems, targets: [],
      notes: [`callgrind (valgrind), all of the process's threads, ${COUNTED.toLocaleString('en')} requests counted after ${WARMUP.toLocaleString('en')} on warm keep-alive connections (10, one request at a time each), again (up to ${MAX_WINDOWS} windows) while V8 was still optimizing code in a window; the kernel's share (system time) is not counted`,
        `instructions counted in: ${settled.join('; ')}`,
        `per WebSocket message: a 64-byte masked frame to the upstream's echo and its echo back, one in flight on each of 10 WebSockets, ${WS_COUNTED.toLocaleString('en')} counted after ${WS_WARMUP.toLocaleString('en')} (bench/ws-instructions.ts); the syscalls are the same for both (two reads, two writes a message, strace -c), so this is where the closed loop's CPU per message differs; counted in: ${settledWs.join('; ')}`,
        `heap allocated: V8's sampling heap profiler (a sample about every ${SAMPLING_INTERVAL} bytes, freed objects' samples kept) over ${ALLOC_COUNTED.toLocaleString('en')} requests after ${ALLOC_WARMUP.toLocaleString('en')} (bench/allocations.ts); the young generation fills about every MB, and each scavenge holds up the requests that arrive meanwhile`],
    };
  } finally {
    await state.close();
    await up.close();
  }
}
