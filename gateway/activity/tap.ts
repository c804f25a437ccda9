// The per-WebSocket tap the proxy feeds with every client-to-server chunk (it observes, never changes bytes).
// Pipeline: RFC 6455 frames -> (RFC 7692 inflate) -> VS Code protocol messages -> classify -> verdict.
// Anything it cannot follow degrades, never throws: undecodable messages fall back to the decode-free rule
// (frame counts and sizes), broken framing stops the tap (the page loads still count over HTTP).

import { FrameParser, type FrameSink } from './frames.js';
import { RawInflater } from './inflate.js';
import type { InflateParams } from './negotiate.js';
import { judge, type ActivityConfig, type Evidence } from './verdict.js';
import { ProtocolReader, classifyMessage, type MessageSink } from './vscode.js';

export interface WsActivityTapOptions {
  /** From negotiateExtensions(): how the browser compresses, or null for plain frames. */
  inflate: InflateParams | null;
  config: ActivityConfig;
  /** The window-active flag carried over from this connection's previous socket (a reconnection; see
   *  connectionIdentity()); null/undefined: unknown, judged per config.focusUnknownIsActive. */
  initialFocus?: boolean | null;
  now: () => number;
  /** Handed back to onActivity, so one function serves every tap (no closure per WebSocket). */
  workspaceId?: string;
  /** VS Code's connection token (connectionIdentity()), handed back by status() when the socket closes. */
  connection?: string;
  onActivity(atMs: number, workspaceId: string): void;
}

export type TapMode = 'decode' | 'fallback' | 'stopped';

export interface WsActivityTap {
  write(chunk: Buffer): void;
  close(): void;
  /** How this socket is being judged now, and why it left 'decode' (for logs and metrics). */
  status(): { mode: TapMode; reason: string | null; focus: boolean | null; connection: string | undefined };
  /** Bytes held in this tap's buffers plus a fixed estimate for its objects (see README for the measured figure). */
  memoryBytes(): number;
}

// RFC 7692 7.2.2: the sender strips the 0x00 0x00 0xff 0xff that ends each message's sync flush.
const TAIL = new Uint8Array([0x00, 0x00, 0xff, 0xff]);
/** JS object, closure and typed-array header overhead of one tap beyond its buffers' bytes, measured with
 *  bench/activity-memory.ts (V8 heap + ArrayBuffer growth per tap minus the buffers' byte lengths). */
export const TAP_OBJECT_OVERHEAD_BYTES = 3_150;
/**
 * What a socket's compressed bytes may inflate to: DEFLATE expands up to 1032:1 (RFC 1951 3.2.5: 258 bytes
 * from two bits), so a megabyte of zeros held the event loop for 4 s, every socket's relay with it. Recorded
 * code-server traffic inflates 4-8x over a socket's life (39x for one short message): a socket past 32x, after
 * a first megabyte, is judged by the decode-free rule.
 */
export const INFLATE_RATIO = 32;
export const INFLATE_SLACK_BYTES = 1024 * 1024;

export function createWsActivityTap(opts: WsActivityTapOptions): WsActivityTap {
  return new ActivityTap(opts);
}

/**
 * A class, not closures over a shared scope: one object and the prototype's methods instead of a
 * dozen closures and a context per WebSocket; it keeps the few options it reads, not the options
 * object, and its parsers come with the first bytes (bench/, idle memory per WebSocket).
 */
class ActivityTap implements WsActivityTap, FrameSink, MessageSink {
  private mode: TapMode = 'decode';
  private reason: string | null = null;
  private focus: boolean | null;
  private lastReport = -Infinity;
  private compressedMsg = false;
  /** Bytes the inflater may still produce: grows by INFLATE_RATIO per compressed byte, shrinks by each decoded one. */
  private inflateBudget = INFLATE_SLACK_BYTES;
  // Decode-free rule state: the times of the last N qualifying frames (a ring), N = fallbackMinFrames.
  private ring: Float64Array | null = null;
  private ringNext = 0;
  private ringCount = 0;
  private reader: ProtocolReader | null = null;
  private inflater: RawInflater | null = null;
  private parser: FrameParser | null = null;
  private readonly config: ActivityConfig;
  private readonly now: () => number;
  private readonly onActivity: (atMs: number, workspaceId: string) => void;
  private readonly workspaceId: string;
  readonly connection: string | undefined;
  private readonly noContextTakeover: boolean;

  constructor(opts: WsActivityTapOptions) {
    const { config } = opts;
    this.config = config;
    this.now = opts.now;
    this.onActivity = opts.onActivity;
    this.workspaceId = opts.workspaceId ?? '';
    this.connection = opts.connection;
    this.noContextTakeover = opts.inflate?.noContextTakeover ?? false;
    this.focus = opts.initialFocus ?? null;
    if (!config.decode) this.fallback('decoding switched off in config');
    else if (opts.inflate) {
      const bits = opts.inflate.windowBits;
      if (bits > config.maxDecodeWindowBits) this.fallback(`client window 2^${bits} above the decode budget 2^${config.maxDecodeWindowBits}`);
      else this.inflater = new RawInflater(bits, (bytes) => this.inflated(bytes));
    }
  }

  private report(t: number): void {
    if (t - this.lastReport < this.config.reportEveryMs) return;
    this.lastReport = t;
    this.onActivity(t, this.workspaceId);
  }

  // ---- MessageSink: what the VS Code protocol reader reports
  onMessage(type: number, body: Buffer): void {
    const c = classifyMessage(type, body);
    if (c.kind === 'housekeeping') return;
    if (c.kind === 'focus') { this.focus = c.active; return; }
    const t = this.now();
    if (t - this.lastReport < this.config.reportEveryMs) return; // nothing new to say yet; skip the verdict
    const at = judge({ focus: this.focus, items: [{ t, ...c }] }, t, this.config);
    if (at !== null) this.report(at);
  }

  private inflated(bytes: Uint8Array): void {
    this.inflateBudget -= bytes.length;
    this.feed(bytes);
  }

  /** Compressed bytes to the inflater, within its budget (INFLATE_RATIO). */
  private inflate(bytes: Uint8Array): void {
    this.inflateBudget += INFLATE_RATIO * bytes.length;
    if (!this.inflater!.push(bytes)) this.fallback(`inflate: ${this.inflater!.error}`);
    else if (this.inflateBudget < 0) this.fallback(`inflate: more than ${INFLATE_RATIO}x the compressed bytes`);
  }

  /** Decoded payload bytes, while decoding: to the protocol reader, made at the first of them. */
  private feed(bytes: Uint8Array): void {
    if (this.mode !== 'decode') return;
    const reader = (this.reader ??= new ProtocolReader(this, this.config.messagePrefixBytes));
    if (!reader.push(bytes)) this.fallback(`protocol: ${reader.error}`);
  }

  private fallback(why: string): void {
    if (this.mode !== 'decode') return;
    this.mode = 'fallback';
    this.reason = why;
    this.reader = null;
    this.inflater = null;
    this.ring = new Float64Array(Math.max(1, this.config.fallbackMinFrames));
    if (this.parser) this.parser.payloadWanted = false;
  }

  // ---- FrameSink: what the frame parser reports
  onControl(): void { /* ping, pong, close: never activity (issue 5) */ }

  onMessageStart(_opcode: number, compressed: boolean): void {
    this.compressedMsg = compressed;
    if (this.mode === 'decode' && compressed && !this.inflater) this.fallback('compressed message without a usable inflater');
  }

  onPayload(bytes: Uint8Array): void {
    if (this.mode !== 'decode') return;
    if (!this.compressedMsg) { this.feed(bytes); return; }
    this.inflate(bytes);
  }

  onFrameEnd(fin: boolean, length: number): void {
    const { config } = this;
    if (this.mode === 'decode') {
      if (fin && this.compressedMsg && this.inflater) {
        this.inflate(TAIL);
        if (this.noContextTakeover) this.inflater?.reset();
      }
      return;
    }
    if (this.mode !== 'fallback' || length < config.fallbackMinPayloadBytes) return;
    const t = this.now();
    const ring = this.ring!;
    const size = ring.length;
    ring[this.ringNext] = t;
    this.ringNext = (this.ringNext + 1) % size;
    if (this.ringCount < size) this.ringCount++;
    // Cheap pre-checks before the verdict: enough frames, within the window, not reported just now.
    if (this.ringCount < size || t - this.lastReport < config.reportEveryMs) return;
    const oldest = ring[this.ringNext]!;
    if (t - oldest >= config.fallbackWindowMs) return;
    const items: Evidence[] = [];
    for (let i = 0; i < size; i++) items.push({ t: ring[(this.ringNext + i) % size]!, kind: 'frame', bytes: length });
    const at = judge({ focus: this.focus, items }, t, config);
    if (at !== null) this.report(at);
  }

  // ---- WsActivityTap
  write(chunk: Buffer): void {
    if (this.mode === 'stopped') return;
    try {
      let parser = this.parser;
      if (!parser) {
        parser = this.parser = new FrameParser(this);
        if (this.mode !== 'decode') parser.payloadWanted = false;
      }
      if (!parser.push(chunk)) this.stop(`framing: ${parser.error}`);
    } catch (e) {
      // Never let the proxy's data path see an exception from the observer.
      this.stop(`internal: ${(e as Error).message}`);
    }
  }

  private stop(why: string): void {
    this.mode = 'stopped'; this.reason = why; this.reader = null; this.inflater = null; this.ring = null;
  }

  close(): void {
    this.mode = 'stopped';
    this.reason ??= 'closed';
    this.reader = null; this.inflater = null; this.ring = null;
  }

  status() { return { mode: this.mode, reason: this.reason, focus: this.focus, connection: this.connection }; }

  memoryBytes(): number {
    return TAP_OBJECT_OVERHEAD_BYTES + (this.parser?.bufferBytes ?? 0) + (this.inflater?.bufferBytes ?? 0) + (this.reader?.bufferBytes ?? 0) + (this.ring?.byteLength ?? 0);
  }
}
