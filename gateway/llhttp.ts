// Node's own HTTP/1.1 parser (llhttp, the one node:http runs on), used directly by the warm lane and
// the upstream pool (issue 7: Node's HTTP server and client objects were most of a proxied request's
// CPU). `_http_common` is node:http's internal module; HTTPParser has been exported from it on every
// release line since 0.x and its callbacks are the ones node:http itself installs. Strict parsing
// (no lenient flags) keeps the smuggling defences node:http has: CL with TE, bad chunk sizes, bare LF.
import { createRequire } from 'node:module';

export interface Parser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  /** Bytes consumed, or the parse error (with `code`, e.g. HPE_INVALID_METHOD). */
  execute(data: Buffer): number | (Error & { code?: string });
  /** End of input: completes a response framed by the connection's close. */
  finish(): number | Error | undefined;
  [callback: number | symbol]: unknown;
}

interface Binding {
  HTTPParser: {
    new (): Parser;
    REQUEST: number;
    RESPONSE: number;
    kOnMessageBegin: number;
    kOnHeaders: number;
    kOnHeadersComplete: number;
    kOnBody: number;
    kOnMessageComplete: number;
  };
  methods: string[];
  /** node:http's own free list of parsers (1,000 kept). */
  parsers: { alloc(): Parser };
  /** What node:http does with a parser it is done with: back to the free list, or closed. */
  freeParser(parser: Parser): void;
}

const binding = createRequire(import.meta.url)('_http_common') as Binding;
const { HTTPParser } = binding;
const CALLBACKS = [HTTPParser.kOnHeaders, HTTPParser.kOnHeadersComplete, HTTPParser.kOnBody, HTTPParser.kOnMessageComplete];
/** node:http's callbacks of a parser taken from its free list, put back before it returns there. */
const kTheirs = Symbol('node:http callbacks');

/** llhttp's method numbers, as its headers-complete callback reports them. */
export const METHODS: readonly string[] = binding.methods;

/** Answers from onHeadersComplete (llhttp: 0 go on, 1 no body follows, 2 stop after this head). */
export const PARSE_ON = 0;
export const SKIP_BODY = 1;
export const STOP_AFTER_HEAD = 2;

/**
 * What a parser reports, implemented by its owner. Installed as module-level functions that find
 * the owner on the parser (llhttp calls them with the parser as `this`): no closures per connection.
 */
export interface ParserEvents {
  /** The whole head: fields as sent (name, value, …), however many parts node's parser gave them in. */
  onHeadersComplete(versionMajor: number, versionMinor: number, fields: string[], method: number, url: string,
    status: number, statusText: string, upgrade: boolean, keepAlive: boolean): number;
  onBody(chunk: Buffer): void;
  onMessageComplete(): void;
}

const kOwner = Symbol('parser owner');
/** Fields and URL so far of a head node's parser hands over in parts (over 32 fields, or split reads). */
const kFields = Symbol('head fields so far');
const kUrl = Symbol('head url so far');
type Owned = Parser & { [kOwner]?: ParserEvents; [kFields]?: string[]; [kUrl]?: string };
function onHeaders(this: Owned, fields: string[], url: string) {
  (this[kFields] ??= []).push(...fields);
  this[kUrl] = (this[kUrl] ?? '') + url;
}
/** After parts, node's parser passes only what came since the last part, or nothing. */
function onHeadersComplete(this: Owned, major: number, minor: number, last: string[] | undefined, method: number, lastUrl: string | undefined, status: number, statusText: string, upgrade: boolean, keepAlive: boolean): number {
  let fields = last ?? [];
  let url = lastUrl ?? '';
  const earlier = this[kFields];
  if (earlier) { fields = earlier.concat(fields); url = (this[kUrl] ?? '') + url; forgetParts(this); }
  return this[kOwner]?.onHeadersComplete(major, minor, fields, method, url, status, statusText, upgrade, keepAlive) ?? PARSE_ON;
}
function forgetParts(p: Owned) { p[kFields] = undefined; p[kUrl] = undefined; }
function onBody(this: Owned, chunk: Buffer) { this[kOwner]?.onBody(chunk); }
/**
 * A chunked message's trailer fields (RFC 9112 7.1.2) come through onHeaders just before its end:
 * dropped here, as neither side forwards trailers, or the next head would start with them.
 */
function onMessageComplete(this: Owned) {
  if (this[kFields] !== undefined) forgetParts(this);
  this[kOwner]?.onMessageComplete();
}

/** Back to the start of a message: after a stop (STOP_AFTER_HEAD) llhttp may hold the connection as closed. */
export function restartParser(p: Parser, kind: 'request' | 'response', maxHeaderSize: number): void {
  forgetParts(p as Owned);
  p.initialize(kind === 'request' ? HTTPParser.REQUEST : HTTPParser.RESPONSE, {}, maxHeaderSize, 0);
  p[HTTPParser.kOnMessageComplete] = onMessageComplete;
}

/**
 * onHeadersComplete's answer when the owner reads this message's body itself: the parser stops after
 * the head (execute returns where the body starts) and reports no completion for it (llhttp would,
 * at once). Until restartParser, which the owner calls for the next message.
 */
export function stopForBody(p: Parser): number {
  p[HTTPParser.kOnMessageComplete] = null;
  return STOP_AFTER_HEAD;
}

/**
 * Whether the owner hears of this message's completion. A request the owner knows ends with its head
 * (no body) need not be reported: each report is a call from C++ into JavaScript, 1.6 k of a warm
 * request's instructions (bench/instructions.ts). restartParser turns reports back on.
 */
export function reportCompletion(p: Parser, on: boolean): void {
  p[HTTPParser.kOnMessageComplete] = on ? onMessageComplete : null;
}

/**
 * A parser that is done with goes back to node:http's free list, as node:http's own do. Native
 * parsers are not garbage-collected (the 30 s soak test saw 28 MB before they were freed), and taking
 * them from node:http's list means a connection handed over to node:http reuses the lane's parser at
 * once instead of holding a second one (1.6 KB of native memory per WebSocket in a burst of them).
 * `now` only where no callback of this parser is on the stack: node:http defers its own likewise.
 */
export function releaseParser(p: Parser, now = false): void {
  if (now) giveBack(p); else setImmediate(giveBack, p);
}
function giveBack(p: Parser) {
  const theirs = p[kTheirs] as unknown[] | undefined;
  if (!theirs) return;
  p[kTheirs] = undefined;
  (p as Owned)[kOwner] = undefined;
  forgetParts(p as Owned);
  CALLBACKS.forEach((k, i) => { p[k] = theirs[i]; });
  p[HTTPParser.kOnMessageBegin] = null;
  binding.freeParser(p);
}

export function createParser(kind: 'request' | 'response', maxHeaderSize: number, owner: ParserEvents): Parser {
  const p = binding.parsers.alloc() as Owned;
  p[kTheirs] = CALLBACKS.map((k) => p[k]);
  p[kOwner] = owner;
  restartParser(p, kind, maxHeaderSize);
  // No message-begin callback: a call into JavaScript per message that no owner needs (http1.ts read()).
  p[HTTPParser.kOnMessageBegin] = null;
  p[HTTPParser.kOnHeaders] = onHeaders;
  p[HTTPParser.kOnHeadersComplete] = onHeadersComplete;
  p[HTTPParser.kOnBody] = onBody;
  p[HTTPParser.kOnMessageComplete] = onMessageComplete;
  return p;
}
