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
