// A workspace's response head read straight from the bytes, for the warm lane's common case (issue
// 7): HTTP/1.1, a final status with a body, one Content-Length, fields that are exactly what RFC 9112
// allows. Such a head is passed to the client as the bytes it came in, less its hop-by-hop lines, with
// no string made for any field: node's parser made two per field and the lane built the head again
// from them (about 12 k of a warm request's 54 k instructions: bench/instructions.ts); this reads one
// in about 4 k.
// It is a strict subset of what llhttp accepts. Anything else (a head split over reads, 1xx, 204,
// 304, chunked or close-delimited bodies, Connection: close, obs-fold, a byte out of place, two
// Content-Lengths) returns undefined and llhttp parses the response as before, so every message whose
// framing could be read two ways still meets llhttp's checks (RFC 9112 6.3, 11.2: a response the
// gateway and the load balancer framed differently would let a workspace answer another student's
// request on a connection the balancer shares).
import { HOP_BY_HOP } from './http-fields.js';

export interface SimpleHead {
  status: number;
  /** Offset of the body's first byte, just past the blank line. */
  end: number;
  contentLength: number;
  /** A Date field is among the fields (RFC 9110 6.6.1: else the gateway adds one). */
  dated: boolean;
  /** [start, end) offsets of the field lines (with their CRLF) not passed on: hop-by-hop (RFC 9110 7.6.1). */
  drop: number[];
}

const CR = 13;
const LF = 10;

/** RFC 9110 5.6.2 tchar. */
const TCHAR = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~") TCHAR[c.charCodeAt(0)] = 1;
for (let c = 0x30; c <= 0x39; c++) TCHAR[c] = 1;
for (let c = 0x41; c <= 0x5a; c++) { TCHAR[c] = 1; TCHAR[c + 0x20] = 1; }
/** RFC 9110 5.5 field-vchar, SP and HTAB (obs-text included, as llhttp takes it); also the reason phrase's bytes. */
const VALUE = new Uint8Array(256);
VALUE[0x09] = 1;
for (let c = 0x20; c <= 0x7e; c++) VALUE[c] = 1;
for (let c = 0x80; c <= 0xff; c++) VALUE[c] = 1;

const PREFIX = Buffer.from('HTTP/1.1 ', 'latin1');

/** Whether b[at, at + name.length) spells `name` (lower-case letters and '-', as bytes) in any case. */
function named(b: Buffer, at: number, length: number, name: Uint8Array): boolean {
  if (length !== name.length) return false;
  // A tchar ORed with 0x20 is a lower-case letter only if it was that letter in either case.
  for (let i = 0; i < length; i++) if ((b[at + i] | 0x20) !== name[i]) return false;
  return true;
}
const bytesOf = (name: string) => Uint8Array.from(name, (c) => c.charCodeAt(0));
const KEEP_ALIVE = bytesOf('keep-alive');
const DATE = bytesOf('date');
const CONNECTION = bytesOf('connection');
const CONTENT_LENGTH = bytesOf('content-length');
const TRANSFER_ENCODING = bytesOf('transfer-encoding');
/**
 * The lane's hop-by-hop names (http-fields.ts HOP_BY_HOP, which the llhttp path drops by) as bytes,
 * by length. Transfer-Encoding never gets here: it ends the fast path first.
 */
const HOP_BY_HOP_BYTES: Uint8Array[][] = [];
for (const name of HOP_BY_HOP) (HOP_BY_HOP_BYTES[name.length] ??= []).push(bytesOf(name));

/** Whether the name at b[at, at + length) is hop-by-hop (RFC 9110 7.6.1): its line is not passed on. */
function hopByHop(b: Buffer, at: number, length: number): boolean {
  const names = length < HOP_BY_HOP_BYTES.length ? HOP_BY_HOP_BYTES[length] : undefined;
  if (names === undefined) return false;
  for (let k = 0; k < names.length; k++) if (named(b, at, length, names[k])) return true;
  return false;
}

/**
 * The head at the start of `b`, if it is a simple one (above) of at most `maxSize` bytes wholly in `b`;
 * undefined for anything else, which llhttp is then given.
 */
export function scanSimpleHead(b: Buffer, maxSize: number): SimpleHead | undefined {
  const n = Math.min(b.length, maxSize);
  if (n < 16) return undefined;
  // Byte by byte: Buffer#compare is a call into C++ that cost more than this whole check.
  for (let k = 0; k < 9; k++) if (b[k] !== PREFIX[k]) return undefined;
  // status-line = HTTP-version SP status-code SP [ reason-phrase ] CRLF (RFC 9112 4)
  const d0 = b[9] - 48, d1 = b[10] - 48, d2 = b[11] - 48;
  if (d0 < 2 || d0 > 5 || d1 < 0 || d1 > 9 || d2 < 0 || d2 > 9 || b[12] !== 0x20) return undefined;
  const status = d0 * 100 + d1 * 10 + d2;
  if (status === 204 || status === 304) return undefined;
  let i = 13;
  while (i < n && VALUE[b[i]]) i++;
  if (i + 1 >= n || b[i] !== CR || b[i + 1] !== LF) return undefined;
  i += 2;
  let contentLength = -1;
  let dated = false;
  const drop: number[] = [];
  // field-line = field-name ":" OWS field-value OWS (RFC 9112 5), each ending in CRLF; a blank line ends the head.
  for (;;) {
    if (i + 1 >= n) return undefined;
    if (b[i] === CR) return b[i + 1] === LF && contentLength >= 0 ? { status, end: i + 2, contentLength, dated, drop } : undefined;
    const line = i;
    while (i < n && TCHAR[b[i]]) i++;
    const nameLength = i - line;
    if (nameLength === 0 || i >= n || b[i] !== 0x3a) return undefined;
    i++;
    const value = i;
    while (i < n && VALUE[b[i]]) i++;
    if (i + 1 >= n || b[i] !== CR || b[i + 1] !== LF) return undefined;
    const valueEnd = i;
    i += 2;
    switch (nameLength) {
      case 4:
        if (named(b, line, 4, DATE)) dated = true;
        break;
      case 10:
        if (named(b, line, 10, CONNECTION)) {
          // Only the usual `keep-alive`: `close`, or fields named as the connection's own, go to llhttp.
          if (!isToken(b, value, valueEnd, KEEP_ALIVE)) return undefined;
        }
        break;
      case 14:
        if (named(b, line, 14, CONTENT_LENGTH)) {
          if (contentLength >= 0) return undefined;
          contentLength = digits(b, value, valueEnd);
          if (contentLength < 0) return undefined;
        }
        break;
      case 17:
        if (named(b, line, 17, TRANSFER_ENCODING)) return undefined;
        break;
      default:
    }
    if (hopByHop(b, line, nameLength)) drop.push(line, i);
  }
}

/** The value between optional whitespace is exactly `token`, in any case. */
function isToken(b: Buffer, start: number, end: number, token: Uint8Array): boolean {
  while (start < end && (b[start] === 0x20 || b[start] === 0x09)) start++;
  while (end > start && (b[end - 1] === 0x20 || b[end - 1] === 0x09)) end--;
  return named(b, start, end - start, token);
}

/**
 * A Content-Length value: 1 to 15 digits after optional whitespace; -1 for anything else. Whitespace
 * after the digits too, which llhttp refuses in some forms (a tab): those heads are its to refuse.
 */
function digits(b: Buffer, start: number, end: number): number {
  while (start < end && (b[start] === 0x20 || b[start] === 0x09)) start++;
  if (end === start || end - start > 15) return -1;
  let v = 0;
  for (let i = start; i < end; i++) {
    const c = b[i] - 48;
    if (c < 0 || c > 9) return -1;
    v = v * 10 + c;
  }
  return v;
}
