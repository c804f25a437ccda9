// The one error catalogue: every error the gateway answers with has a stable code here, and this
// file alone maps codes to HTTP status. Tests compare codes (the `code` field in JSON, the
// `x-gateway-error` header), never message text.
import { escapeHtml, page } from './pages.js';

export const ERROR_CATALOGUE = {
  HOST_UNKNOWN: { status: 404, title: 'No such workspace host' },
  HOST_MALFORMED: { status: 400, title: 'Malformed host' },
  BAD_REQUEST: { status: 400, title: 'Bad request' },
  METHOD_NOT_ALLOWED: { status: 405, title: 'Method not allowed' },
  // Admin API bodies (RFC 9110 15.5.14, 15.5.16): their own codes, so a client can tell "send less" and
  // "send JSON" from a field that failed validation (all three were BAD_REQUEST).
  BODY_TOO_LARGE: { status: 413, title: 'Request body too large' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, title: 'Request body must be application/json' },
  PROXY_TARGET_FORBIDDEN: { status: 400, title: 'Proxying to other hosts is not allowed' },
  NOT_FOUND: { status: 404, title: 'Not found' },
  NOT_SIGNED_IN: { status: 401, title: 'Sign in to open this workspace' },
  LOGIN_TOKEN_INVALID: { status: 401, title: 'This sign-in link is not valid' },
  LOGIN_TOKEN_EXPIRED: { status: 401, title: 'This sign-in link has expired' },
  LOGIN_TOKEN_USED: { status: 401, title: 'This sign-in link was already used' },
  ORIGIN_FORBIDDEN: { status: 403, title: 'A request from another site was refused' },
  ADMIN_UNAUTHORIZED: { status: 401, title: 'Admin token required' },
  RATE_LIMITED: { status: 429, title: 'Too many requests' },
  HEADERS_TOO_LARGE: { status: 431, title: 'Request headers too large' },
  REQUEST_TIMEOUT: { status: 408, title: 'Request took too long to arrive' },
  WORKSPACE_STOPPED: { status: 503, title: 'Workspace is stopped', retryAfterS: 10 },
  WORKSPACE_STARTING: { status: 503, title: 'Workspace is starting', retryAfterS: 2 },
  WORKSPACE_STOPPING: { status: 503, title: 'Workspace is stopping', retryAfterS: 5 },
  WORKSPACE_BUSY: { status: 409, title: 'Workspace is starting or stopping; try again', retryAfterS: 5 },
  WORKSPACE_START_FAILED: { status: 503, title: 'Workspace failed to start', retryAfterS: 30 },
  PREPARE_FAILED: { status: 503, title: 'Could not prepare the workspace\'s first start', retryAfterS: 10 },
  STORE_UNAVAILABLE: { status: 503, title: 'Workspace state is unavailable', retryAfterS: 5 },
  BACKEND_UNAVAILABLE: { status: 503, title: 'Workspace backend is unavailable', retryAfterS: 5 },
  SHUTTING_DOWN: { status: 503, title: 'Gateway is restarting', retryAfterS: 1 },
  UPSTREAM_UNREACHABLE: { status: 502, title: 'Workspace did not answer' },
  // The workspace answered, but not in HTTP the gateway can pass on (a student's app behind /proxy/<port>
  // may send anything): its fault, like a 500 of its own, so no re-check of the route and no SLO burn.
  UPSTREAM_BAD_RESPONSE: { status: 502, title: 'Workspace sent a response that cannot be passed on' },
  UPSTREAM_TIMEOUT: { status: 504, title: 'Workspace took too long to answer' },
  INTERNAL: { status: 500, title: 'Internal gateway error' },
} as const satisfies Record<string, { status: number; title: string; retryAfterS?: number }>;

export type ErrorCode = keyof typeof ERROR_CATALOGUE;

export class GatewayError extends Error {
  constructor(readonly code: ErrorCode, readonly detail?: string, options?: { cause?: unknown }) {
    super(detail ?? ERROR_CATALOGUE[code].title, options);
    this.name = 'GatewayError';
  }
}

export interface RenderedError {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** One response for an error code: HTML for a browser, JSON for a program. */
export function renderError(code: ErrorCode, opts: { html: boolean; detail?: string; requestId?: string }): RenderedError {
  const entry: { status: number; title: string; retryAfterS?: number } = ERROR_CATALOGUE[code];
  const headers: Record<string, string> = {
    'cache-control': 'no-store',
    'x-gateway-error': code,
  };
  if (entry.retryAfterS !== undefined) headers['retry-after'] = String(entry.retryAfterS);
  if (opts.requestId) headers['x-request-id'] = opts.requestId;
  if (opts.html) {
    headers['content-type'] = 'text/html; charset=utf-8';
    const detail = opts.detail ? `<p>${escapeHtml(opts.detail)}</p>` : '';
    const body = page(entry.title, `<h1>${escapeHtml(entry.title)}</h1>${detail}<p class="code">${code}${opts.requestId ? ` · ${escapeHtml(opts.requestId)}` : ''}</p>`);
    return { status: entry.status, headers, body };
  }
  headers['content-type'] = 'application/json; charset=utf-8';
  const body = JSON.stringify({
    error: { code, message: entry.title, ...(opts.detail ? { detail: opts.detail } : {}), ...(opts.requestId ? { requestId: opts.requestId } : {}) },
  });
  return { status: entry.status, headers, body };
}

/**
 * The raw bytes for an error on a socket that was never handed to an HTTP response (upgrades, the
 * warm lane). `head`: the answer to a HEAD request, its length and no content (RFC 9110 9.3.2).
 */
export function renderErrorOnSocket(code: ErrorCode, requestId?: string, html = false, head = false): string {
  const r = renderError(code, { html, requestId });
  const lines = [`HTTP/1.1 ${r.status} ${ERROR_CATALOGUE[code].title}`];
  for (const [k, v] of Object.entries(r.headers)) lines.push(`${k}: ${v}`);
  lines.push(`content-length: ${Buffer.byteLength(r.body)}`, 'connection: close');
  return `${lines.join('\r\n')}\r\n\r\n${head ? '' : r.body}`;
}

/** The code for a request Node's HTTP parser refused or timed out (a server's `clientError`), on either port. */
export function clientErrorCode(nodeCode: string | undefined): ErrorCode {
  return nodeCode === 'HPE_HEADER_OVERFLOW' ? 'HEADERS_TOO_LARGE' : nodeCode === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'REQUEST_TIMEOUT' : 'BAD_REQUEST';
}
