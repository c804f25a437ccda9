// permessage-deflate (RFC 7692) negotiation seen from a passive proxy: the gateway does not terminate the
// WebSocket, but it may rewrite the upstream's 101 `Sec-WebSocket-Extensions` before the browser sees it.
// Shrinking the client's LZ77 window is the lever that keeps our inflater small (RFC 7692 7.1.2.2: a server
// may answer `client_max_window_bits=N` when the client's offer carries that parameter, and the client must
// then compress with at most 2^N bytes of history). The upstream's own inflater (window 15) still decodes it.

export interface InflateParams {
  /** LZ77 window the client compresses with (RFC 7692 7.1.2.2), 8..15. */
  windowBits: number;
  /** True when the agreed parameters say the client resets its context per message (RFC 7692 7.1.1.2). */
  noContextTakeover?: boolean;
}

export interface Negotiated {
  /** The header to send to the browser (unchanged, rewritten, or undefined when upstream sent none). */
  responseHeader: string | undefined;
  /** How to inflate client messages; null when no permessage-deflate was agreed (frames arrive plain). */
  inflate: InflateParams | null;
}

interface ExtensionElement {
  name: string;
  params: Array<[string, string | undefined]>;
}

/** Parses a Sec-WebSocket-Extensions value (RFC 6455 9.1) into elements; quoted values are unquoted. */
export function parseExtensions(header: string): ExtensionElement[] {
  const out: ExtensionElement[] = [];
  for (const raw of splitOutsideQuotes(header, ',')) {
    const parts = splitOutsideQuotes(raw, ';').map((s) => s.trim());
    const name = parts.shift()?.toLowerCase() ?? '';
    if (!name) continue;
    const params: Array<[string, string | undefined]> = [];
    for (const p of parts) {
      if (!p) continue;
      const eq = p.indexOf('=');
      if (eq < 0) { params.push([p.toLowerCase(), undefined]); continue; }
      let v = p.slice(eq + 1).trim();
      if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) v = v.slice(1, -1);
      params.push([p.slice(0, eq).trim().toLowerCase(), v]);
    }
    out.push({ name, params });
  }
  return out;
}

function splitOutsideQuotes(s: string, sep: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (const ch of s) {
    if (ch === '"') quoted = !quoted;
    if (ch === sep && !quoted) { out.push(cur); cur = ''; continue; }
    cur += ch;
  }
  out.push(cur);
  return out;
}

function windowBitsValue(v: string | undefined): number | undefined {
  if (v === undefined || !/^[0-9]{1,2}$/.test(v)) return undefined;
  const n = Number(v);
  return n >= 8 && n <= 15 ? n : undefined;
}

/**
 * Decides what the browser is told and how the gateway inflates what the browser sends.
 * `windowBits` is the window we would like the browser to use (clamped to 9..15: zlib silently raises a raw
 * deflate window of 8 to 9, so a browser told 8 may still emit 512-byte distances).
 * - no permessage-deflate in the upstream's answer: unchanged, inflate null (frames are plain);
 * - the upstream already limits the client window: keep it, inflate with it;
 * - every permessage-deflate offer carried `client_max_window_bits`: add/lower it to min(ours, offered);
 * - otherwise (Firefox, Safari offer no such parameter): unchanged, inflate at window 15.
 */
export function negotiateExtensions(
  offerHeader: string | undefined,
  responseHeader: string | undefined,
  windowBits: number,
): Negotiated {
  if (!responseHeader || !responseHeader.trim()) return { responseHeader, inflate: null };
  const response = parseExtensions(responseHeader);
  const pmdIndex = response.findIndex((e) => e.name === 'permessage-deflate');
  if (pmdIndex < 0) return { responseHeader, inflate: null };
  const pmd = response[pmdIndex]!;
  const wanted = Math.min(15, Math.max(9, Math.floor(Number.isFinite(windowBits) ? windowBits : 15)));
  const noContextTakeover = pmd.params.some(([k]) => k === 'client_no_context_takeover');
  const answered = pmd.params.find(([k]) => k === 'client_max_window_bits');
  const extra = noContextTakeover ? { noContextTakeover: true } : {};
  if (answered) {
    // The upstream chose a value already; the browser must honour it, so we inflate with it.
    const bits = windowBitsValue(answered[1]);
    // Decode with at least 9 bits: zlib raises a raw window of 8 to 9 (see above), costing us 256 bytes.
    return { responseHeader, inflate: { windowBits: Math.max(9, bits ?? 15), ...extra } };
  }
  const offers = parseExtensions(offerHeader ?? '').filter((e) => e.name === 'permessage-deflate');
  const offeredValues = offers.map((o) => o.params.find(([k]) => k === 'client_max_window_bits'));
  if (offers.length === 0 || offeredValues.some((p) => p === undefined)) {
    return { responseHeader, inflate: { windowBits: 15, ...extra } };
  }
  // An offer may carry a value (the client's own cap); never answer above it (RFC 7692 7.1.2.2).
  let bits = wanted;
  for (const p of offeredValues) {
    const v = windowBitsValue(p![1]);
    if (v !== undefined) bits = Math.min(bits, v);
  }
  if (bits >= 15) return { responseHeader, inflate: { windowBits: 15, ...extra } };
  const rewritten = response.map((e, i) => {
    const params = e.params.map(([k, v]) => (v === undefined ? k : `${k}=${v}`));
    if (i === pmdIndex) params.push(`client_max_window_bits=${bits}`);
    return [e.name, ...params].join('; ');
  });
  return { responseHeader: rewritten.join(', '), inflate: { windowBits: Math.max(9, bits), ...extra } };
}
