import t from 'tap';
import { leaseRenewalDue, reapVerdict } from '../reaper/verdict.js';

t.test('idle verdict table', async (t) => {
  const idle = 15 * 60_000;
  const max = 12 * 3_600_000;
  const now = 1_000_000_000;
  const rows: Array<[string, Parameters<typeof reapVerdict>[0]['state'], number | undefined, number | undefined, string]> = [
    ['active a second ago', 'running', now - 1000, now - 60_000, 'keep'],
    ['idle exactly the timeout', 'running', now - idle, now - idle - 1, 'idle'],
    ['idle one ms short', 'running', now - idle + 1, now - idle - 1, 'keep'],
    ['activity unknown (store emptied)', 'running', undefined, now - 2 * idle, 'keep'],
    ['over max session though active', 'running', now - 1000, now - max, 'max_session'],
    ['over max session, activity unknown', 'running', undefined, now - max - 1, 'max_session'],
    ['stopped', 'stopped', now - 2 * idle, undefined, 'keep'],
    ['starting', 'starting', now - 2 * idle, undefined, 'keep'],
    ['failed', 'failed', now - 2 * idle, undefined, 'keep'],
    ['unknown record', undefined, now - 2 * idle, undefined, 'keep'],
    ['activity in the future (clock skew)', 'running', now + 5000, now - 1000, 'keep'],
  ];
  for (const [name, state, lastActivity, startedAt, expected] of rows) {
    const v = reapVerdict({ now, state, lastActivity, startedAt, idleTimeoutMs: idle, maxSessionMs: max });
    t.equal(v.stop ? v.reason : 'keep', expected, name);
  }
});

t.test('leader lease renewal during a pass', async (t) => {
  const ttl = 90_000;
  const at = 1_000_000;
  const rows: Array<[string, number, boolean]> = [
    ['just renewed', at, false],
    ['one ms short of a third of the lease', at + 29_999, false],
    ['a third of the lease', at + 30_000, true],
    ['past the lease (a stop held the worker)', at + ttl + 1, true],
  ];
  for (const [name, now, due] of rows) t.equal(leaseRenewalDue({ now, renewedAt: at, ttlMs: ttl }), due, name);
});
