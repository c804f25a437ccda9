// Decoder for VS Code's remote protocol as the browser sends it (code-server 4.96.4 = VS Code 1.96.4).
// Each WebSocket carries a byte stream of messages, each with a 13-byte header: type (1 byte), id, ack and data
// length (uint32 big-endian each) (VS Code src/vs/base/parts/ipc/common/ipc.net.ts, ProtocolMessage). Messages
// may span WebSocket messages and one WebSocket message may hold several, so this reader is a stream parser.
// Only the first `capBytes` of each body are kept: method names sit in the first few dozen bytes.
//
// Everything that names a VS Code internal lives in CALLS below, so a code-server upgrade that renames one is a
// one-line change, caught by the recorded-traffic test (test/activity-fixtures.test.ts).

export const enum MsgType { None = 0, Regular = 1, Control = 2, Ack = 3, Disconnect = 5, ReplayRequest = 6, Pause = 7, Resume = 8, KeepAlive = 9 }

export type Classified =
  | { kind: 'input' }                    // a key or command a person gave (terminal input)
  | { kind: 'editor' }                   // editor model / cursor / scroll / open-editor changes (gated by focus)
  | { kind: 'focus'; active: boolean }   // VS Code's own window-active flag
  | { kind: 'housekeeping' };            // KeepAlive, Ack, control, latency pings, replies, file system calls...

/**
 * Method names, as the browser sends them. Both encodings VS Code uses here (the IPC channel serializer on the
 * management socket, RPCProtocol's short strings on the extension-host socket) write a one-byte length right
 * before a short name, so each pattern is `length byte + name`: "$input" never matches "$inputFoo".
 */
export const CALLS = {
  /** remoteterminal channel: keystrokes typed into a terminal. */
  input: ['$input'],
  /** Workbench changes that a person usually causes but a program can too, so they only count while the window
   *  reports itself active: ExtHostDocuments / ExtHostEditors / ExtHostDocumentsAndEditors (edits, cursor,
   *  selection, scroll, editor switches) and the search view's query (ExtHostSearch: searching as you type). */
  editor: ['$acceptModelChanged', '$acceptEditorPropertiesChanged', '$acceptDocumentsAndEditorsDelta', '$provideTextSearchResults'],
  /** ExtHostWindow: VS Code's "window active" flag (focused and recently used), argument true|false. */
  focus: '$onDidChangeWindowActive',
} as const;

function pattern(name: string): Uint8Array {
  const b = Buffer.from(name, 'latin1');
  return Buffer.concat([Buffer.from([b.length]), b]);
}

// Built once from the constant table above; read-only.
const INPUT = CALLS.input.map(pattern);
const EDITOR = CALLS.editor.map(pattern);
const FOCUS = pattern(CALLS.focus);
const TRUE = Buffer.from('true');
const FALSE = Buffer.from('false');

/** Classifies one whole or truncated message body (a Buffer view of the kept prefix). */
export function classifyRegular(body: Buffer): Classified {
  for (const p of INPUT) if (body.indexOf(p) >= 0) return { kind: 'input' };
  for (const p of EDITOR) if (body.indexOf(p) >= 0) return { kind: 'editor' };
  const f = body.indexOf(FOCUS);
  if (f >= 0) {
    const rest = body.subarray(f + FOCUS.length);
    const t = rest.indexOf(TRUE), n = rest.indexOf(FALSE);
    if (t >= 0 && (n < 0 || t < n)) return { kind: 'focus', active: true };
    if (n >= 0) return { kind: 'focus', active: false };
  }
  return { kind: 'housekeeping' };
}

export function classifyMessage(type: number, body: Buffer): Classified {
  return type === MsgType.Regular ? classifyRegular(body) : { kind: 'housekeeping' };
}

const EMPTY_BODY = Buffer.alloc(0);

/** Largest body we believe is real; anything above means we lost sync (or the stream is not this protocol). */
const MAX_BODY = 256 * 1024 * 1024;

/** What a ProtocolReader reports: each message's type and its first bytes (up to the cap). */
export interface MessageSink { onMessage(type: number, body: Buffer, length: number): void }

export class ProtocolReader {
  // The 13-byte header as the two fields read from it (type: byte 0; length: bytes 9-12), not a
  // typed array per socket (bench/, idle memory per WebSocket).
  private headType = 0;
  private headBodyLen = 0;
  private headLen = 0;
  // Allocated at the first message with a body: an idle socket never needs it (issue 7, idle memory).
  private body: Buffer | undefined;
  private kept = 0;
  private left = -1; // body bytes still to come; -1 while reading a header
  private type = 0;
  private msgLen = 0;
  error: string | null = null;

  constructor(private readonly sink: MessageSink, private readonly capBytes = 512) {}

  get bufferBytes(): number { return this.body?.byteLength ?? 0; }

  /** Feeds decoded WebSocket payload bytes; returns false once the stream does not parse as this protocol. */
  push(bytes: Uint8Array): boolean {
    if (this.error) return false;
    let p = 0;
    while (p < bytes.length) {
      if (this.left < 0) {
        while (p < bytes.length && this.headLen < 13) {
          const k = this.headLen++;
          const byte = bytes[p++]!;
          if (k === 0) { this.headType = byte; this.headBodyLen = 0; }
          else if (k >= 9) this.headBodyLen = this.headBodyLen * 256 + byte; // big-endian uint32
        }
        if (this.headLen < 13) return true;
        this.headLen = 0;
        this.type = this.headType;
        const len = this.headBodyLen;
        if (this.type > MsgType.KeepAlive || this.type === 4 || len > MAX_BODY) {
          this.error = `unexpected header type=${this.type} length=${len}`;
          return false;
        }
        this.left = len;
        this.msgLen = len;
        this.kept = 0;
        if (len === 0) this.finish();
        continue;
      }
      const n = Math.min(this.left, bytes.length - p);
      const body = (this.body ??= Buffer.alloc(this.capBytes));
      const room = Math.min(n, body.length - this.kept);
      if (room > 0) { body.set(bytes.subarray(p, p + room), this.kept); this.kept += room; }
      p += n;
      this.left -= n;
      if (this.left === 0) this.finish();
    }
    return true;
  }

  private finish(): void {
    this.left = -1;
    this.sink.onMessage(this.type, this.body ? this.body.subarray(0, this.kept) : EMPTY_BODY, this.msgLen);
  }
}

/**
 * The reconnection identity VS Code puts on its WebSocket URL (`?reconnectionToken=...&reconnection=true|false`).
 * A reconnection resumes the same extension host, whose window-active flag is only sent on change: the caller
 * should hand the previous socket's focus state (status().focus) to the new tap as `initialFocus`.
 */
export function connectionIdentity(url: string | undefined): { token: string; reconnection: boolean } | null {
  if (!url) return null;
  const q = url.indexOf('?');
  if (q < 0) return null;
  const params = new URLSearchParams(url.slice(q + 1));
  const token = params.get('reconnectionToken');
  if (!token) return null;
  return { token, reconnection: params.get('reconnection') === 'true' };
}
