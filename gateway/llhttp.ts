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
  /** Frees the native parser: it is not garbage-collected (node:http closes or pools its own). */
  close(): void;
  [callback: number]: unknown;
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
}

const binding = createRequire(import.meta.url)('_http_common') as Binding;
const { HTTPParser } = binding;

/** llhttp's method numbers, as its headers-complete callback reports them. */
export const METHODS: readonly string[] = binding.methods;

/** Answers from onHeadersComplete (llhttp: 0 go on, 1 no body follows, 2 stop after this head). */
export const PARSE_ON = 0;
export const SKIP_BODY = 1;
export const STOP_AFTER_HEAD = 2;

export interface ParserEvents {
  begin?(): void;
  /** Only for heads longer than one callback's worth (32 fields) or split over reads. */
  partial?(fields: string[], url: string): void;
  head(versionMajor: number, versionMinor: number, fields: string[], method: number, url: string,
    status: number, statusText: string, upgrade: boolean, keepAlive: boolean): number;
  body(chunk: Buffer): void;
  complete(): void;
}

/** Back to the start of a message: after a stop (STOP_AFTER_HEAD) llhttp may hold the connection as closed. */
export function restartParser(p: Parser, kind: 'request' | 'response', maxHeaderSize: number): void {
  p.initialize(kind === 'request' ? HTTPParser.REQUEST : HTTPParser.RESPONSE, {}, maxHeaderSize, 0);
}

/**
 * A parser that is done with. Without this each one, and everything its callbacks hold (the whole
 * connection), stays in memory for good (the 30 s soak test found 28 MB). Deferred, as node:http
 * defers its own, so no callback still on the stack runs on a freed parser.
 */
export function releaseParser(p: Parser): void {
  setImmediate(closeNow, p);
}
function closeNow(p: Parser) { p.close(); }

export function createParser(kind: 'request' | 'response', maxHeaderSize: number, on: ParserEvents): Parser {
  const p = new HTTPParser();
  restartParser(p, kind, maxHeaderSize);
  if (on.begin) p[HTTPParser.kOnMessageBegin] = on.begin;
  p[HTTPParser.kOnHeaders] = on.partial ?? (() => undefined);
  p[HTTPParser.kOnHeadersComplete] = on.head;
  p[HTTPParser.kOnBody] = on.body;
  p[HTTPParser.kOnMessageComplete] = on.complete;
  return p;
}
