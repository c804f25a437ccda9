// A small, synchronous, streaming raw-DEFLATE decoder (RFC 1951) for permessage-deflate client messages.
// Why not node:zlib: its streams are asynchronous (a thread-pool hop per WebSocket frame on the proxy's hot
// path) and its state is native memory we cannot size per socket. This one holds exactly 2^windowBits bytes of
// history plus ~1.3 KB of code tables, suspends between any two input bytes, and keeps no output: it hands
// each run of decoded bytes to a sink as a view into its window.

const enum St { Header, StoredLen, Stored, DynCounts, DynClen, DynLens, Codes, Error }

// Length and distance bases and extra bits (RFC 1951 3.2.5).
const LEN_BASE = new Uint16Array([3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258]);
const LEN_EXTRA = new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]);
const DIST_BASE = new Uint16Array([1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073,
  4097, 6145, 8193, 12289, 16385, 24577]);
const DIST_EXTRA = new Uint8Array([0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13]);
// Order in which code length code lengths are sent (RFC 1951 3.2.7).
const CLEN_ORDER = new Uint8Array([16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]);

/** Canonical Huffman code as (count per length, symbols sorted by code), plus a lookup table for codes of up to
 *  FAST_BITS bits indexed by the next FAST_BITS input bits (entry = symbol << 4 | length, 0 = not there);
 *  longer codes are decoded bit by bit. */
interface Huff { count: Uint16Array; symbol: Uint16Array; fast: Uint16Array }
const FAST_BITS = 9;
const FAST_MASK = (1 << FAST_BITS) - 1;
const newHuff = (symbols: number): Huff => ({ count: new Uint16Array(16), symbol: new Uint16Array(symbols), fast: new Uint16Array(1 << FAST_BITS) });

function buildHuff(h: Huff, lengths: Uint8Array, n: number): boolean {
  h.count.fill(0);
  for (let i = 0; i < n; i++) h.count[lengths[i]!]!++;
  if (h.count[0] === n) return true; // no codes (allowed for distances when only literals are used)
  let left = 1;
  for (let len = 1; len <= 15; len++) {
    left = (left << 1) - h.count[len]!;
    if (left < 0) return false; // over-subscribed
  }
  const offs = new Uint16Array(16);
  for (let len = 1; len < 15; len++) offs[len + 1] = offs[len]! + h.count[len]!;
  for (let i = 0; i < n; i++) if (lengths[i] !== 0) h.symbol[offs[lengths[i]!]!++] = i;
  h.count[0] = 0;
  // Fast table: walk codes in canonical order; DEFLATE sends codes MSB first into an LSB-first bit stream,
  // so a code's table slots are its bit-reversed value plus every pattern of the bits that follow it.
  h.fast.fill(0);
  let code = 0, k = 0;
  for (let len = 1; len <= FAST_BITS; len++) {
    for (let i = 0; i < h.count[len]!; i++, k++, code++) {
      let rev = 0;
      for (let b = 0; b < len; b++) rev |= ((code >> b) & 1) << (len - 1 - b);
      for (let j = rev; j <= FAST_MASK; j += 1 << len) h.fast[j] = (h.symbol[k]! << 4) | len;
    }
    code <<= 1;
  }
  return true;
}

function fixedTables(): { lit: Huff; dist: Huff } {
  const l = new Uint8Array(288);
  l.fill(8, 0, 144); l.fill(9, 144, 256); l.fill(7, 256, 280); l.fill(8, 280, 288);
  const lit = newHuff(288);
  buildHuff(lit, l, 288);
  const d = new Uint8Array(30).fill(5);
  const dist = newHuff(30);
  buildHuff(dist, d, 30);
  return { lit, dist };
}
// Immutable after construction: shared read-only by every inflater.
const FIXED = fixedTables();

const EMPTY = new Uint8Array(0);

export type InflateSink = (bytes: Uint8Array) => void;

export class RawInflater {
  private readonly win: Uint8Array;
  private readonly mask: number;
  private wpos = 0;
  private filled = 0; // bytes of history available (saturates at window size)
  private emitFrom = 0;
  private pendingOut = 0;

  private st: St = St.Header;
  private last = false;
  private bitBuf = 0;
  private bitCnt = 0;
  private inp: Uint8Array = EMPTY;
  private pos = 0;
  private carry: Uint8Array | null = null;

  private storedLeft = 0;
  private nlen = 0; private ndist = 0; private ncode = 0; private idx = 0;
  private readonly lens = new Uint8Array(19 + 286 + 30); // code length code, then literal/length and distance lengths
  private readonly dynLit: Huff = newHuff(288);
  private readonly dynDist: Huff = newHuff(30);
  private lit: Huff = FIXED.lit;
  private dist: Huff = FIXED.dist;

  /** Set once the stream is found corrupt; no further input is decoded. */
  error: string | null = null;

  constructor(windowBits: number, private readonly sink: InflateSink) {
    if (!(windowBits >= 8 && windowBits <= 15)) throw new RangeError('windowBits must be 8..15');
    this.win = new Uint8Array(1 << windowBits);
    this.mask = this.win.length - 1;
  }

  /** Bytes held by this instance's buffers (for the memory report). */
  get bufferBytes(): number {
    // window + code lengths + two dynamic tables (counts, symbols, fast lookup; Uint16) + carried input
    return this.win.byteLength + this.lens.byteLength + 2 * (16 + 288 + 16 + 30 + 2 * (1 << FAST_BITS)) + (this.carry?.byteLength ?? 0);
  }

  /** Drops history and block state (client_no_context_takeover: each message is a fresh stream). */
  reset(): void {
    this.wpos = 0; this.filled = 0; this.emitFrom = 0; this.pendingOut = 0;
    this.st = St.Header; this.bitBuf = 0; this.bitCnt = 0; this.carry = null; this.last = false;
  }

  /** Feeds compressed bytes; decoded output goes to the sink. Returns false once the stream is corrupt. */
  push(data: Uint8Array): boolean {
    if (this.st === St.Error) return false;
    if (this.carry) {
      const joined = new Uint8Array(this.carry.length + data.length);
      joined.set(this.carry); joined.set(data, this.carry.length);
      this.carry = null;
      data = joined;
    }
    this.inp = data;
    this.pos = 0;
    this.run();
    this.flushOut();
    if (!this.failed() && this.pos < data.length) this.carry = data.slice(this.pos);
    this.inp = EMPTY;
    return !this.failed();
  }

  private failed(): boolean { return this.st === St.Error; }

  private fail(why: string): void { this.st = St.Error; this.error = why; }

  private need(n: number): boolean {
    while (this.bitCnt < n) {
      if (this.pos >= this.inp.length) return false;
      this.bitBuf |= this.inp[this.pos++]! << this.bitCnt;
      this.bitCnt += 8;
    }
    return true;
  }

  private take(n: number): number {
    const v = this.bitBuf & ((1 << n) - 1);
    this.bitBuf >>>= n; this.bitCnt -= n;
    return v;
  }

  /** -1: needs more input, -2: invalid code. */
  private decode(h: Huff): number {
    // Load what is there (up to FAST_BITS); a rewind to the caller's checkpoint undoes over-reading.
    while (this.bitCnt < FAST_BITS && this.pos < this.inp.length) { this.bitBuf |= this.inp[this.pos++]! << this.bitCnt; this.bitCnt += 8; }
    const e = h.fast[this.bitBuf & FAST_MASK]!;
    if (e !== 0 && (e & 15) <= this.bitCnt) { this.take(e & 15); return e >> 4; }
    let code = 0, first = 0, index = 0;
    for (let len = 1; len <= 15; len++) {
      if (!this.need(1)) return -1;
      code |= this.take(1);
      const c = h.count[len]!;
      if (code - first < c) return h.symbol[index + code - first]!;
      index += c; first += c; first <<= 1; code <<= 1;
    }
    return -2;
  }

  private put(b: number): void {
    this.win[this.wpos] = b;
    this.wpos = (this.wpos + 1) & this.mask;
    if (this.filled <= this.mask) this.filled++;
    if (++this.pendingOut > this.mask - 258) this.flushOut();
  }

  private flushOut(): void {
    let n = this.pendingOut;
    if (n === 0) return;
    this.pendingOut = 0;
    let from = this.emitFrom;
    this.emitFrom = this.wpos;
    while (n > 0) {
      const run = Math.min(n, this.win.length - from);
      this.sink(this.win.subarray(from, from + run));
      n -= run; from = (from + run) & this.mask;
    }
  }

  // Each step saves (pos, bitBuf, bitCnt) first and restores them when input runs out mid-step, so a step is
  // retried whole when more bytes arrive; the unread tail is carried over (at most a few bytes).
  private run(): void {
    for (;;) {
      const sPos = this.pos, sBuf = this.bitBuf, sCnt = this.bitCnt;
      const ok = this.step();
      if (ok === true) continue;
      if (ok === false) { this.pos = sPos; this.bitBuf = sBuf; this.bitCnt = sCnt; }
      return;
    }
  }

  /** true: progressed; false: out of input (caller rewinds to the step's start); null: stop here (error, or out of
   *  input after the step itself rewound to its last whole symbol). */
  private step(): boolean | null {
    switch (this.st) {
      case St.Header: {
        if (!this.need(3)) return false;
        this.last = this.take(1) === 1; // BFINAL: permessage-deflate senders keep going, so it is only noted
        const type = this.take(2);
        if (type === 0) { this.take(this.bitCnt & 7); this.st = St.StoredLen; }
        else if (type === 1) { this.lit = FIXED.lit; this.dist = FIXED.dist; this.st = St.Codes; }
        else if (type === 2) this.st = St.DynCounts;
        else { this.fail('invalid block type'); return null; }
        return true;
      }
      case St.StoredLen: {
        if (!this.need(16)) return false;
        const len = this.take(16);
        if (!this.need(16)) return false;
        const nlen = this.take(16);
        if ((len ^ 0xffff) !== nlen) { this.fail('stored length mismatch'); return null; }
        this.storedLeft = len;
        this.st = len ? St.Stored : St.Header;
        return true;
      }
      case St.Stored: {
        // Byte aligned here, and the bit buffer is empty (need(16) twice consumed whole bytes).
        while (this.storedLeft > 0 && this.pos < this.inp.length) { this.put(this.inp[this.pos++]!); this.storedLeft--; }
        if (this.storedLeft > 0) return null; // wait for more input; progress is kept
        this.st = St.Header;
        return true;
      }
      case St.DynCounts: {
        if (!this.need(14)) return false;
        this.nlen = this.take(5) + 257; this.ndist = this.take(5) + 1; this.ncode = this.take(4) + 4;
        if (this.nlen > 286 || this.ndist > 30) { this.fail('bad dynamic counts'); return null; }
        this.lens.fill(0, 0, 19);
        this.idx = 0;
        this.st = St.DynClen;
        return true;
      }
      case St.DynClen: {
        if (this.idx < this.ncode) {
          if (!this.need(3)) return false;
          this.lens[CLEN_ORDER[this.idx++]!] = this.take(3);
          return true;
        }
        if (!buildHuff(this.dynLit, this.lens, 19)) { this.fail('bad code length code'); return null; }
        this.idx = 0;
        this.st = St.DynLens;
        return true;
      }
      case St.DynLens: {
        const total = this.nlen + this.ndist;
        if (this.idx < total) {
          // dynLit temporarily holds the code length code; lens[] of the real codes start at 19.
          const sym = this.decode(this.dynLit);
          if (sym === -1) return false;
          if (sym < 0) { this.fail('bad code length symbol'); return null; }
          if (sym < 16) { this.lens[19 + this.idx++] = sym; return true; }
          let rep: number, val = 0;
          if (sym === 16) {
            if (this.idx === 0) { this.fail('repeat with no previous length'); return null; }
            if (!this.need(2)) return false;
            val = this.lens[19 + this.idx - 1]!; rep = 3 + this.take(2);
          } else if (sym === 17) { if (!this.need(3)) return false; rep = 3 + this.take(3); }
          else { if (!this.need(7)) return false; rep = 11 + this.take(7); }
          if (this.idx + rep > total) { this.fail('too many lengths'); return null; }
          while (rep--) this.lens[19 + this.idx++] = val;
          return true;
        }
        if (this.lens[19 + 256] === 0) { this.fail('no end-of-block code'); return null; }
        const litLens = this.lens.subarray(19, 19 + this.nlen);
        const distLens = this.lens.slice(19 + this.nlen, 19 + total);
        if (!buildHuff(this.dynLit, litLens, this.nlen) || !buildHuff(this.dynDist, distLens, this.ndist)) {
          this.fail('bad literal/length or distance code'); return null;
        }
        this.lit = this.dynLit; this.dist = this.dynDist;
        this.st = St.Codes;
        return true;
      }
      case St.Codes: {
        // Loops here instead of returning per symbol; each symbol is its own restartable unit, rewound here.
        for (;;) {
          const sPos = this.pos, sBuf = this.bitBuf, sCnt = this.bitCnt;
          const sym = this.decode(this.lit);
          if (sym === -1) { this.pos = sPos; this.bitBuf = sBuf; this.bitCnt = sCnt; return null; }
          if (sym < 0) { this.fail('bad literal/length code'); return null; }
          if (sym < 256) { this.put(sym); continue; }
          if (sym === 256) { this.st = St.Header; return true; }
          const li = sym - 257;
          if (li >= 29) { this.fail('bad length symbol'); return null; }
          let len = LEN_BASE[li]!;
          const le = LEN_EXTRA[li]!;
          if (le) { if (!this.need(le)) { this.pos = sPos; this.bitBuf = sBuf; this.bitCnt = sCnt; return null; } len += this.take(le); }
          const ds = this.decode(this.dist);
          if (ds === -1) { this.pos = sPos; this.bitBuf = sBuf; this.bitCnt = sCnt; return null; }
          if (ds < 0 || ds >= 30) { this.fail('bad distance code'); return null; }
          let d = DIST_BASE[ds]!;
          const de = DIST_EXTRA[ds]!;
          if (de) { if (!this.need(de)) { this.pos = sPos; this.bitBuf = sBuf; this.bitCnt = sCnt; return null; } d += this.take(de); }
          if (d > this.filled) { this.fail('distance beyond window'); return null; }
          let from = (this.wpos - d) & this.mask;
          while (len--) { this.put(this.win[from]!); from = (from + 1) & this.mask; }
        }
      }
      default:
        return null;
    }
  }
}
