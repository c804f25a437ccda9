// What shrinking the browser's permessage-deflate window costs in upload bytes (RFC 7692 7.1.2.2 lever).
//
//   npx tsc -p . && node dist/bench/activity-window.js [plain fixture]
//
// Method: take every client message of the uncompressed recording (real code-server 4.96.4 traffic), compress
// each connection's messages in order with zlib at windows 9..15 (context takeover, one sync flush per message,
// as browsers do; zlib level 6 and memLevel 8, Chromium's defaults), and sum the payload bytes, for the workbench
// startup (outside the phases) and for the typing row.
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';
import { FrameParser } from '../gateway/activity/frames.js';
import { loadFixture } from '../test/fixtures/activity/format.js';

const here = dirname(fileURLToPath(import.meta.url));
const file = process.argv[2] ?? join(here, '..', '..', 'test', 'fixtures', 'activity', 'codeserver-4.96.4-plain.rec.br');
const fx = loadFixture(file);

// Messages per connection with their start time.
const conns: Array<Array<{ t: number; data: Buffer }>> = [];
for (const c of fx.conns) {
  const msgs: Array<{ t: number; data: Buffer }> = [];
  let now = 0;
  let cur: Buffer[] = [];
  let startT = 0;
  const p = new FrameParser({
    onControl() {},
    onMessageStart() { cur = []; startT = now; },
    onPayload(b) { cur.push(Buffer.from(b)); },
    onFrameEnd(fin) { if (fin) msgs.push({ t: startT, data: Buffer.concat(cur) }); },
  });
  for (const ch of c.chunks) { now = ch.t; p.push(ch.data); }
  conns.push(msgs);
}
const typing = fx.phases.find((p) => p.name === 'typing in an editor')!;
const inPhase = (t: number): boolean => fx.phases.some((p) => t >= p.start && t <= p.end);

async function sizes(windowBits: number): Promise<{ startup: number; typing: number; raw: number; rawTyping: number }> {
  let startup = 0, typ = 0, raw = 0, rawTyping = 0;
  for (const msgs of conns) {
    const d = zlib.createDeflateRaw({ windowBits, memLevel: 8, level: 6 });
    const out: Buffer[] = [];
    d.on('data', (b: Buffer) => out.push(b));
    for (const m of msgs) {
      await new Promise<void>((r) => { d.write(m.data); d.flush(zlib.constants.Z_SYNC_FLUSH, () => r()); });
      const n = Buffer.concat(out.splice(0)).length - 4;
      if (m.t >= typing.start && m.t <= typing.end) { typ += n; rawTyping += m.data.length; }
      else if (!inPhase(m.t)) { startup += n; raw += m.data.length; }
    }
    d.close();
  }
  return { startup, typing: typ, raw, rawTyping };
}

const minutes = (typing.end - typing.start) / 60000;
for (const wb of [9, 10, 11, 12, 13, 15]) {
  const s = await sizes(wb);
  if (wb === 9) console.log(`uncompressed: startup+setup ${(s.raw / 1024).toFixed(0)} KB, typing ${(s.rawTyping / 1024 / minutes).toFixed(0)} KB/min`);
  console.log(`window ${wb}: startup+setup ${(s.startup / 1024).toFixed(0)} KB, typing ${(s.typing / 1024 / minutes).toFixed(1)} KB/min`);
}
