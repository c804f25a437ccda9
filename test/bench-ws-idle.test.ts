// The idle WebSocket memory that is judged (bench/scenarios/websocket.ts; issue 7, scenario 2): the
// whole delta read about a fifth low (the warm-up's freed memory reused by the first sockets), so
// the larger of it and the second half's figure is judged.
import t from 'tap';
import { judgedIdleBytes } from '../bench/scenarios/websocket.js';

t.test('judgedIdleBytes table', async (t) => {
  const rows: Array<[string, number, number, number]> = [
    // what, whole delta per socket, second half per socket, judged
    ['the second half higher (the warm-up reused): the second half', 3430, 4260, 4260],
    ['the whole higher (one-off growth in the first half): the whole', 5000, 4000, 5000],
    ['equal', 4000, 4000, 4000],
    ['second half unknown (no socket opened in it): no figure', 4000, NaN, NaN],
    ['whole unknown: no figure', NaN, 4000, NaN],
  ];
  for (const [what, whole, half, want] of rows) t.same(judgedIdleBytes(whole, half), want, what);
});
