// Scenario 1's closed loop read from wrk's output (bench/scenarios/http.ts; issue 7): throughput and
// CPU per request count only the responses that succeeded. wrk's own Requests/sec counts every
// response, so a proxy answering 502s at once would otherwise be credited with its errors.
import t from 'tap';
import { parseWrk } from '../bench/scenarios/http.js';

/** wrk's report (wrk 4.x, `--latency`), with an optional non-2xx line and socket errors line. */
function report(requests: number, rps: number, non2xx?: number, socketErrors?: string): string {
  return [
    'Running 2s test @ http://127.0.0.1:40000/',
    '  1 threads and 50 connections',
    '  Thread Stats   Avg      Stdev     Max   +/- Stdev',
    '    Latency     1.01ms  300.00us   9.00ms   90.00%',
    '    Req/Sec    42.00k     1.00k   44.00k    70.00%',
    '  Latency Distribution',
    '     50%    1.01ms',
    '     75%    1.20ms',
    '     90%    1.50ms',
    '     99%    3.12ms',
    `  ${requests} requests in 2.00s, 100.00MB read`,
    ...(socketErrors ? [`  ${socketErrors}`] : []),
    ...(non2xx !== undefined ? [`  Non-2xx or 3xx responses: ${non2xx}`] : []),
    `Requests/sec:  ${rps.toFixed(2)}`,
    'Transfer/sec:     50.00MB',
    '',
  ].join('\n');
}

t.test('parseWrk: throughput of successful responses only', async (t) => {
  const rows: Array<[string, string, { rps: number; requests: number; non2xx: number }]> = [
    ['every response a 200', report(84000, 42000), { rps: 42000, requests: 84000, non2xx: 0 }],
    ['a tenth of the responses errors', report(84000, 42000, 8400), { rps: 37800, requests: 75600, non2xx: 8400 }],
    ['nothing but errors', report(84000, 42000, 84000), { rps: 0, requests: 0, non2xx: 84000 }],
    ['socket errors do not change the count', report(84000, 42000, undefined, 'Socket errors: connect 0, read 0, write 0, timeout 3'), { rps: 42000, requests: 84000, non2xx: 0 }],
  ];
  for (const [what, out, want] of rows) {
    const w = parseWrk(out);
    t.same({ rps: w.rps, requests: w.requests, non2xx: w.non2xx }, want, what);
    t.equal(w.p50us, 1010, `${what}: p50`);
    t.equal(w.p99us, 3120, `${what}: p99`);
  }
});
