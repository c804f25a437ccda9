// Request ids (gateway/request-id.ts): a per-process random prefix and a counter, so ids stay apart
// across replicas and restarts without building a UUID per request.
import t from 'tap';
import { createRequestIds } from '../gateway/request-id.js';

const fixed = (hex: string) => () => Buffer.from(hex, 'hex');

t.test('ids are the prefix and a counter in base 36', async (t) => {
  const next = createRequestIds(fixed('0a0b0c0d0e0f'));
  const rows: Array<[call: number, id: string]> = [[1, '0a0b0c0d0e0f-1'], [2, '0a0b0c0d0e0f-2'], [36, '0a0b0c0d0e0f-10'], [37, '0a0b0c0d0e0f-11']];
  let call = 0;
  for (const [at, id] of rows) {
    let got = '';
    while (call < at) { got = next(); call++; }
    t.equal(got, id, `call ${at}`);
  }
});

t.test('two sources (two replicas, or one restarted) give different ids', async (t) => {
  const a = createRequestIds();
  const b = createRequestIds();
  t.not(a(), b());
});

t.test('ids from one source do not repeat, and are safe in a header and a log line', async (t) => {
  const next = createRequestIds();
  const seen = new Set<string>();
  for (let i = 0; i < 100_000; i++) seen.add(next());
  t.equal(seen.size, 100_000);
  t.same([...seen].filter((id) => !/^[0-9a-f]{12}-[0-9a-z]+$/.test(id)), [], 'every id is hex, a dash and base-36 digits');
});
