// The load generator's paced WebSocket client (bench/loadgen.ts, issue 7 scenario 2): raw sockets
// doing the handshake by hand must be let in by every system the benchmark measures (the gateway
// checks Origin against Host: a first version sent them apart and every socket got 403), echo every
// message it sends, and not count the warm-up.
import t from 'tap';
import http from 'node:http';
import { join } from 'node:path';
import { WebSocketServer } from 'ws';
import { fileURLToPath } from 'node:url';
import { startGateway, startGatewayState, startUpstream, workDir, direct, type System } from '../bench/field.js';
import { runToEnd, stopAll } from '../bench/lib.js';

const loadgen = join(fileURLToPath(new URL('.', import.meta.url)), '..', 'bench', 'loadgen.js');

type Paced = { open: number; failed: number; firstError?: string; messages: number; lost: number; wrong: number; p50us: number; p99us: number };
type Closed = { open: number; failed: number; messagesPerSecond: number; echoed: number; wrong: number };

async function loadgenJob<T>(s: Pick<System, 'port' | 'host' | 'headers'>, job: Record<string, unknown>): Promise<T> {
  const r = await runToEnd(process.execPath, [loadgen, JSON.stringify({ port: s.port, host: s.host, headers: s.headers, ...job })], { timeoutMs: 30_000 });
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as T;
}

const paced = (s: Pick<System, 'port' | 'host' | 'headers'>) => loadgenJob<Paced>(s, { mode: 'ws-paced', durationMs: 1500, warmupMs: 500, rate: 200, connections: 10 });

t.test('paced echo through the upstream itself and through the gateway', async (t) => {
  const up = await startUpstream();
  const state = await startGatewayState(up, workDir());
  t.teardown(async () => { await state.close(); await up.close(); await stopAll(); });
  const gateway = await startGateway(state, 'gateway');
  for (const s of [direct(up, state.cookie), gateway]) {
    const r = await paced(s);
    t.same([r.open, r.failed, r.firstError, r.lost, r.wrong], [10, 0, undefined, 0, 0], `${s.name}: every socket opened, every message echoed as sent`);
    // 300 messages due in 1.5 s; the 100 due in the first 0.5 s are not counted, however late they went.
    t.equal(r.messages, 200, `${s.name}: the messages due after the warm-up are counted`);
    t.ok(r.p50us > 0 && r.p99us >= r.p50us, `${s.name}: p50 ${Math.round(r.p50us)} µs, p99 ${Math.round(r.p99us)} µs`);
  }
});

// A message counts only if what comes back is what was sent: a system answering every frame with
// other bytes (a broken relay, an error text) must not be measured as echoing (issue 7, scenario 2).
t.test('an echo with other content is not counted, in the paced and the closed loop', async (t) => {
  const server = http.createServer();
  const wss = new WebSocketServer({ server, perMessageDeflate: false });
  wss.on('connection', (ws) => ws.on('message', (data: Buffer) => ws.send(Buffer.from(data).fill(0x78))));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => { wss.close(); server.close(); });
  const s = { port: (server.address() as { port: number }).port, host: 'ws-bench.localhost', headers: {} };
  const p = await paced(s);
  t.same([p.open, p.messages, p.wrong, p.lost], [10, 0, 300, 0], 'paced: every answer arrived, none counted as an echo');
  const c = await loadgenJob<Closed>(s, { mode: 'ws-closed', durationMs: 800, connections: 5 });
  t.equal(c.open, 5, 'closed: every socket opened');
  t.equal(c.messagesPerSecond, 0, 'closed: no message counted');
  t.ok(c.wrong > 0, 'closed: the wrong answers are counted as such');
});
