// Unit tables for the WebSocket activity signal: frame parser, inflater, protocol reader, negotiation, verdict, tap.
import t from 'tap';
import zlib from 'node:zlib';
import { FrameParser, type FrameSink } from '../gateway/activity/frames.js';
import { RawInflater } from '../gateway/activity/inflate.js';
import { negotiateExtensions } from '../gateway/activity/negotiate.js';
import { judge, DEFAULT_ACTIVITY_CONFIG, type Evidence } from '../gateway/activity/verdict.js';
import { ProtocolReader, classifyRegular, CALLS, connectionIdentity } from '../gateway/activity/vscode.js';
import { INFLATE_RATIO, INFLATE_SLACK_BYTES, createWsActivityTap } from '../gateway/activity/tap.js';
import { frame, vsMsg, callBody, createDeflater, rng, splitRandom } from './fixtures/activity/build.js';

type Ev = string;
function collector(): { sink: FrameSink; events: Ev[]; payload(): Buffer } {
  const events: Ev[] = [];
  let bytes: Buffer[] = [];
  const sink: FrameSink = {
    onControl: (op, len) => events.push(`control ${op} ${len}`),
    onMessageStart: (op, c) => events.push(`start ${op}${c ? ' z' : ''}`),
    onPayload: (b) => bytes.push(Buffer.from(b)),
    onFrameEnd: (fin, len) => { events.push(`end ${fin ? 'fin' : 'more'} ${len} ${Buffer.concat(bytes).toString('latin1')}`); bytes = []; },
  };
  return { sink, events, payload: () => Buffer.concat(bytes) };
}

const big = Buffer.alloc(70_000, 'abcdefgh');
const mid = Buffer.alloc(300, 'x');

t.test('frame parser: valid streams, split at every byte', async (t) => {
  const rows: Array<{ name: string; stream: Buffer; want: Ev[] }> = [
    { name: 'one binary frame', stream: frame(2, Buffer.from('hello')), want: ['start 2', 'end fin 5 hello'] },
    { name: 'empty frame', stream: frame(2, Buffer.alloc(0)), want: ['start 2', 'end fin 0 '] },
    { name: '16-bit length', stream: frame(2, mid), want: ['start 2', `end fin 300 ${mid.toString()}`] },
    { name: 'compressed flag (RSV1)', stream: frame(2, Buffer.from('zz'), { rsv1: true }), want: ['start 2 z', 'end fin 2 zz'] },
    {
      name: 'fragmented with a ping in the middle',
      stream: Buffer.concat([frame(2, Buffer.from('ab'), { fin: false }), frame(9, Buffer.from('PING')), frame(0, Buffer.from('cd'), { fin: false }), frame(0, Buffer.from('e'))]),
      want: ['start 2', 'end more 2 ab', 'control 9 4', 'end more 2 cd', 'end fin 1 e'],
    },
    {
      name: 'pong and close are control frames',
      stream: Buffer.concat([frame(10, Buffer.alloc(0)), frame(8, Buffer.from([3, 232]))]),
      want: ['control 10 0', 'control 8 2'],
    },
  ];
  for (const row of rows) {
    const whole = collector();
    t.ok(new FrameParser(whole.sink).push(row.stream), `${row.name}: whole`);
    t.same(whole.events, row.want, `${row.name}: whole`);
    // every split point (two chunks) and byte-at-a-time
    for (let cut = 1; cut < Math.min(row.stream.length, 40); cut++) {
      const c = collector();
      const p = new FrameParser(c.sink, 16);
      p.push(row.stream.subarray(0, cut)); p.push(row.stream.subarray(cut));
      if (JSON.stringify(c.events) !== JSON.stringify(row.want)) t.fail(`${row.name}: split at ${cut}`);
    }
    const c = collector();
    const p = new FrameParser(c.sink, 3);
    for (const b of row.stream) p.push(Buffer.from([b]));
    t.same(c.events, row.want, `${row.name}: byte at a time`);
  }
});

t.test('frame parser: 64-bit length, never modifies the chunk, payload can be skipped', async (t) => {
  const f = frame(2, big);
  const copy = Buffer.from(f);
  let got = 0;
  const p = new FrameParser({ onControl() {}, onMessageStart() {}, onPayload: (b) => { got += b.length; }, onFrameEnd() {} });
  t.ok(p.push(f));
  t.equal(got, big.length);
  t.ok(f.equals(copy), 'chunk untouched (the proxy forwards the same buffer)');
  let seen = 0;
  const q = new FrameParser({ onControl() {}, onMessageStart() {}, onPayload: () => { seen++; }, onFrameEnd() {} });
  q.payloadWanted = false;
  q.push(f);
  t.equal(seen, 0, 'no unmasking in decode-free mode');
});

t.test('frame parser: corrupt streams fail, never throw', async (t) => {
  const rows: Array<[string, Buffer]> = [
    ['unmasked client frame', frame(2, Buffer.from('a'), { mask: null })],
    ['RSV2 set', frame(2, Buffer.from('a'), { rsv2: true })],
    ['reserved data opcode', frame(3, Buffer.from('a'))],
    ['reserved control opcode', frame(11, Buffer.from('a'))],
    ['control frame over 125 bytes', frame(9, Buffer.alloc(126))],
    ['fragmented control frame', frame(9, Buffer.from('a'), { fin: false })],
    ['continuation outside a message', frame(0, Buffer.from('a'))],
    ['new message inside a fragmented one', Buffer.concat([frame(2, Buffer.from('a'), { fin: false }), frame(2, Buffer.from('b'))])],
    ['RSV1 on a continuation', Buffer.concat([frame(2, Buffer.from('a'), { fin: false }), frame(0, Buffer.from('b'), { rsv1: true })])],
    ['64-bit length with the top bit set', Buffer.from([0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4])],
  ];
  for (const [name, stream] of rows) {
    const c = collector();
    const p = new FrameParser(c.sink);
    t.equal(p.push(stream), false, name);
    t.ok(p.error, `${name}: ${p.error}`);
    t.equal(p.push(frame(2, Buffer.from('after'))), false, `${name}: stays failed`);
  }
});

t.test('inflater: matches zlib with context takeover, any window, any split', async (t) => {
  const r = rng(42);
  const words = ['$acceptModelChanged', '{"range":[1,2]}', 'remoteterminal', 'x', '0123456789'];
  for (const wb of [9, 10, 12, 15]) {
    const def = createDeflater(wb);
    const out: Buffer[] = [];
    const inf = new RawInflater(wb, (b) => out.push(Buffer.from(b)));
    for (let i = 0; i < 40; i++) {
      const n = i % 13 === 0 ? 40_000 + r(30_000) : r(400);
      let s = '';
      while (s.length < n) s += r(5) ? words[r(words.length)] : String.fromCharCode(r(256));
      const msg = Buffer.from(s, 'latin1');
      const z = await def.compress(msg);
      for (const piece of splitRandom(Buffer.concat([z, Buffer.from([0, 0, 0xff, 0xff])]), r, r(2) ? 5 : 3000)) inf.push(piece);
      const got = Buffer.concat(out.splice(0));
      if (!got.equals(msg)) { t.fail(`window ${wb} message ${i}: ${inf.error}`); break; }
    }
    def.close();
    t.equal(inf.error, null, `window ${wb}: 40 messages decoded`);
  }
});

t.test('inflater: stored and fixed blocks', async (t) => {
  for (const level of [0, 1]) {
    const msg = Buffer.from('stored or fixed '.repeat(50));
    const z = zlib.deflateRawSync(msg, { level, strategy: level === 1 ? zlib.constants.Z_FIXED : zlib.constants.Z_DEFAULT_STRATEGY });
    const out: Buffer[] = [];
    const inf = new RawInflater(15, (b) => out.push(Buffer.from(b)));
    for (const b of z) inf.push(Buffer.from([b]));
    t.ok(Buffer.concat(out).equals(msg), `level ${level}`);
  }
});

t.test('inflater: corrupt input is an error, not an exception', async (t) => {
  const r = rng(7);
  const inf = new RawInflater(10, () => {});
  t.equal(inf.push(Buffer.from([0xff, 0xff, 0xff])), false, 'block type 3');
  t.match(inf.error, /block type/);
  // A distance beyond the small window we were promised (sender used window 15, we hold 2^9).
  const def = createDeflater(15);
  const z = await def.compress(Buffer.concat([Buffer.alloc(4000, 'q'), Buffer.from('unique-marker-1234567890'), Buffer.alloc(4000, 'r'), Buffer.from('unique-marker-1234567890')]));
  def.close();
  const small = new RawInflater(9, () => {});
  t.equal(small.push(z), false);
  t.match(small.error, /distance/);
  let failures = 0;
  for (let i = 0; i < 200; i++) {
    const junk = Buffer.alloc(64);
    for (let j = 0; j < junk.length; j++) junk[j] = r(256);
    const x = new RawInflater(10, () => {});
    try { if (!x.push(junk)) failures++; } catch { t.fail('threw'); }
  }
  t.ok(failures > 150, `random bytes mostly rejected (${failures}/200), never thrown`);
});

t.test('protocol reader: messages across any split, bounded prefix', async (t) => {
  const stream = Buffer.concat([vsMsg(9), vsMsg(1, callBody('$input', '"ls\\r"')), vsMsg(3), vsMsg(1, Buffer.alloc(5000, 7)), vsMsg(1, callBody('$acceptModelChanged'))]);
  const want = ['9:0', '1:19', '3:0', '1:5000', '1:28'];
  const r = rng(3);
  for (let round = 0; round < 30; round++) {
    const got: string[] = [];
    const reader = new ProtocolReader({ onMessage: (type, body, len) => { got.push(`${type}:${len}`); t.ok(body.length <= 64); } }, 64);
    for (const piece of splitRandom(stream, r, round % 2 ? 3 : 200)) reader.push(piece);
    if (JSON.stringify(got) !== JSON.stringify(want)) { t.same(got, want, `round ${round}`); break; }
  }
  const bad = new ProtocolReader({ onMessage() {} });
  t.equal(bad.push(Buffer.from([0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])), false, 'unknown type: lost sync');
  const huge = Buffer.alloc(13); huge[0] = 1; huge.writeUInt32BE(0xffffffff, 9);
  t.equal(new ProtocolReader({ onMessage() {} }).push(huge), false, 'absurd length: lost sync');
});

t.test('classifier table', async (t) => {
  const rows: Array<[string, Buffer, unknown]> = [
    ['terminal input', callBody('$input', '"a"'), { kind: 'input' }],
    ['a longer name starting with $input is not input', callBody('$inputFoo'), { kind: 'housekeeping' }],
    ['model change', callBody('$acceptModelChanged'), { kind: 'editor' }],
    ['editor properties', callBody('$acceptEditorPropertiesChanged'), { kind: 'editor' }],
    ['window active', callBody(CALLS.focus, '[true]'), { kind: 'focus', active: true }],
    ['window inactive', callBody(CALLS.focus, '[false]'), { kind: 'focus', active: false }],
    ['file system call', callBody('stat', '{"path":"/x"}'), { kind: 'housekeeping' }],
    ['tiny reply', Buffer.from([0x0c, 0, 0, 0, 9]), { kind: 'housekeeping' }],
  ];
  for (const [name, body, want] of rows) t.same(classifyRegular(body), want, name);
});

t.test('negotiateExtensions table', async (t) => {
  const chrome = 'permessage-deflate; client_max_window_bits';
  const rows: Array<[string, string | undefined, string | undefined, number, ReturnType<typeof negotiateExtensions>]> = [
    ['no extension answered', chrome, undefined, 10, { responseHeader: undefined, inflate: null }],
    ['other extension only', chrome, 'x-foo', 10, { responseHeader: 'x-foo', inflate: null }],
    ['Chrome offer, plain answer: ask for a small window', chrome, 'permessage-deflate', 10,
      { responseHeader: 'permessage-deflate; client_max_window_bits=10', inflate: { windowBits: 10 } }],
    ['server params kept', chrome, 'permessage-deflate; server_max_window_bits=15', 11,
      { responseHeader: 'permessage-deflate; server_max_window_bits=15; client_max_window_bits=11', inflate: { windowBits: 11 } }],
    ['offer caps lower than ours', 'permessage-deflate; client_max_window_bits=9', 'permessage-deflate', 12,
      { responseHeader: 'permessage-deflate; client_max_window_bits=9', inflate: { windowBits: 9 } }],
    ['8 asked: answered, but decoded at 9 (zlib raises raw 8 to 9)', chrome, 'permessage-deflate', 8,
      { responseHeader: 'permessage-deflate; client_max_window_bits=9', inflate: { windowBits: 9 } }],
    ['no client_max_window_bits in offer (Firefox): window 15', 'permessage-deflate', 'permessage-deflate', 10,
      { responseHeader: 'permessage-deflate', inflate: { windowBits: 15 } }],
    ['no offer header at all', undefined, 'permessage-deflate', 10, { responseHeader: 'permessage-deflate', inflate: { windowBits: 15 } }],
    ['two offers, one without the parameter', `${chrome}, permessage-deflate`, 'permessage-deflate', 10,
      { responseHeader: 'permessage-deflate', inflate: { windowBits: 15 } }],
    ['upstream already chose a client window', chrome, 'permessage-deflate; client_max_window_bits=12', 10,
      { responseHeader: 'permessage-deflate; client_max_window_bits=12', inflate: { windowBits: 12 } }],
    ['upstream says no context takeover', chrome, 'permessage-deflate; client_no_context_takeover', 10,
      { responseHeader: 'permessage-deflate; client_no_context_takeover; client_max_window_bits=10', inflate: { windowBits: 10, noContextTakeover: true } }],
    ['we want 15: unchanged', chrome, 'permessage-deflate', 15, { responseHeader: 'permessage-deflate', inflate: { windowBits: 15 } }],
    ['case and spaces', 'Permessage-Deflate ;Client_Max_Window_Bits', 'PERMESSAGE-DEFLATE', 10,
      { responseHeader: 'permessage-deflate; client_max_window_bits=10', inflate: { windowBits: 10 } }],
  ];
  for (const [name, offer, resp, bits, want] of rows) t.same(negotiateExtensions(offer, resp, bits), want, name);
});

t.test('verdict table', async (t) => {
  const c = DEFAULT_ACTIVITY_CONFIG;
  const frames = (n: number, every: number, bytes = 40, from = 0): Evidence[] => Array.from({ length: n }, (_, i) => ({ t: from + i * every, kind: 'frame', bytes }));
  const rows: Array<[string, boolean | null, Evidence[], number, number | null, Partial<typeof c>?]> = [
    ['nothing', null, [], 1000, null],
    ['housekeeping only', null, [{ t: 1, kind: 'housekeeping' }, { t: 5, kind: 'housekeeping' }], 10, null],
    ['terminal input', false, [{ t: 7, kind: 'input' }], 10, 7],
    ['input in the future of now is not seen yet', null, [{ t: 70, kind: 'input' }], 10, null],
    ['editor change, focus unknown', null, [{ t: 3, kind: 'editor' }], 10, 3],
    ['editor change, focus unknown, configured strict', null, [{ t: 3, kind: 'editor' }], 10, null, { focusUnknownIsActive: false }],
    ['editor change while window inactive is ignored', false, [{ t: 3, kind: 'editor' }], 10, null],
    ['editor change after window went inactive', true, [{ t: 2, kind: 'focus', active: false }, { t: 3, kind: 'editor' }], 10, null],
    ['editor change after window came back', false, [{ t: 2, kind: 'focus', active: true }, { t: 3, kind: 'editor' }], 10, 3],
    ['gate switched off', false, [{ t: 3, kind: 'editor' }], 10, 3, { editorNeedsActiveWindow: false }],
    ['latest evidence wins', null, [{ t: 3, kind: 'input' }, { t: 9, kind: 'editor' }], 10, 9],
    ['decode-free: 20 big frames in a minute', null, frames(20, 2000), 60_000, 38_000],
    ['decode-free: 19 big frames in a minute', null, frames(19, 2000), 60_000, null],
    ['decode-free: 20 frames spread over more than a minute', null, frames(20, 3500), 90_000, null],
    ['decode-free: small frames (KeepAlives) never count', null, frames(200, 100, 4), 60_000, null],
    ['decode-free: threshold from config', null, frames(5, 1000), 60_000, 4000, { fallbackMinFrames: 5 }],
  ];
  for (const [name, focus, items, now, want, over] of rows) t.equal(judge({ focus, items }, now, { ...c, ...over }), want, name);
});

async function compressedStream(windowBits: number, msgs: Buffer[], fragment = false): Promise<Buffer> {
  const def = createDeflater(windowBits);
  const frames: Buffer[] = [];
  for (const m of msgs) {
    const z = await def.compress(m);
    if (fragment && z.length > 2) {
      const h = z.length >> 1;
      frames.push(frame(2, z.subarray(0, h), { fin: false, rsv1: true }), frame(9, Buffer.from('p')), frame(0, z.subarray(h)));
    } else frames.push(frame(2, z, { rsv1: true }));
  }
  def.close();
  return Buffer.concat(frames);
}

t.test('tap: compressed traffic end to end', async (t) => {
  const keep = vsMsg(9);
  const rows: Array<{ name: string; msgs: Buffer[]; want: number }> = [
    { name: 'KeepAlives and acks only', msgs: [keep, vsMsg(3), keep, keep], want: 0 },
    { name: 'terminal key', msgs: [keep, vsMsg(1, callBody('$input', '"l"'))], want: 1 },
    { name: 'editor change while inactive', msgs: [vsMsg(1, callBody(CALLS.focus, '[false]')), vsMsg(1, callBody('$acceptModelChanged'))], want: 0 },
    { name: 'editor change after coming back', msgs: [vsMsg(1, callBody(CALLS.focus, '[false]')), vsMsg(1, callBody(CALLS.focus, '[true]')), vsMsg(1, callBody('$acceptModelChanged'))], want: 1 },
    { name: 'two messages in one WebSocket message', msgs: [Buffer.concat([keep, vsMsg(1, callBody('$input', '"x"'))])], want: 1 },
  ];
  for (const fragment of [false, true]) for (const row of rows) {
    const stream = await compressedStream(10, row.msgs, fragment);
    const r = rng(11);
    for (const split of [false, true]) {
      const got: number[] = [];
      let now = 1000;
      const tap = createWsActivityTap({ inflate: { windowBits: 10 }, config: DEFAULT_ACTIVITY_CONFIG, now: () => now++, onActivity: (at) => got.push(at) });
      for (const piece of split ? splitRandom(stream, r, 5) : [stream]) tap.write(piece);
      t.equal(got.length, row.want, `${row.name}${fragment ? ', fragmented' : ''}${split ? ', split' : ''}`);
      t.equal(tap.status().mode, 'decode');
      tap.close();
    }
  }
});

t.test('tap: plain frames, throttling, memory', async (t) => {
  const got: number[] = [];
  let now = 0;
  const tap = createWsActivityTap({ inflate: null, config: DEFAULT_ACTIVITY_CONFIG, now: () => now, onActivity: (at) => got.push(at) });
  for (let i = 0; i < 10; i++) { now = i * 300; tap.write(frame(2, vsMsg(1, callBody('$input', '"k"')))); }
  t.same(got, [0, 1200, 2400], 'at most one report per reportEveryMs');
  t.ok(tap.memoryBytes() < 8 * 1024, `plain tap holds ${tap.memoryBytes()} bytes`);
  const z12 = createWsActivityTap({ inflate: { windowBits: 12 }, config: DEFAULT_ACTIVITY_CONFIG, now: () => 0, onActivity() {} });
  t.ok(2 * z12.memoryBytes() < 32 * 1024, `a tab (two window-12 taps) accounts ${2 * z12.memoryBytes()} bytes, half of issue 5's 64 KB`);
  const z15 = createWsActivityTap({ inflate: { windowBits: 15 }, config: DEFAULT_ACTIVITY_CONFIG, now: () => 0, onActivity() {} });
  t.equal(z15.status().mode, 'fallback', 'window 15 is above the default decode budget');
  const z15ok = createWsActivityTap({ inflate: { windowBits: 15 }, config: { ...DEFAULT_ACTIVITY_CONFIG, maxDecodeWindowBits: 15 }, now: () => 0, onActivity() {} });
  t.equal(z15ok.status().mode, 'decode', 'window 15 decoded when allowed');
  t.ok(z15ok.memoryBytes() > 32 * 1024, 'and then it holds the 32 KB window');
});

t.test('tap: corrupt input falls back or stops, never throws', async (t) => {
  const cfg = { ...DEFAULT_ACTIVITY_CONFIG, fallbackMinFrames: 5 };
  // Corrupt deflate data: framing still fine, so the decode-free rule takes over.
  let now = 0;
  const got: number[] = [];
  const tap = createWsActivityTap({ inflate: { windowBits: 10 }, config: cfg, now: () => now, onActivity: (at) => got.push(at) });
  tap.write(frame(2, Buffer.from([0xff, 0xff, 0xff, 0xff]), { rsv1: true }));
  t.equal(tap.status().mode, 'fallback');
  t.match(tap.status().reason, /inflate/);
  for (let i = 0; i < 6; i++) { now = 1000 * (i + 1); tap.write(frame(2, Buffer.alloc(40, 1), { rsv1: true })); }
  t.same(got, [5000, 6000], 'five big frames within a minute, reported once a second');
  // Compressed frames without a negotiated inflater (an unknown extension set RSV1).
  const unknown = createWsActivityTap({ inflate: null, config: cfg, now: () => 0, onActivity() {} });
  unknown.write(frame(2, Buffer.from('abc'), { rsv1: true }));
  t.equal(unknown.status().mode, 'fallback');
  // Not VS Code's protocol at all.
  const other = createWsActivityTap({ inflate: null, config: cfg, now: () => 0, onActivity() {} });
  other.write(frame(2, Buffer.from('GET / HTTP/1.1 this is not a protocol header')));
  t.equal(other.status().mode, 'fallback');
  t.match(other.status().reason, /protocol/);
  // Broken framing: the tap stops; later writes are ignored.
  const broken = createWsActivityTap({ inflate: null, config: cfg, now: () => 0, onActivity() { t.fail('no activity'); } });
  broken.write(frame(2, Buffer.from('x'), { mask: null }));
  broken.write(frame(2, vsMsg(1, callBody('$input'))));
  t.equal(broken.status().mode, 'stopped');
  // An onActivity that throws must not escape write() either.
  const thrower = createWsActivityTap({ inflate: null, config: cfg, now: () => 0, onActivity() { throw new Error('boom'); } });
  t.doesNotThrow(() => thrower.write(frame(2, vsMsg(1, callBody('$input')))));
  t.equal(thrower.status().mode, 'stopped');
});

t.test('tap: a deflate bomb is not inflated past its budget (RFC 1951: up to 1032:1)', async (t) => {
  // 64 MB of zeros in ~64 KB: VS Code messages of type 0, length 0, so only the budget can stop it.
  const bomb = await compressedStream(10, [Buffer.alloc(64 * 1024 * 1024)]);
  t.ok(bomb.length * INFLATE_RATIO + INFLATE_SLACK_BYTES < 64 * 1024 * 1024, `${bomb.length} bytes on the wire`);
  const tap = createWsActivityTap({ inflate: { windowBits: 10 }, config: DEFAULT_ACTIVITY_CONFIG, now: () => 0, onActivity() {} });
  tap.write(bomb);
  t.equal(tap.status().mode, 'fallback', 'judged by the decode-free rule from there');
  t.match(tap.status().reason, /inflate: more than 32x/);
  // Compressible, but as real traffic is: decoded to the end.
  const text = await compressedStream(10, Array.from({ length: 200 }, (_, i) => vsMsg(1, callBody('$input', `"${'line of text '.repeat(i % 40)}"`))));
  const fine = createWsActivityTap({ inflate: { windowBits: 10 }, config: DEFAULT_ACTIVITY_CONFIG, now: () => 0, onActivity() {} });
  fine.write(text);
  t.equal(fine.status().mode, 'decode');
});

t.test('reconnection: the window-active flag is carried over', async (t) => {
  t.same(connectionIdentity('/stable-x?reconnectionToken=abc&reconnection=true&skipWebSocketFrames=false'), { token: 'abc', reconnection: true });
  t.same(connectionIdentity('/?reconnectionToken=abc&reconnection=false'), { token: 'abc', reconnection: false });
  t.equal(connectionIdentity('/'), null);
  t.equal(connectionIdentity(undefined), null);
  const edit = frame(2, vsMsg(1, callBody('$acceptModelChanged')));
  const first = createWsActivityTap({ inflate: null, config: DEFAULT_ACTIVITY_CONFIG, now: () => 0, onActivity() {} });
  first.write(frame(2, vsMsg(1, callBody(CALLS.focus, '[false]'))));
  t.equal(first.status().focus, false);
  const got: number[] = [];
  const second = createWsActivityTap({ inflate: null, config: DEFAULT_ACTIVITY_CONFIG, initialFocus: first.status().focus, now: () => 5, onActivity: (at) => got.push(at) });
  second.write(edit);
  t.same(got, [], 'a file rewritten after a reconnection of an inactive window is not activity');
  second.write(frame(2, vsMsg(1, callBody('$input', '"x"'))));
  t.same(got, [5], 'terminal input still is');
});
