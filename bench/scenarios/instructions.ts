// Instructions per proxied request (issue 7, CPU per request): the gateway and the bare Node relay
// counted by callgrind in the full run, a figure that does not move with the machine's load the way
// CPU time does (bench/instructions.ts). Full mode only: the two counts take about a minute and a half.
import { startGatewayState, startUpstream, workDir } from '../field.js';
import { COUNTED, WARMUP, hasCallgrind, launchers, measure } from '../instructions.js';
import { round } from '../lib.js';
import type { ScenarioResult } from '../result.js';

const TITLE = '1 instructions per request (callgrind)';

export async function run(opts: { quick: boolean; log: (s: string) => void }): Promise<ScenarioResult> {
  if (opts.quick) return { scenario: TITLE, systems: [], targets: [], notes: ['full mode only (npm run bench -- --full), or on its own: node dist/bench/instructions.js'] };
  if (!hasCallgrind()) return { scenario: TITLE, systems: [], targets: [], notes: ['not run: valgrind missing (apt-get install -y valgrind)'] };
  const up = await startUpstream();
  const state = await startGatewayState(up, workDir());
  try {
    const systems: ScenarioResult['systems'] = [];
    for (const [name, launch] of Object.entries(launchers(up, state))) {
      const perRequest = await measure(launch, COUNTED, WARMUP);
      opts.log(`  ${name}: ${Math.round(perRequest)} instructions per request`);
      systems.push({ system: name, figures: [{ name: 'instructions/req, user space', value: round(perRequest / 1000, 1), unit: 'k' }] });
    }
    return {
      scenario: TITLE, systems, targets: [],
      notes: [`callgrind (valgrind), all of the process's threads, ${COUNTED.toLocaleString('en')} requests counted after ${WARMUP.toLocaleString('en')} on warm keep-alive connections (10, one request at a time each); the kernel's share (system time) is not counted`],
    };
  } finally {
    await state.close();
    await up.close();
  }
}
