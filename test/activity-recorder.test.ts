// The activity recorder's buffer while the store is away (issue 8): bounded, and what it drops.
import t from 'tap';
import { createActivityRecorder } from '../gateway/activity-recorder.js';
import { createManualClock } from '../gateway/clock.js';
import { createMetrics } from '../gateway/metrics.js';
import { StoreUnavailable, type StateStore } from '../gateway/store/contract.js';
import { createMemoryStore } from '../gateway/store/memory.js';

t.test('a full buffer drops the oldest activity, not the newest', async (t) => {
  const clock = createManualClock(Date.UTC(2026, 0, 1));
  const inner = createMemoryStore(clock);
  let down = true;
  const store: StateStore = { ...inner, recordActivity: (e) => (down ? Promise.reject(new StoreUnavailable('down')) : inner.recordActivity(e)) };
  const activity = createActivityRecorder({ store, clock, metrics: createMetrics({ enabled: false, defaultMetrics: false }), instanceId: 'gw', flushIntervalMs: 3_600_000, maxBuffered: 2 });
  t.teardown(() => activity.close());
  activity.touch('typing'); // first in, and then busy all along
  clock.advance(1000);
  activity.touch('left');   // touched once, never again
  clock.advance(1000);
  activity.touch('typing');
  await activity.flush();   // fails: both put back
  clock.advance(1000);
  activity.touch('newcomer'); // the buffer is full: one must go
  down = false;
  await activity.flush();
  t.equal(await inner.getActivity('typing'), clock.now() - 1000, 'the student still typing keeps their newest time');
  t.equal(await inner.getActivity('newcomer'), clock.now());
  t.equal(await inner.getActivity('left'), undefined, 'the oldest time was the one dropped');
});

t.test('close() during a flush in flight still writes what was touched after that flush began', async (t) => {
  const clock = createManualClock(Date.UTC(2026, 0, 1));
  const inner = createMemoryStore(clock);
  let release: () => void = () => undefined;
  let slow = true;
  const store: StateStore = {
    ...inner,
    recordActivity: async (e) => {
      if (slow) { slow = false; await new Promise<void>((r) => { release = r; }); }
      return inner.recordActivity(e);
    },
  };
  const activity = createActivityRecorder({ store, clock, metrics: createMetrics({ enabled: false, defaultMetrics: false }), instanceId: 'gw', flushIntervalMs: 3_600_000 });
  activity.touch('early');
  const inFlight = activity.flush(); // the interval's flush, held up by a slow store
  clock.advance(1000);
  activity.touch('late'); // the student types during the drain
  const closing = activity.close(); // SIGTERM's last flush
  release();
  await Promise.all([inFlight, closing]);
  t.equal(await inner.getActivity('early'), clock.now() - 1000);
  t.equal(await inner.getActivity('late'), clock.now(), 'the last activity reached the store before exit');
});
