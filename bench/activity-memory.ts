// Measures what an open code-server tab costs the gateway in the activity tap: memory (two WebSockets' taps,
// after replaying a real recorded tab through them) and CPU (decode throughput).
//
//   npx tsc -p . && node --expose-gc dist/bench/activity-memory.js [fixture.jsonl.gz] [tabs]
//
// Method: build `tabs` tabs (two taps each, one per recorded WebSocket of the first tab in the fixture), feed
// each the tab's recorded client-to-server chunks, force GC, and divide the growth of V8 heap + ArrayBuffer
// memory by the tab count. Repeated for the default config and with window-15 decoding allowed.
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createWsActivityTap, type WsActivityTap } from '../gateway/activity/tap.js';
import { DEFAULT_ACTIVITY_CONFIG, type ActivityConfig } from '../gateway/activity/verdict.js';
import { loadFixture, type Conn } from '../test/fixtures/activity/format.js';

const here = dirname(fileURLToPath(import.meta.url));
const file = process.argv[2] ?? join(here, '..', '..', 'test', 'fixtures', 'activity', 'codeserver-4.96.4-deflate.rec.br');
const tabs = Number(process.argv[3] ?? 500);
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with node --expose-gc');

function used(): number {
  gc!(); gc!();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

function run(conns: Conn[], config: ActivityConfig, windowBits: number | null): { perTab: number; accounted: number; mbps: number; modes: string } {
  const keep: WsActivityTap[] = [];
  const before = used();
  let bytes = 0;
  const cpu0 = process.cpuUsage(); // CPU time, not wall time: the machine is shared
  for (let i = 0; i < tabs; i++) {
    for (const c of conns) {
      let t = 0;
      const inflate = windowBits === null ? c.open.inflate : c.open.inflate && { ...c.open.inflate, windowBits };
      const tap = createWsActivityTap({ inflate, config, now: () => t, onActivity() {} });
      for (const ch of c.chunks) { t = ch.t; tap.write(ch.data); bytes += ch.data.length; }
      keep.push(tap);
    }
  }
  const c = process.cpuUsage(cpu0);
  const secs = (c.user + c.system) / 1e6;
  const after = used();
  const accounted = keep.slice(0, conns.length).reduce((s, x) => s + x.memoryBytes(), 0);
  const modes = [...new Set(keep.slice(0, conns.length).map((x) => x.status().mode))].join(',');
  const perTab = (after - before) / tabs;
  keep.length = 0;
  return { perTab, accounted, mbps: bytes / secs / 1e6, modes };
}

const fx = loadFixture(file);
// The first tab: the first two WebSockets opened (management + extension host), with all their traffic.
const firstTab = fx.conns.slice(0, 2);
const recorded = firstTab.reduce((s, c) => s + c.chunks.reduce((a, x) => a + x.data.length, 0), 0);
console.log(`fixture ${file}: first tab = ${firstTab.length} WebSockets, ${recorded} recorded c2s bytes; ${tabs} tabs per run`);
const rows: Array<[string, ActivityConfig, number | null]> = [
  ['as recorded (negotiated window)', DEFAULT_ACTIVITY_CONFIG, null],
  ['window 12 (default clientWindowBits)', DEFAULT_ACTIVITY_CONFIG, 12],
  ['window 13', { ...DEFAULT_ACTIVITY_CONFIG, maxDecodeWindowBits: 15 }, 13],
  ['window 15 decoded (ACTIVITY_MAX_DECODE_WINDOW_BITS=15)', { ...DEFAULT_ACTIVITY_CONFIG, maxDecodeWindowBits: 15 }, 15],
  ['window 15 over the default budget: decode-free rule', DEFAULT_ACTIVITY_CONFIG, 15],
];
for (const [label, config, bits] of rows) {
  // A window smaller than the recorded one cannot decode it (the inflater rejects the distance): skip.
  if (bits !== null && (fx.meta.windowBits === null || bits < fx.meta.windowBits)) continue;
  const r = run(firstTab, config, bits);
  console.log(`${label}: ${(r.perTab / 1024).toFixed(1)} KB per tab measured (heap+ArrayBuffers), ${(r.accounted / 1024).toFixed(1)} KB accounted by memoryBytes(); mode ${r.modes}; replay ${r.mbps.toFixed(1)} MB of wire bytes per CPU-second`);
}
