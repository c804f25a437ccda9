// Host parsing: the first step of the request path, pure and decided before any state lookup.
// RFC 9110 7.2 (Host), RFC 1035 2.3.1 (labels). Only `ws-<id>.<base domain>[:port]` is ours.

export type HostVerdict =
  | { kind: 'workspace'; id: string }
  | { kind: 'unknown' }
  | { kind: 'malformed'; why: string };

/** A workspace id is one DNS label: lower-case letters, digits, inner hyphens, at most 60 characters. */
export const WORKSPACE_ID = /^[a-z0-9](?:[a-z0-9-]{0,58}[a-z0-9])?$/;

export function isWorkspaceId(id: string): boolean {
  return WORKSPACE_ID.test(id);
}

const HOST_CHARS = /^[a-z0-9.-]+$/;

export function parseHost(hostHeaders: readonly string[], baseDomain: string): HostVerdict {
  if (hostHeaders.length !== 1) {
    return { kind: 'malformed', why: hostHeaders.length === 0 ? 'no Host header' : 'more than one Host header' };
  }
  let host = hostHeaders[0].trim().toLowerCase();
  if (host.startsWith('[')) return { kind: 'unknown' }; // an IPv6 literal is never a workspace host
  const colon = host.lastIndexOf(':');
  if (colon !== -1) {
    const port = host.slice(colon + 1);
    if (!/^\d{1,5}$/.test(port) || Number(port) > 65535) return { kind: 'malformed', why: 'bad port in Host' };
    host = host.slice(0, colon);
  }
  if (host.endsWith('.')) host = host.slice(0, -1);
  if (host === '' || !HOST_CHARS.test(host) || host.includes('..')) return { kind: 'malformed', why: 'Host is not a host name' };
  const suffix = `.${baseDomain}`;
  if (!host.endsWith(suffix)) return { kind: 'unknown' };
  const label = host.slice(0, -suffix.length);
  if (!label.startsWith('ws-') || label.includes('.')) return { kind: 'unknown' };
  const id = label.slice(3);
  if (!isWorkspaceId(id)) return { kind: 'malformed', why: 'workspace id is not a DNS label of at most 60 characters' };
  return { kind: 'workspace', id };
}

/** All Host header values as sent (Node keeps only the first in req.headers). */
export function hostHeaderValues(rawHeaders: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) if (rawHeaders[i].length === 4 && rawHeaders[i].toLowerCase() === 'host') out.push(rawHeaders[i + 1]);
  return out;
}

/**
 * The request target must be origin-form (RFC 9112 3.2.1). Absolute-form naming our own host is
 * tolerated as RFC 9112 3.2.2 requires; absolute-form naming another host, asterisk-form and
 * authority-form (CONNECT) are refused: a gateway is not a forward proxy.
 */
export function checkRequestTarget(method: string, url: string, hostHeader: string | undefined): 'ok' | 'bad' {
  if (method === 'CONNECT' || url === '*' || url === '') return 'bad';
  if (url.startsWith('/')) return 'ok';
  const m = /^https?:\/\/([^/?#]*)/i.exec(url);
  if (!m || hostHeader === undefined) return 'bad';
  const authority = m[1].toLowerCase();
  if (authority.includes('@')) return 'bad';
  const strip = (h: string) => h.trim().toLowerCase().replace(/:\d+$/, '').replace(/\.$/, '');
  return strip(authority) === strip(hostHeader) ? 'ok' : 'bad';
}

/** code-server's port-proxy routes (`/proxy/<port>/…`, `/absproxy/<port>/…`). */
const PROXY_ROUTE = /^\/(?:abs)?proxy\/([^/?#]*)/i;

/**
 * code-server's /proxy/<port> and /absproxy/<port> may reach only the workspace's own loopback
 * ports (issue 3): `/proxy/80@evil/` would make it fetch another host. The port segment must be
 * plain digits in the raw path and in every percent-decoding of it (up to three layers), each read
 * both as code-server's Express router reads it (as sent: it resolves no dot segment and no
 * backslash, so `/proxy/80@evil/../80/` has the port `80@evil`) and with dot segments, doubled
 * slashes and backslashes resolved (a WHATWG URL parser anywhere on the way may read
 * `/x/../proxy/80@evil/` or `/proxy\80@evil/` as `/proxy/80@evil/`). The path is forwarded as it came.
 */
export function proxyRouteAllowed(url: string): boolean {
  // Nothing to decode, resolve or collapse (most requests): the route is read off the target as it is.
  if (!UNPLAIN.test(url)) return portSegmentAllowed(PROXY_ROUTE.exec(url));
  let path = url;
  for (let layer = 0; layer < 4; layer++) {
    // Resolved only, `/proxy/80@evil/../80/` read as `/proxy/80/`, and code-server fetched `evil`.
    if (!portSegmentAllowed(PROXY_ROUTE.exec(path)) || !portSegmentAllowed(PROXY_ROUTE.exec(normalizePath(path)))) return false;
    let decoded: string;
    // A percent that is not an escape (a file named `100%`, sent as `100%25`, decoded once) stops
    // decodeURIComponent; only ASCII can spell a route, so its ASCII escapes are decoded instead.
    try { decoded = decodeURIComponent(path); } catch { decoded = decodeAsciiEscapes(path); }
    if (decoded === path) return true;
    path = decoded;
  }
  return false; // still changing after four decodings: nobody legitimate encodes that deep
}

/** What may change a path's reading: percent-encoding, backslashes, doubled slashes, dot segments. */
const UNPLAIN = /[%\\]|\/[/.]/;

function decodeAsciiEscapes(path: string): string {
  return path.replace(/%[0-7][0-9a-f]/gi, (e) => String.fromCharCode(parseInt(e.slice(1), 16)));
}

function portSegmentAllowed(route: RegExpExecArray | null): boolean {
  return !route || (/^\d{1,5}$/.test(route[1]) && Number(route[1]) <= 65535);
}

function normalizePath(url: string): string {
  const q = url.search(/[?#]/);
  const path = (q === -1 ? url : url.slice(0, q)).replace(/\\/g, '/').replace(/\/{2,}/g, '/');
  if (!/(^|\/)\.\.?(\/|$)/.test(path)) return path;
  // RFC 3986 5.2.4 remove_dot_segments, via the WHATWG parser on a fixed origin.
  try { return new URL(`http://x${path.startsWith('/') ? '' : '/'}${path}`).pathname; } catch { return path; }
}

/**
 * The origin-form of an accepted absolute-form target (RFC 9112 3.2.2: a server must accept it).
 * Everything after the request path (our own /__gateway/ routes, the proxy-route guard, the
 * workspace itself) then sees `/path?query` and cannot be bypassed by spelling the host in.
 */
export function originForm(url: string): string {
  // A fragment is never part of a request target (RFC 9112 3.2); Node lets one through, so drop it here,
  // where the guards and the upstream both read the result.
  const hash = url.indexOf('#');
  if (hash !== -1) url = url.slice(0, hash);
  if (url.startsWith('/')) return url;
  const m = /^https?:\/\/[^/?]*(.*)$/is.exec(url);
  if (!m) return url;
  return m[1].startsWith('/') ? m[1] : `/${m[1]}`;
}
