// Access control (issue 3): one-time sign-in tokens (JWT, HS256, jose) exchanged for a host-only
// session cookie, checked on every workspace request before anything else can happen.
import { createHmac, webcrypto } from 'node:crypto';
import { isIP } from 'node:net';
import { SignJWT, errors as joseErrors, jwtVerify, type JWTVerifyOptions } from 'jose';
import type { Clock } from './clock.js';
import type { Cidr } from './config.js';
import type { ErrorCode } from './errors.js';

/** `__Host-` (RFC 6265bis 4.1.3.2): Secure, Path=/, no Domain, so ws-a's cookie never reaches ws-b. */
export const SESSION_COOKIE = '__Host-wsgw-session';
/**
 * The same cookie where browsers reach the gateway over plain http (development on *.localhost):
 * host-only still (no Domain), but not Secure, so no `__Host-` prefix. WebKit (Safari) stores no
 * Secure cookie from an http page, even on localhost, where Chromium and Firefox do
 * (test/webkit.test.ts).
 */
export const PLAIN_SESSION_COOKIE = 'wsgw-session';

/** The session cookie's name for the scheme browsers use: Secure and `__Host-` wherever that is https. */
export function sessionCookieName(publicScheme: 'http' | 'https'): string {
  return publicScheme === 'https' ? SESSION_COOKIE : PLAIN_SESSION_COOKIE;
}

export interface AuthOptions {
  secret: string;
  /** GATEWAY_SECRET_ACCEPTED: what was signed under it is taken, nothing is signed with it (a rotation). */
  acceptedSecret?: string;
  sessionTtlMs: number;
  loginTokenMaxTtlMs: number;
  clock: Clock;
}

/** A verified session: `epoch` is what a revocation compares (gateway/revocations.ts). */
export interface Session { workspaceId: string; issuedAt: number; expiresAt: number; epoch: number }

/**
 * `latestEpoch`: the latest value `epoch` can stand for, what a store's data start is compared with
 * (revocations.ts predatesStore): `epoch` itself, or for a link that carries only whole-second `iat`
 * (neither `rev` nor `iat_ms`), the end of that second.
 */
export type LoginCheck = { ok: true; workspaceId: string; jti: string; issuedAt: number; expiresAt: number; epoch: number; latestEpoch: number } | { ok: false; code: ErrorCode; reason: string };

/**
 * When a token or session was issued, to the millisecond: JWT's `iat` holds whole seconds (RFC 7519
 * 4.1.6), and a revocation must void a session signed earlier in the same second as it while one
 * signed after it (the new owner's sign-in) holds. Tokens signed before the claim existed count
 * from the start of their second.
 */
const ISSUED_MS = 'iat_ms';
function issuedAtMs(payload: { iat?: number; [claim: string]: unknown }): number {
  const ms = payload[ISSUED_MS];
  return typeof ms === 'number' && Number.isSafeInteger(ms) ? ms : (payload.iat as number) * 1000;
}

/**
 * The workspace's revocation value a token or session was signed under, read from the store
 * (gateway/revocations.ts): the store's own time, or the epoch in force if later. Signed before the
 * claim existed: its issue time stands in, on the signing replica's clock, as revocations compared
 * it then (skew included), for at most SESSION_TTL after the upgrade.
 */
const EPOCH = 'rev';
function epochOf(payload: { iat?: number; [claim: string]: unknown }): number {
  const epoch = payload[EPOCH];
  return typeof epoch === 'number' && Number.isSafeInteger(epoch) ? epoch : issuedAtMs(payload);
}

/**
 * epochOf's value at its latest: a link with only `iat` was signed somewhere in that second, and one
 * signed in the second a store's data began is not known to be before it (test/access.test.ts signs
 * such links by hand).
 */
function latestEpochOf(payload: { iat?: number; [claim: string]: unknown }): number {
  const exact = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v);
  return exact(payload[EPOCH]) || exact(payload[ISSUED_MS]) ? epochOf(payload) : (payload.iat as number) * 1000 + 999;
}

/** How far ahead of this replica a sign-in link's signer may run before its links are refused here. */
export const LINK_CLOCK_SKEW_MS = 60_000;

/**
 * Separate keys per purpose, so a session cookie can never be replayed as a sign-in token. Imported
 * once: jose imports raw key bytes into WebCrypto on every call (a third of a verification's CPU, and
 * a class of 500 signing in at 09:00 verifies 500 cookies at once; issue 7, class surge).
 */
function deriveKey(secret: string, purpose: string): Promise<CryptoKey> {
  const raw = createHmac('sha256', secret).update(`workspace-gateway/${purpose}`).digest();
  return webcrypto.subtle.importKey('raw', raw, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign', 'verify']);
}

/**
 * Session cookie values looked at per request, in the order the browser sends them. A browser holds
 * one of ours per host (host-only, Path=/); a parent domain's or a longer path's copy makes two or
 * three. Each value not verified before costs a signature check (about 75 µs in jose), so a forged
 * header of 80 values made an unauthenticated request cost 6 ms of CPU.
 */
export const MAX_SESSION_VALUES = 4;

/**
 * A token verified under `key`, else, only where that signature failed, under `accepted` (the
 * accepted secret's key for the same purpose): a token under the current key costs one check, as
 * before. Any other failure (expiry, claims) is the current key's verdict, as the token's own would be.
 */
async function verifyUnder(token: string, key: Promise<CryptoKey>, accepted: Promise<CryptoKey> | undefined, options: JWTVerifyOptions) {
  try {
    return await jwtVerify(token, await key, options);
  } catch (err) {
    if (accepted === undefined || !(err instanceof joseErrors.JWSSignatureVerificationFailed)) throw err;
    return jwtVerify(token, await accepted, options);
  }
}

export function createAuth(opts: AuthOptions) {
  const loginKey = deriveKey(opts.secret, 'login-token');
  const sessionKey = deriveKey(opts.secret, 'session');
  const acceptedLoginKey = opts.acceptedSecret === undefined ? undefined : deriveKey(opts.acceptedSecret, 'login-token');
  const acceptedSessionKey = opts.acceptedSecret === undefined ? undefined : deriveKey(opts.acceptedSecret, 'session');
  // Verified cookies, so the warm path pays for HMAC once per cookie, not per request.
  const verified = new Map<string, Session>();
  const now = () => opts.clock.now();
  const seconds = (ms: number) => Math.floor(ms / 1000);

  /** A cookie verified before, while its session lasts; an expired one is forgotten. */
  function cachedSession(value: string): Session | undefined {
    const hit = verified.get(value);
    if (hit && hit.expiresAt <= now()) { verified.delete(value); return undefined; }
    return hit;
  }

  async function verifySession(value: string): Promise<Session | undefined> {
    if (verified.has(value)) return cachedSession(value);
    try {
      const { payload } = await verifyUnder(value, sessionKey, acceptedSessionKey, {
        algorithms: ['HS256'], currentDate: new Date(now()), typ: 'wsgw-session', requiredClaims: ['sub', 'iat', 'exp'],
      });
      const session = { workspaceId: String(payload.sub), issuedAt: issuedAtMs(payload), expiresAt: (payload.exp as number) * 1000, epoch: epochOf(payload) };
      if (verified.size >= 50_000) verified.delete(verified.keys().next().value!);
      verified.set(value, session);
      return session;
    } catch {
      return undefined;
    }
  }

  return {
    /**
     * `epoch`: Revocations.forSigning's signAs, read from the store; a caller without a store (tests)
     * may leave this replica's clock to stand in for it.
     */
    async createLoginToken(workspaceId: string, jti: string, ttlMs = opts.loginTokenMaxTtlMs, epoch = now()): Promise<string> {
      const t = now();
      return new SignJWT({ [ISSUED_MS]: t, [EPOCH]: epoch })
        .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
        .setSubject(workspaceId).setJti(jti).setIssuedAt(seconds(t)).setExpirationTime(seconds(t + Math.min(ttlMs, opts.loginTokenMaxTtlMs)))
        .sign(await loginKey);
    },

    /** Signature, algorithm, expiry, lifetime and host; one-time use is the caller's (the store). */
    async checkLoginToken(token: string, workspaceId: string): Promise<LoginCheck> {
      try {
        const { payload } = await verifyUnder(token, loginKey, acceptedLoginKey, {
          algorithms: ['HS256'], currentDate: new Date(now()), requiredClaims: ['sub', 'iat', 'exp', 'jti'],
        });
        const expiresAt = (payload.exp as number) * 1000;
        // The lifetime it was signed with (both claims on the signing replica's clock, whole seconds),
        // not exp against this replica's clock, which refused links made on a replica running ahead.
        if (expiresAt - (payload.iat as number) * 1000 > opts.loginTokenMaxTtlMs + 1000) return { ok: false, code: 'LOGIN_TOKEN_INVALID', reason: 'lifetime' };
        // And against this replica's clock, with room for skew: a signer whose clock runs far ahead
        // would otherwise hand out links that stay good here for as long as it is ahead.
        if (expiresAt - now() > opts.loginTokenMaxTtlMs + LINK_CLOCK_SKEW_MS) return { ok: false, code: 'LOGIN_TOKEN_INVALID', reason: 'lifetime' };
        if (payload.sub !== workspaceId) return { ok: false, code: 'LOGIN_TOKEN_INVALID', reason: 'wrong_workspace' };
        return { ok: true, workspaceId, jti: String(payload.jti), issuedAt: issuedAtMs(payload), expiresAt, epoch: epochOf(payload), latestEpoch: latestEpochOf(payload) };
      } catch (err) {
        if (err instanceof joseErrors.JWTExpired) return { ok: false, code: 'LOGIN_TOKEN_EXPIRED', reason: 'expired' };
        if (err instanceof joseErrors.JOSEAlgNotAllowed || err instanceof joseErrors.JOSENotSupported) return { ok: false, code: 'LOGIN_TOKEN_INVALID', reason: 'algorithm' };
        if (err instanceof joseErrors.JWSSignatureVerificationFailed) return { ok: false, code: 'LOGIN_TOKEN_INVALID', reason: 'signature' };
        return { ok: false, code: 'LOGIN_TOKEN_INVALID', reason: 'malformed' };
      }
    },

    /** `epoch` as for createLoginToken. */
    async createSession(workspaceId: string, epoch = now()): Promise<{ value: string; expiresAt: number }> {
      const t = now();
      const expiresAt = t + opts.sessionTtlMs;
      const value = await new SignJWT({ [ISSUED_MS]: t, [EPOCH]: epoch })
        .setProtectedHeader({ alg: 'HS256', typ: 'wsgw-session' })
        .setSubject(workspaceId).setIssuedAt(seconds(t)).setExpirationTime(seconds(expiresAt))
        .sign(await sessionKey);
      return { value, expiresAt };
    },

    /** Whether a session found before has not expired (revocations are gateway/revocations.ts's). */
    isCurrent(session: Session): boolean {
      return session.expiresAt > now();
    },

    /** sessionFor without waiting: only a cookie verified before counts, anything else is undefined. */
    verifiedSessionFor(cookieValues: readonly string[], workspaceId: string): Session | undefined {
      for (let i = 0; i < cookieValues.length && i < MAX_SESSION_VALUES; i++) {
        const s = cachedSession(cookieValues[i]);
        if (s && s.workspaceId === workspaceId) return s;
      }
      return undefined;
    },

    /**
     * The session for this workspace among all cookies of our name (a parent domain or an older
     * session may send more than one, in any order): only one valid for this host counts, among
     * the first MAX_SESSION_VALUES (the same bound as verifiedSessionFor's, so both lanes agree).
     */
    async sessionFor(cookieValues: readonly string[], workspaceId: string): Promise<Session | undefined> {
      for (let i = 0; i < cookieValues.length && i < MAX_SESSION_VALUES; i++) {
        const s = await verifySession(cookieValues[i]);
        if (s && s.workspaceId === workspaceId) return s;
      }
      return undefined;
    },
  };
}

export type Auth = ReturnType<typeof createAuth>;

/**
 * One cookie name's values in a Cookie header (RFC 6265 5.4: several may share a name) and the header
 * without them, read in one pass: the gateway's session is checked on the values, and the workspace
 * gets the rest, never a session under either of the gateway's names. A header that mentions
 * neither comes back as it is.
 */
export function sessionCookieParts(header: string | undefined, name: string): { values: string[]; rest: string | undefined } {
  // PLAIN_SESSION_COOKIE is the tail of SESSION_COOKIE: one search finds either.
  if (!header || !header.includes(PLAIN_SESSION_COOKIE)) return { values: [], rest: header };
  const values: string[] = [];
  let rest = '';
  for (let start = 0; start <= header.length;) {
    let end = header.indexOf(';', start);
    if (end === -1) end = header.length;
    const part = header.slice(start, end).trim();
    start = end + 1;
    if (!part) continue;
    const eq = part.indexOf('=');
    const partName = eq === -1 ? part : part.slice(0, eq).trimEnd();
    if (partName === name) {
      if (eq !== -1) values.push(part.slice(eq + 1).trimStart().replace(/^"(.*)"$/, '$1'));
      continue;
    }
    if (partName === SESSION_COOKIE || partName === PLAIN_SESSION_COOKIE) continue;
    rest = rest ? `${rest}; ${part}` : part;
  }
  return { values, rest: rest || undefined };
}

/** Set-Cookie for a session under `name` (sessionCookieName): Secure exactly when `__Host-` requires it. */
export function sessionCookie(name: string, value: string, maxAgeMs: number): string {
  return `${name}=${value}; Path=/; Max-Age=${Math.floor(maxAgeMs / 1000)}; HttpOnly; SameSite=Lax${name === SESSION_COOKIE ? '; Secure' : ''}`;
}

export function clearedSessionCookie(name: string): string {
  return sessionCookie(name, '', 0);
}

/** `next` must be a path on this same host: no scheme, no `//host`, no backslash tricks, no controls. */
export function safeNext(next: string | undefined | null): string {
  if (!next || next[0] !== '/' || next[1] === '/' || next[1] === '\\') return '/';
  if (/[\u0000-\u001f\u007f\\]/.test(next)) return '/';
  try {
    const u = new URL(next, 'http://same.invalid');
    if (u.host !== 'same.invalid') return '/';
    // Dot segments can collapse into `//host` (`/.//evil` -> `//evil`): a browser reads that as another host.
    if (u.pathname.startsWith('//')) return '/';
    return u.pathname + u.search + u.hash;
  } catch {
    return '/';
  }
}

/** The origin a workspace's own pages have: the only one allowed to open its WebSockets. */
export function sameOrigin(origin: string | undefined, host: string | undefined, scheme: 'http' | 'https'): boolean {
  if (!origin || !host || origin === 'null') return false;
  let u: URL;
  try { u = new URL(origin); } catch { return false; }
  if (u.protocol !== `${scheme}:` || u.pathname !== '/' || u.username || u.password) return false;
  const norm = (h: string) => h.toLowerCase().replace(/\.(?=:|$)/, '');
  // Only a trailing default port goes: a bare replace made `a.localhost:8080` and `a.localhost80` equal.
  const defaultPort = scheme === 'https' ? ':443' : ':80';
  const hostPort = (h: string) => { const n = norm(h); return n.endsWith(defaultPort) ? n.slice(0, -defaultPort.length) : n; };
  return hostPort(u.host) === hostPort(host);
}

function ipToBigInt(address: string): { value: bigint; family: 4 | 6 } | undefined {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) address = mapped[1];
  const family = isIP(address);
  if (family === 4) return { value: address.split('.').reduce((a, o) => (a << 8n) + BigInt(Number(o)), 0n), family: 4 };
  if (family === 6) {
    const [head, tail = ''] = address.split('::');
    const h = head ? head.split(':') : [];
    const t = tail ? tail.split(':') : [];
    const groups = address.includes('::') ? [...h, ...Array(8 - h.length - t.length).fill('0'), ...t] : h;
    return { value: groups.reduce((a, g) => (a << 16n) + BigInt(parseInt(g || '0', 16)), 0n), family: 6 };
  }
  return undefined;
}

export function inCidrs(address: string | undefined, cidrs: readonly Cidr[]): boolean {
  if (!address) return false;
  const ip = ipToBigInt(address);
  if (!ip) return false;
  return cidrs.some((c) => {
    const net = ipToBigInt(c.address);
    if (!net || net.family !== ip.family) return false;
    const width = ip.family === 4 ? 32 : 128;
    const shift = BigInt(width - c.prefix);
    return (ip.value >> shift) === (net.value >> shift);
  });
}

/**
 * The client's address: the peer, unless the peer is a trusted proxy (the load balancer), in which
 * case the right-most X-Forwarded-For entry that is not itself trusted (what the ALB appended).
 */
export function clientAddress(peer: string | undefined, xff: string | string[] | undefined, trusted: readonly Cidr[]): string {
  const fallback = peer ?? 'unknown';
  if (!xff || !inCidrs(peer, trusted)) return fallback;
  const hops = (Array.isArray(xff) ? xff.join(',') : xff).split(',').map((s) => s.trim()).filter(Boolean);
  for (let i = hops.length - 1; i >= 0; i--) {
    if (isIP(hops[i]) === 0) return fallback;
    if (!inCidrs(hops[i], trusted)) return hops[i];
  }
  return hops[0] ?? fallback;
}
