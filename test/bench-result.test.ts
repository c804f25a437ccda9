// The benchmark's verdicts (issue 7): a target is met or missed by its raw figures, shown rounded,
// and one whose figures are missing (a system did not run) is a note, never a verdict.
// A cost the rounds cannot resolve is a note too.
import t from 'tap';
import { addTarget, targetLine, type Target } from '../bench/result.js';
import { spreadNote } from '../bench/scenarios/http.js';

t.test('addTarget table', async (t) => {
  const round1 = (x: number) => Math.round(x * 10) / 10;
  const rows: Array<[string, number, number, '<=' | '>=', boolean | 'note']> = [
    ['under a ceiling', 44.96, 45, '<=', true],
    ['at a ceiling', 45, 45, '<=', true],
    ['over a ceiling, though it rounds to it', 45.04, 45, '<=', false],
    ['above a floor', 0.71, 0.7, '>=', true],
    ['below a floor', 0.69, 0.7, '>=', false],
    ['a system that did not run', NaN, 0.7, '>=', 'note'],
    ['a limit from a peer that did not run', 1, NaN, '<=', 'note'],
  ];
  for (const [name, value, limit, op, expected] of rows) {
    const into = { targets: [] as Target[], notes: [] as string[] };
    addTarget(into, name, value, limit, 'x', op, round1);
    if (expected === 'note') {
      t.same(into.targets, [], `${name}: no verdict`);
      t.equal(into.notes.length, 1, `${name}: noted`);
    } else {
      t.equal(into.targets[0].met, expected, name);
      t.equal(into.targets[0].value, round1(value), `${name}: shown rounded`);
    }
  }
});

t.test('targetLine', async (t) => {
  t.equal(targetLine({ name: 'n', value: 1, limit: 2, unit: 'ms', op: '<=', met: true }), '  met    n: 1 ms (<= 2)');
  t.equal(targetLine({ name: 'n', value: 3, limit: 2, unit: 'ms', op: '<=', met: false }), '  MISSED n: 3 ms (<= 2)');
});

t.test('spreadNote: a cost inside the rounds\' spread is reported, and only a quick run is sent to --full', async (t) => {
  // The note's advice, or undefined for no note.
  const rows: Array<[string, number, boolean, string | undefined]> = [
    ['steady rounds', 0.05, true, undefined],
    ['at the limit', 0.1, false, undefined],
    ['no rounds (a variant did not run)', NaN, true, undefined],
    ['unsteady quick run', 0.47, true, 'rerun on a quiet machine or with --full'],
    ['unsteady full run (6358919 told it to rerun with --full)', 0.47, false, 'rerun on a quiet machine'],
  ];
  for (const [name, widest, quick, advice] of rows) {
    const note = spreadNote(widest, '1.07 1.17 1.10', quick);
    if (advice === undefined) { t.equal(note, undefined, name); continue; }
    t.match(note, /varied by up to \d+% between rounds \(load average 1\.07 1\.17 1\.10\)/, name);
    t.equal(note!.slice(note!.indexOf('rerun')), advice, name);
  }
});
