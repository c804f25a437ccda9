// Durations as operators write them in environment variables, for the gateway's settings and the
// ECS provisioner's alike (one grammar, so one deploy file can't mean two things).

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** `250ms`, `30s`, `5m`, `12h` or plain (possibly fractional) seconds -> milliseconds; undefined if not one. */
export function durationMs(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(text);
  if (!m) return undefined;
  const ms = Number(m[1]) * UNIT_MS[m[2] ?? 's'];
  return Number.isFinite(ms) ? Math.round(ms) : undefined;
}
