// The benchmark stops by itself and kills everything it started (issue 7), even a scenario cut
// off at its time bound: its gateway children and its own redis-server are registered with the
// runner's list of live processes, which bench/run.ts stops after every scenario. A class surge
// cut off at its bound once left a gateway and its Redis running through the rest of a full run.
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { processAlive as alive, startBenchRedis, stopAll } from '../bench/lib.js';
import { startGatewayChild } from '../bench/scenarios/b-util.js';

t.test('stopAll stops the gateway children and the redis-server a scenario left running', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-cleanup-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const redis = await startBenchRedis();
  const gw = await startGatewayChild({ REDIS_URL: redis.url, LOCAL_DATA_DIR: dir });
  t.ok(alive(gw.pid) && alive(redis.process().pid), 'both running, as a scenario that overran its bound leaves them');
  await stopAll();
  t.notOk(alive(gw.pid), 'the gateway child is gone');
  t.notOk(alive(redis.process().pid), 'its redis-server is gone');
});
