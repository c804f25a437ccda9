// The cold-start herd's overhead (bench/scenarios/cold-herd.ts; issue 7, scenario 3): ready -> all
// served, minus noticed, minus a direct burst. Judged only when every page load was served and
// readiness was seen: a herd whose loads all failed once read an overhead of -Infinity, "met".
import t from 'tap';
import { herdOverhead } from '../bench/scenarios/cold-herd.js';

t.test('herdOverhead table', async (t) => {
  const rows: Array<[string, number[], number, number, number, number]> = [
    // what, served at (ms after ready), loads, noticed, direct burst, overhead
    ['all served', [60, 120, 180], 3, 50, 40, 90],
    ['served before noticed by a fast burst: negative, as measured', [30, 40], 2, 50, 20, -30],
    ['one load never served: no figure', [60, 120], 3, 50, 40, NaN],
    ['none served: no figure (was -Infinity)', [], 3, 50, 40, NaN],
    ['readiness never noticed: no figure', [60, 120, 180], 3, NaN, 40, NaN],
  ];
  for (const [what, servedAfter, loads, noticed, direct, want] of rows) {
    t.same(herdOverhead(servedAfter, loads, noticed, direct), want, what);
  }
});
