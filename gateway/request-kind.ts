// Who is asking: a browser loading a page, a browser's script, or another program. Decides whether a
// request may start a workspace (only a top-level page load may: issue 2) and whether errors are
// rendered as HTML or JSON.
import type { IncomingHttpHeaders } from 'node:http';

/** Fetch Metadata (W3C) first; without it, a GET whose Accept prefers text/html. */
export function isNavigation(method: string | undefined, headers: IncomingHttpHeaders): boolean {
  if (method !== 'GET') return false;
  const mode = headers['sec-fetch-mode'];
  if (mode !== undefined) return mode === 'navigate';
  return prefersHtml(headers.accept);
}

export function prefersHtml(accept: string | undefined): boolean {
  if (!accept) return false;
  let html = -1;
  let json = -1;
  for (const part of accept.split(',')) {
    const [type, ...params] = part.trim().toLowerCase().split(';');
    const qParam = params.find((p) => p.trim().startsWith('q='));
    const q = qParam ? Number(qParam.trim().slice(2)) : 1;
    if (type === 'text/html' || type === 'application/xhtml+xml') html = Math.max(html, q);
    else if (type === 'application/json' || type === '*/*') json = Math.max(json, type === '*/*' ? q - 0.001 : q);
  }
  return html > 0 && html >= json;
}

/** Errors go to a person as HTML when the request looks like it came from a page load. */
export function wantsHtml(headers: IncomingHttpHeaders): boolean {
  const dest = headers['sec-fetch-dest'];
  if (dest !== undefined) return dest === 'document' || dest === 'iframe';
  return prefersHtml(headers.accept);
}

/** What a request says of where it comes from (W3C Fetch Metadata, and Origin from RFC 6454). */
export interface RequestSite {
  /** Sec-Fetch-Site: same-origin, same-site, cross-site or none. */
  site: string | undefined;
  mode: string | undefined;
  dest: string | undefined;
  origin: string | undefined;
}

/**
 * Whether a request on a workspace host may come from where it says it comes from (issue 3). Every
 * ws-* host serves pages a student writes (code-server's /proxy/<port>), so sibling workspaces are the
 * same site and their requests carry the SameSite=Lax session cookie: a page a classmate links to
 * could post to this workspace's own apps as its owner. Let in only the workspace's own pages, what
 * the person did themselves (Sec-Fetch-Site: none) and page loads from elsewhere (the platform's
 * links, the sign-in link); a browser without Fetch Metadata is held to Origin for what changes state.
 * `isOwnOrigin` (Origin against this request's Host) is asked only when Origin decides.
 */
export function siteAllowed(method: string, from: RequestSite, host: string | undefined, isOwnOrigin: (origin: string, host: string | undefined) => boolean): boolean {
  const { site } = from;
  if (site === 'same-origin' || site === 'none') return true;
  if (site === undefined) return method === 'GET' || method === 'HEAD' || from.origin === undefined || isOwnOrigin(from.origin, host);
  // same-site, cross-site, or anything else (two fields joined): only a top-level page load (Fetch
  // Metadata's resource isolation and navigation isolation policies). Not into an <object> or <embed>,
  // nor a frame: a classmate's page framing this workspace out of sight gets the owner's clicks and
  // keys in their own IDE (clickjacking), and SameSite=Lax sends the cookie along into a same-site frame.
  return from.mode === 'navigate' && (method === 'GET' || method === 'HEAD') && (from.dest === undefined || from.dest === 'document');
}
