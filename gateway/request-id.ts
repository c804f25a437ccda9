// Request ids, for X-Request-Id and the logs. crypto.randomUUID() built each one out of sixteen
// hex pieces: 0.6 KB of garbage per warm request, a tenth of what one allocated (bench/allocations.ts),
// and at 1,000 req/s the young generation's fill rate sets how often a request waits behind a
// scavenge. A random prefix per process (48 bits: apart across replicas and restarts) and a counter
// correlate logs as well, at one short string per request.
import { randomBytes } from 'node:crypto';

export type RequestIds = () => string;

export function createRequestIds(random: (size: number) => Buffer = randomBytes): RequestIds {
  const prefix = `${random(6).toString('hex')}-`;
  let count = 0;
  return () => prefix + (++count).toString(36);
}
