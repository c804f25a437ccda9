// Passive, incremental RFC 6455 frame parser for the client-to-server direction.
// The proxy forwards the very same Buffers upstream, so nothing here writes into a chunk: payload bytes are
// unmasked into a small scratch buffer and handed on in pieces. Memory is the scratch plus a 14-byte header,
// whatever the frame or message size (chunks may split a frame anywhere, even inside its header).

export interface FrameSink {
  /** A ping/pong/close frame header was seen (RFC 6455 5.5); its payload is skipped unread. */
  onControl(opcode: number, length: number): void;
  /** First frame of a text (1) or binary (2) message; `compressed` is RSV1 (RFC 7692 6). */
  onMessageStart(opcode: number, compressed: boolean): void;
  /** Unmasked payload bytes of data frames, in order; a view valid only during the call. */
  onPayload(bytes: Uint8Array): void;
  /** A data frame ended; `fin` ends the message. `length` is the frame's payload length on the wire. */
  onFrameEnd(fin: boolean, length: number): void;
}

const enum S { Header, Payload, Failed }

export class FrameParser {
  private st: S = S.Header;
  // The header as numbers, not 14 + 4 bytes of typed arrays (each an object pair on the heap): an idle
  // WebSocket holds one parser (bench/, idle memory per WebSocket).
  private b0 = 0;
  private b1 = 0;
  /** Extended payload length, accumulated big-endian; `extHi` holds the upper 32 bits of a 64-bit one. */
  private ext = 0;
  private extHi = 0;
  /** The masking key, big-endian (RFC 6455 5.3). */
  private maskKey = 0;
  private headLen = 0;
  // Allocated at the first data payload: an idle or control-only socket never needs it (issue 7, idle memory).
  private scratch: Uint8Array | undefined;
  private left = 0;          // payload bytes left in the current frame
  private maskPhase = 0;
  private frameLen = 0;
  private opcode = 0;
  private fin = false;
  private inMessage = false;
  /** Set false to skip unmasking data payloads (the decode-free rule only needs frame sizes). */
  payloadWanted = true;
  error: string | null = null;

  constructor(private readonly sink: FrameSink, private readonly scratchBytes = 1024) {}

  get bufferBytes(): number { return this.scratch?.byteLength ?? 0; }

  /** Consumes one chunk; returns false once the byte stream is not valid client-to-server framing. */
  push(chunk: Uint8Array): boolean {
    let p = 0;
    const n = chunk.length;
    while (p < n) {
      if (this.st === S.Failed) return false;
      if (this.st === S.Header) {
        // Header bytes one at a time until the header's own length is known and complete.
        while (p < n && this.headLen < this.headerNeeded()) this.headerByte(chunk[p++]!);
        if (this.headLen < this.headerNeeded()) return true;
        this.startFrame();
        continue;
      }
      const take = Math.min(this.left, n - p);
      if (this.opcode < 8 && this.payloadWanted) this.unmask(chunk, p, take);
      p += take;
      this.left -= take;
      if (this.left === 0) this.endFrame();
    }
    return this.st !== S.Failed;
  }

  private extBytes(): number {
    const len7 = this.b1 & 0x7f;
    return len7 === 126 ? 2 : len7 === 127 ? 8 : 0;
  }

  private headerNeeded(): number {
    return this.headLen < 2 ? 2 : 2 + this.extBytes() + ((this.b1 & 0x80) ? 4 : 0);
  }

  private headerByte(byte: number): void {
    const k = this.headLen++;
    if (k === 0) { this.b0 = byte; return; }
    if (k === 1) { this.b1 = byte; this.ext = 0; this.extHi = 0; this.maskKey = 0; return; }
    const extEnd = 2 + this.extBytes();
    if (k < extEnd) {
      // A 64-bit length's upper half goes to extHi, so the 2^53 check below stays exact.
      if (extEnd === 10 && k < 6) this.extHi = this.extHi * 256 + byte;
      else this.ext = this.ext * 256 + byte;
      return;
    }
    this.maskKey = ((this.maskKey << 8) | byte) >>> 0;
  }

  private fail(why: string): void { this.st = S.Failed; this.error = why; }

  private startFrame(): void {
    const b0 = this.b0, b1 = this.b1;
    this.headLen = 0;
    this.fin = (b0 & 0x80) !== 0;
    const rsv1 = (b0 & 0x40) !== 0;
    this.opcode = b0 & 0x0f;
    if (b0 & 0x30) return this.fail('RSV2/RSV3 set');
    if (!(b1 & 0x80)) return this.fail('unmasked client frame'); // RFC 6455 5.1
    let len = b1 & 0x7f;
    if (len === 126) len = this.ext;
    else if (len === 127) {
      if (this.extHi > 0x1fffff) return this.fail('frame length beyond 2^53'); // RFC 6455 5.2: MSB must be 0
      len = this.extHi * 0x100000000 + this.ext;
    }
    this.maskPhase = 0;
    this.left = len;
    this.frameLen = len;
    if (this.opcode >= 8) {
      if (this.opcode > 10) return this.fail('reserved control opcode');
      if (!this.fin || len > 125 || rsv1) return this.fail('bad control frame'); // RFC 6455 5.5
      this.sink.onControl(this.opcode, len);
    } else if (this.opcode === 0) {
      if (!this.inMessage) return this.fail('continuation outside a message');
      if (rsv1) return this.fail('RSV1 on a continuation frame'); // RFC 7692 6.1
    } else if (this.opcode === 1 || this.opcode === 2) {
      if (this.inMessage) return this.fail('new message inside a fragmented one');
      this.inMessage = true;
      this.sink.onMessageStart(this.opcode, rsv1);
    } else {
      return this.fail('reserved data opcode');
    }
    this.st = S.Payload;
    if (len === 0) this.endFrame();
  }

  private endFrame(): void {
    this.st = S.Header;
    if (this.opcode >= 8) return;
    if (this.fin) this.inMessage = false;
    this.sink.onFrameEnd(this.fin, this.frameLen);
  }

  private unmask(src: Uint8Array, from: number, count: number): void {
    const out = (this.scratch ??= new Uint8Array(this.scratchBytes));
    const key = this.maskKey;
    while (count > 0) {
      const k = Math.min(count, out.length);
      let ph = this.maskPhase;
      for (let i = 0; i < k; i++) { out[i] = src[from + i]! ^ ((key >>> ((3 - ph) << 3)) & 0xff); ph = (ph + 1) & 3; }
      this.maskPhase = ph;
      this.sink.onPayload(out.subarray(0, k));
      from += k; count -= k;
    }
  }
}
