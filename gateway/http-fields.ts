// Which header fields cross the gateway (RFC 9110 7.6.1), shared by both forwarders: node:http's
// (first requests of a connection, bodies with Expect, HTTP/1.0) and the warm lane's (gateway/http1.ts).
import type { RequestSite } from './request-kind.js';
import { MISDIRECTED_FIELD, WORKSPACE_FIELD } from '../codeserver/workspace-identity.cjs';

/** RFC 9110 7.6.1: connection-specific fields, never forwarded. */
export const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'proxy-authorization', 'proxy-authenticate']);
/** Client-supplied forwarding claims are replaced, never trusted (issue 3). */
export const FORWARDING = new Set(['forwarded', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port', 'x-real-ip', 'x-client-ip', 'true-client-ip']);
/**
 * WORKSPACE_FIELD: the workspace a request is meant for, named by the gateway alone on every request
 * it forwards; a workspace answering for another (a reused task IP or local port) refuses it with a
 * 421 carrying MISDIRECTED_FIELD (RFC 9110 15.5.20). A client's own field of that name is dropped.
 * Defined once, with the workspace side of the contract.
 */
export { WORKSPACE_FIELD, MISDIRECTED_FIELD } from '../codeserver/workspace-identity.cjs';

/**
 * Whether a field name is in `names` (lower-case), without hashing a name whose length none of them
 * has (most names) or lower-casing one spelled as usual (`connection`, `Connection`): lower-casing
 * and Set lookups of every field name were 3 k of a warm request's instructions (bench/instructions.ts).
 */
function nameTest(names: ReadonlySet<string>): (name: string) => boolean {
  const spellings: string[][] = [];
  for (const n of names) (spellings[n.length] ??= []).push(n, n.replace(/(^|-)[a-z]/g, (c) => c.toUpperCase()));
  return (name) => {
    const usual = name.length < spellings.length ? spellings[name.length] : undefined;
    if (usual === undefined) return false;
    for (let i = 0; i < usual.length; i++) if (usual[i] === name) return true;
    return names.has(name.toLowerCase());
  };
}

export const isHopByHop = nameTest(HOP_BY_HOP);
export const isDateField = nameTest(new Set(['date']));
/**
 * Frames a body passed on as it came (the request to a workspace, a response to the client), so it
 * stays whatever a Connection field names (RFC 9110 7.6.1 forbids naming an end-to-end field): dropped, the body was
 * read upstream as a request of its own, past every check of ours.
 */
export const isContentLength = nameTest(new Set(['content-length']));
/** Never passed on to a workspace as the client sent it: hop-by-hop, forwarding claims, our cookie's field (rebuilt), Expect, the workspace's name (ours). */
const isDroppedRequestField = nameTest(new Set([...HOP_BY_HOP, ...FORWARDING, 'cookie', 'expect', WORKSPACE_FIELD]));

/** The failure logged for a marked 421, on either lane (upstream-pool.ts, proxy.ts's upgrades). */
export const MISDIRECTED_ERROR = 'another workspace answers at this address (421 misdirected)';

/**
 * Whether a 421's fields carry the workspace's marker: it refused a request the gateway meant for
 * another workspace (a stale route). A 421 without it is a student's own app's, passed on as it is.
 */
export function isMisdirected(status: number, fields: readonly string[]): boolean {
  if (status !== 421) return false;
  for (let i = 0; i < fields.length; i += 2) if (fields[i].length === MISDIRECTED_FIELD.length && fields[i].toLowerCase() === MISDIRECTED_FIELD) return true;
  return false;
}

export function connectionTokens(value: string | string[] | undefined): string[] {
  if (!value) return [];
  return (Array.isArray(value) ? value.join(',') : value).split(',').map((s) => s.trim().toLowerCase()).filter(Boolean);
}

/**
 * Lower-case names a raw field list's Connection fields name (they belong to that connection only),
 * other than the hop-by-hop names every caller drops anyway: undefined for the usual `keep-alive`.
 */
export function namedInConnection(raw: ReadonlyArray<string>): Set<string> | undefined {
  let named: Set<string> | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i].length !== 10 || raw[i].toLowerCase() !== 'connection') continue;
    const value = raw[i + 1];
    if (value.length === 10 && value.toLowerCase() === 'keep-alive') continue;
    for (const token of connectionTokens(value)) if (!HOP_BY_HOP.has(token)) (named ??= new Set()).add(token);
  }
  return named;
}

export interface ForwardedFor {
  readonly clientAddress: string;
  readonly proto: 'http' | 'https';
  readonly host: string;
  /**
   * The three X-Forwarded-* fields as head lines: the same for every request of a connection (the warm
   * lane keeps its ForwardedFor), so built once rather than per request.
   */
  readonly lines: string;
}

export function forwardedFields(clientAddress: string, proto: 'http' | 'https', host: string): ForwardedFor {
  return { clientAddress, proto, host, lines: `x-forwarded-for: ${clientAddress}\r\nx-forwarded-proto: ${proto}\r\nx-forwarded-host: ${host}\r\n` };
}

export type RequestBody = 'none' | 'length' | 'chunked';

/** What the warm lane needs to know of a request's fields before it forwards them. */
export interface RequestScan extends RequestSite {
  /** The first Host field's value, and how many Host fields came (more than one is refused, RFC 9112 3.2). */
  host: string | undefined;
  hosts: number;
  /** All Cookie fields, joined as node:http joins them. */
  cookie: string | undefined;
  forwardedFor: string | undefined;
  /** undefined: a body the warm lane leaves to node:http (Expect, a coding other than chunked). */
  body: RequestBody | undefined;
  /** Content-Length as sent, when there is one. */
  length: string | undefined;
}

export function scanRequest(fields: readonly string[]): RequestScan {
  let host: string | undefined;
  let hosts = 0;
  let cookie: string | undefined;
  let forwardedFor: string | undefined;
  let length: string | undefined;
  let coding: string | undefined;
  let expect = false;
  let site: string | undefined;
  let mode: string | undefined;
  let dest: string | undefined;
  let origin: string | undefined;
  for (let i = 0; i < fields.length; i += 2) {
    const name = fields[i];
    const value = fields[i + 1];
    switch (name.length) {
      case 4: if (name.toLowerCase() === 'host') { host ??= value; hosts++; } break;
      case 6: {
        // Accept, Cookie, Origin and Expect share this length: lower-cased once, as below.
        const lower = name.toLowerCase();
        if (lower === 'cookie') cookie = cookie === undefined ? value : `${cookie}; ${value}`;
        else if (lower === 'expect') expect = true;
        else if (lower === 'origin') origin = joined(origin, value);
        break;
      }
      case 14: {
        const lower = name.toLowerCase();
        if (lower === 'content-length') length = value;
        else if (lower === 'sec-fetch-site') site = joined(site, value);
        else if (lower === 'sec-fetch-mode') mode = joined(mode, value);
        else if (lower === 'sec-fetch-dest') dest = joined(dest, value);
        break;
      }
      case 15: if (name.toLowerCase() === 'x-forwarded-for') forwardedFor = joined(forwardedFor, value); break;
      case 17: if (name.toLowerCase() === 'transfer-encoding') coding = joined(coding, value); break;
      default: break;
    }
  }
  let body: RequestBody | undefined = length !== undefined && length !== '0' ? 'length' : 'none';
  if (coding !== undefined) body = coding.trim().toLowerCase() === 'chunked' ? 'chunked' : undefined;
  if (expect) body = undefined;
  return { host, hosts, cookie, forwardedFor, body, length, site, mode, dest, origin };
}

/** A repeated field's values joined as node:http joins them, so both lanes judge the same value. */
const joined = (was: string | undefined, value: string) => (was === undefined ? value : `${was}, ${value}`);

/**
 * The upstream's request head from the client's fields, as gateway/proxy.ts prepares node:http's:
 * hop-by-hop fields and forwarding claims dropped, the cookie without the gateway's own, ours added,
 * and the workspace it is meant for (WORKSPACE_FIELD). Host is kept (code-server checks Origin
 * against it); Content-Length is end-to-end and stays.
 */
export function upstreamRequestHead(method: string, url: string, fields: readonly string[], fwd: ForwardedFor, cookie: string | undefined, workspaceId: string): string {
  const named = namedInConnection(fields);
  let head = `${method} ${url} HTTP/1.1\r\n`;
  for (let i = 0; i < fields.length; i += 2) {
    const name = fields[i];
    // Expect: node:http answered 100-continue already (RFC 9110 10.1.1); the warm lane never takes one.
    if (isDroppedRequestField(name) || (named?.has(name.toLowerCase()) && !isContentLength(name))) continue;
    head += `${name}: ${fields[i + 1]}\r\n`;
  }
  if (cookie !== undefined) head += `cookie: ${cookie}\r\n`;
  return `${head}${fwd.lines}${WORKSPACE_FIELD}: ${workspaceId}\r\n`;
}
