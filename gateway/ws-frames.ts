// A passive RFC 6455 frame-boundary tracker, one per direction of a proxied WebSocket (issue 8).
// The bytes are relayed raw; the gateway only needs to know where one frame ends and the next begins,
// so it can inject its own control frames (ping, close 1001) between frames, never inside one.
// RFC 6455 5.4: control frames may be injected between the frames of a fragmented message.
// It reads at most 14 header bytes per frame and skips payloads by count: cheap on every chunk.
import { randomBytes } from 'node:crypto';

export class FrameTracker {
  // The header as numbers, not a 14-byte buffer: a buffer per direction was 0.4 KB of every idle
  // WebSocket's heap (bench/, idle memory per WebSocket).
  private b1 = 0;
  private opcode = 0;
  /** The extended payload length, accumulated big-endian from header bytes 2..(2 + its size). */
  private ext = 0;
  private headerLen = 0;
  /** Header bytes needed before the payload length is known (2, then up to 14). */
  private need = 2;
  private payloadLeft = 0;
  /** Whether the frame being read is a data frame (text, binary, continuation). */
  private inData = false;
  /** Set once a header is nonsense (reserved opcode): injection is then never safe. */
  broken = false;
  /** A close frame went this way: the peer was told already. */
  closeSeen = false;

  /** Where the last feedToBoundary() stopped. */
  private stoppedAt = 0;

  /** Consumes one chunk; returns whether it carried any data-frame bytes (control frames do not count). */
  feed(chunk: Buffer): boolean { return this.scan(chunk, 0, false); }

  /**
   * Consumes chunk[from..] up to the end of the first frame that ends in it and returns the offset
   * after that frame (chunk.length if none does): where a frame of ours may go inside a chunk.
   */
  feedToBoundary(chunk: Buffer, from: number): number {
    this.stoppedAt = chunk.length;
    this.scan(chunk, from, true);
    return this.stoppedAt;
  }

  private scan(chunk: Buffer, from: number, stop: boolean): boolean {
    let i = from;
    let data = false;
    const n = chunk.length;
    while (i < n) {
      if (this.payloadLeft > 0) {
        const take = Math.min(this.payloadLeft, n - i);
        this.payloadLeft -= take;
        i += take;
        if (this.inData) data = true;
        if (stop && this.atBoundary()) { this.stoppedAt = i; return data; }
        continue;
      }
      const byte = chunk[i++];
      const k = this.headerLen++;
      if (k === 0) this.opcode = byte & 0x0f;
      else if (k === 1) {
        this.b1 = byte;
        const len7 = byte & 0x7f;
        this.need = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + (byte & 0x80 ? 4 : 0);
        this.ext = 0;
      } else if (k < this.need - (this.b1 & 0x80 ? 4 : 0)) this.ext = this.ext * 256 + byte; // mask bytes are only counted
      if (this.headerLen < this.need) continue;
      const opcode = this.opcode;
      // Opcodes 3-7 and 11-15 are reserved (RFC 6455 5.2): we no longer know where frames end.
      if ((opcode > 2 && opcode < 8) || opcode > 10) this.broken = true;
      const len7 = this.b1 & 0x7f;
      this.payloadLeft = len7 >= 126 ? this.ext : len7;
      this.inData = opcode < 8;
      if (opcode === 0x8) this.closeSeen = true;
      if (this.inData) data = true;
      this.headerLen = 0;
      this.need = 2;
      if (stop && this.atBoundary()) { this.stoppedAt = i; return data; }
    }
    return data;
  }

  /** True between frames: a frame written now cannot split one. */
  atBoundary(): boolean {
    return !this.broken && this.headerLen === 0 && this.payloadLeft === 0;
  }
}

const OP_CLOSE = 0x8;
const OP_PING = 0x9;

/** A control frame as a server sends it (unmasked, RFC 6455 5.1). */
export function serverFrame(opcode: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([Buffer.from([0x80 | opcode, payload.length]), payload]);
}

/** A frame as a client sends it (masked with a fresh key, RFC 6455 5.3), FIN set, payload under 126 bytes. */
export function clientFrame(opcode: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const mask = randomBytes(4);
  const masked = Buffer.alloc(payload.length);
  for (let i = 0; i < payload.length; i++) masked[i] = payload[i] ^ mask[i & 3];
  return Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | payload.length]), mask, masked]);
}

export function closePayload(code: number, reason = ''): Buffer {
  const r = Buffer.from(reason).subarray(0, 123);
  const b = Buffer.alloc(2 + r.length);
  b.writeUInt16BE(code, 0);
  r.copy(b, 2);
  return b;
}

export const PING = OP_PING;
export const CLOSE = OP_CLOSE;
/** RFC 6455 7.4.1: the endpoint is going away (server shutdown); VS Code reconnects. */
export const GOING_AWAY = 1001;
/** RFC 6455 7.4.1: policy violation; here, the session that opened the socket was revoked. */
export const POLICY_VIOLATION = 1008;
