// The load generator's paced WebSocket client (bench/loadgen.ts, issue 7 scenario 2): raw sockets
// doing the handshake by hand must be let in by every system the benchmark measures (the gateway
// checks Origin against Host: a first version sent them apart and every socket got 403), echo every
// message it sends, and not count the warm-up.
import t from 'tap';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startGateway, startGatewayState, startUpstream, workDir, direct, type System } from '../bench/field.js';
import { runToEnd, stopAll } from '../bench/lib.js';

const loadgen = join(fileURLToPath(new URL('.', import.meta.url)), '..', 'bench', 'loadgen.js');

async function paced(s: System) {
  const job = { mode: 'ws-paced', port: s.port, host: s.host, headers: s.headers, durationMs: 1500, warmupMs: 500, rate: 200, connections: 10 };
  const r = await runToEnd(process.execPath, [loadgen, JSON.stringify(job)], { timeoutMs: 30_000 });
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as { open: number; failed: number; firstError?: string; messages: number; lost: number; p50us: number; p99us: number };
}

t.test('paced echo through the upstream itself and through the gateway', async (t) => {
  const up = await startUpstream();
  const state = await startGatewayState(up, workDir());
  t.teardown(async () => { await state.close(); await up.close(); await stopAll(); });
  const gateway = await startGateway(state, 'gateway');
  for (const s of [direct(up, state.cookie), gateway]) {
    const r = await paced(s);
    t.same([r.open, r.failed, r.firstError, r.lost], [10, 0, undefined, 0], `${s.name}: every socket opened, every message echoed`);
    // 300 messages due in 1.5 s; the 100 due in the first 0.5 s are not counted, however late they went.
    t.equal(r.messages, 200, `${s.name}: the messages due after the warm-up are counted`);
    t.ok(r.p50us > 0 && r.p99us >= r.p50us, `${s.name}: p50 ${Math.round(r.p50us)} µs, p99 ${Math.round(r.p99us)} µs`);
  }
});
