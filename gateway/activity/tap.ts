// The per-WebSocket tap the proxy feeds with every client-to-server chunk (it observes, never changes bytes).
// Pipeline: RFC 6455 frames -> (RFC 7692 inflate) -> VS Code protocol messages -> classify -> verdict.
// Anything it cannot follow degrades, never throws: undecodable messages fall back to the decode-free rule
// (frame counts and sizes), broken framing stops the tap (the page loads still count over HTTP).

import { FrameParser, type FrameSink } from './frames.js';
import { RawInflater } from './inflate.js';
import type { InflateParams } from './negotiate.js';
import { judge, type ActivityConfig, type Evidence } from './verdict.js';
import { ProtocolReader, classifyMessage } from './vscode.js';

export interface WsActivityTapOptions {
  /** From negotiateExtensions(): how the browser compresses, or null for plain frames. */
  inflate: InflateParams | null;
  config: ActivityConfig;
  /** The window-active flag carried over from this connection's previous socket (a reconnection; see
   *  connectionIdentity()); null/undefined: unknown, judged per config.focusUnknownIsActive. */
  initialFocus?: boolean | null;
  now: () => number;
  onActivity(atMs: number): void;
}

export type TapMode = 'decode' | 'fallback' | 'stopped';

export interface WsActivityTap {
  write(chunk: Buffer): void;
  close(): void;
  /** How this socket is being judged now, and why it left 'decode' (for logs and metrics). */
  status(): { mode: TapMode; reason: string | null; focus: boolean | null };
  /** Bytes held in this tap's buffers plus a fixed estimate for its objects (see README for the measured figure). */
  memoryBytes(): number;
}

// RFC 7692 7.2.2: the sender strips the 0x00 0x00 0xff 0xff that ends each message's sync flush.
const TAIL = new Uint8Array([0x00, 0x00, 0xff, 0xff]);
/** JS object, closure and typed-array header overhead of one tap beyond its buffers' bytes, measured with
 *  bench/activity-memory.ts (V8 heap + ArrayBuffer growth per tap minus the buffers' byte lengths). */
export const TAP_OBJECT_OVERHEAD_BYTES = 4_300;

export function createWsActivityTap(opts: WsActivityTapOptions): WsActivityTap {
  const { config, now, onActivity } = opts;
  let mode: TapMode = 'decode';
  let reason: string | null = null;
  let focus: boolean | null = opts.initialFocus ?? null;
  let lastReport = -Infinity;
  let compressedMsg = false;
  // Decode-free rule state: the times of the last N qualifying frames (a ring), N = fallbackMinFrames.
  const ringSize = Math.max(1, config.fallbackMinFrames);
  let ring: Float64Array | null = null;
  let ringNext = 0;
  let ringCount = 0;

  const report = (t: number): void => {
    if (t - lastReport < config.reportEveryMs) return;
    lastReport = t;
    onActivity(t);
  };

  const onMessage = (type: number, body: Buffer): void => {
    const c = classifyMessage(type, body);
    if (c.kind === 'housekeeping') return;
    if (c.kind === 'focus') { focus = c.active; return; }
    const t = now();
    if (t - lastReport < config.reportEveryMs) return; // nothing new to say yet; skip the verdict
    const at = judge({ focus, items: [{ t, ...c }] }, t, config);
    if (at !== null) report(at);
  };

  let reader: ProtocolReader | null = new ProtocolReader(onMessage, config.messagePrefixBytes);
  let inflater: RawInflater | null = null;
  const feed = (bytes: Uint8Array): void => {
    if (reader && !reader.push(bytes)) fallback(`protocol: ${reader.error}`);
  };

  const fallback = (why: string): void => {
    if (mode !== 'decode') return;
    mode = 'fallback';
    reason = why;
    reader = null;
    inflater = null;
    ring = new Float64Array(ringSize);
    parser.payloadWanted = false;
  };

  const sink: FrameSink = {
    onControl() { /* ping, pong, close: never activity (issue 5) */ },
    onMessageStart(_opcode, compressed) {
      compressedMsg = compressed;
      if (mode === 'decode' && compressed && !inflater) fallback('compressed message without a usable inflater');
    },
    onPayload(bytes) {
      if (mode !== 'decode') return;
      if (!compressedMsg) { feed(bytes); return; }
      if (!inflater!.push(bytes)) fallback(`inflate: ${inflater!.error}`);
    },
    onFrameEnd(fin, length) {
      if (mode === 'decode') {
        if (fin && compressedMsg && inflater) {
          if (!inflater.push(TAIL)) fallback(`inflate: ${inflater.error}`);
          else if (opts.inflate?.noContextTakeover) inflater.reset();
        }
        return;
      }
      if (mode !== 'fallback' || length < config.fallbackMinPayloadBytes) return;
      const t = now();
      ring![ringNext] = t;
      ringNext = (ringNext + 1) % ringSize;
      if (ringCount < ringSize) ringCount++;
      // Cheap pre-checks before the verdict: enough frames, within the window, not reported just now.
      if (ringCount < ringSize || t - lastReport < config.reportEveryMs) return;
      const oldest = ring![ringNext]!;
      if (t - oldest >= config.fallbackWindowMs) return;
      const items: Evidence[] = [];
      for (let i = 0; i < ringSize; i++) items.push({ t: ring![(ringNext + i) % ringSize]!, kind: 'frame', bytes: length });
      const at = judge({ focus, items }, t, config);
      if (at !== null) report(at);
    },
  };
  const parser = new FrameParser(sink);

  if (!config.decode) fallback('decoding switched off in config');
  else if (opts.inflate) {
    const bits = opts.inflate.windowBits;
    if (bits > config.maxDecodeWindowBits) fallback(`client window 2^${bits} above the decode budget 2^${config.maxDecodeWindowBits}`);
    else inflater = new RawInflater(bits, feed);
  }

  return {
    write(chunk: Buffer): void {
      if (mode === 'stopped') return;
      try {
        if (!parser.push(chunk)) { mode = 'stopped'; reason = `framing: ${parser.error}`; reader = null; inflater = null; ring = null; }
      } catch (e) {
        // Never let the proxy's data path see an exception from the observer.
        mode = 'stopped'; reason = `internal: ${(e as Error).message}`; reader = null; inflater = null; ring = null;
      }
    },
    close(): void {
      mode = 'stopped';
      reason ??= 'closed';
      reader = null; inflater = null; ring = null;
    },
    status: () => ({ mode, reason, focus }),
    memoryBytes(): number {
      return TAP_OBJECT_OVERHEAD_BYTES + parser.bufferBytes + (inflater?.bufferBytes ?? 0) + (reader?.bufferBytes ?? 0) + (ring?.byteLength ?? 0);
    },
  };
}
