// A client leaving a long-poll (gateway/departure.ts) and the status poll's wait on it
// (workspaces.nextChange): the waiter is let go at once, whether the client leaves while it waits or
// had left before it began.
import t from 'tap';
import { Departure } from '../gateway/departure.js';
import { NAVIGATE, request, startTestGateway } from './helpers/gateway.js';

type Step = 'listen' | 'listen again' | 'stop listening' | 'leave';

t.test('a departure tells its one listener once', async (t) => {
  const rows: Array<[steps: Step[], calls: Record<string, number>, left: boolean]> = [
    [['listen', 'leave'], { first: 1 }, true],
    [['listen', 'leave', 'leave'], { first: 1 }, true],
    [['leave', 'listen'], { first: 1 }, true], // already gone: told at once
    [['listen', 'stop listening', 'leave'], {}, true],
    [['listen', 'listen again', 'leave'], { second: 1 }, true], // the last one set wins
    [['listen'], {}, false],
    [[], {}, false],
  ];
  for (const [steps, calls, left] of rows) {
    const d = new Departure();
    const got: Record<string, number> = {};
    const listener = (name: string) => () => { got[name] = (got[name] ?? 0) + 1; };
    for (const step of steps) {
      if (step === 'listen') d.onLeave(listener('first'));
      else if (step === 'listen again') d.onLeave(listener('second'));
      else if (step === 'stop listening') d.offLeave();
      else d.leave();
    }
    t.same([got, d.left], [calls, left], steps.join(', ') || 'nothing');
  }
});

t.test("a status poll's wait ends when its client leaves", async (t) => {
  const gw = await startTestGateway();
  t.teardown(() => gw.close());
  const { workspaces } = gw.gateway;
  // Timeouts of a minute: a wait that ends here ended for its departure, not its timer.
  const minute = 60_000;

  const leaving = new Departure();
  const waiting = workspaces.nextChange('nobody-1', minute, leaving);
  leaving.leave();
  t.equal(await waiting, undefined, 'left while waiting: undefined, at once');

  const gone = new Departure();
  gone.leave();
  t.equal(await workspaces.nextChange('nobody-2', minute, gone), undefined, 'left before the wait: undefined, at once');

  // A change ends the wait with the record; the client leaving afterwards changes nothing.
  const stays = new Departure();
  const change = workspaces.nextChange('demo', minute, stays);
  const cookie = await gw.cookie('demo');
  await request(gw.port, { headers: { ...NAVIGATE, cookie } });
  const record = await change;
  t.equal(record?.id, 'demo', 'a change: the record');
  stays.leave();
  t.equal(stays.left, true);
});
