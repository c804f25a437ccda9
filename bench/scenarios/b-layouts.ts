// Redis memory per idle workspace under candidate store layouts, measured side by side on one
// redis-server (INFO used_memory delta / count). The first is today's gateway/store/redis.ts layout
// before this branch (a JSON string per workspace plus one `ids` sorted set for lexical listing),
// then candidates, including the one gateway/store/redis.ts now uses (no index, listing by SCAN). Raw pipelined writes: only the bytes at rest matter here.
import type { Redis } from 'ioredis';
import type { WorkspaceRecord } from '../../gateway/store/contract.js';
import type { Figure } from '../result.js';
import { parseInfo } from './b-util.js';

type Pipe = ReturnType<Redis['pipeline']>;

const withoutId = (r: WorkspaceRecord) => { const { id: _id, ...rest } = r; return rest; };
const SHORT: Record<string, string> = { state: 's', generation: 'g', since: 't', stage: 'st', queuePosition: 'qp', endpoint: 'e', handle: 'h', requestedAt: 'rq', startedAt: 'sa', reasonCode: 'rc', reason: 'r' };
const shortKeys = (r: WorkspaceRecord) => JSON.stringify(Object.fromEntries(Object.entries(withoutId(r)).map(([k, v]) => [SHORT[k] ?? k, v])));
/** Index bucket: a fixed-length id prefix keeps lexical order ((bucket, id) sorts as id does). */
const bucket = (id: string, chars = PREFIX_CHARS) => id.slice(0, chars);
/** For the bench's ids (st + 6 digits): buckets of 100, under zset-max-listpack-entries (128). */
export const PREFIX_CHARS = 6;

export const LAYOUTS: Array<{ name: string; write(p: Pipe, r: WorkspaceRecord): void }> = [
  { name: 'before: JSON string per workspace + one ids sorted set', write: (p, r) => { p.set(`wsgw:w:${r.id}`, JSON.stringify(r)); p.zadd('wsgw:ids', 0, r.id); } },
  { name: 'JSON without the id (it is in the key) + one ids sorted set', write: (p, r) => { p.set(`wsgw:w:${r.id}`, JSON.stringify(withoutId(r))); p.zadd('wsgw:ids', 0, r.id); } },
  { name: 'JSON without the id + ids in 6-char-prefix sorted sets (listpack)', write: (p, r) => { p.set(`wsgw:w:${r.id}`, JSON.stringify(withoutId(r))); p.zadd(`wsgw:ids:${bucket(r.id)}`, 0, r.id); p.zadd('wsgw:idb', 0, bucket(r.id)); } },
  { name: 'short-key JSON without the id + 6-char-prefix ids (listpack)', write: (p, r) => { p.set(`wsgw:w:${r.id}`, shortKeys(r)); p.zadd(`wsgw:ids:${bucket(r.id)}`, 0, r.id); p.zadd('wsgw:idb', 0, bucket(r.id)); } },
  { name: 'now (gateway/store/redis.ts): JSON without the id, no index (list by SCAN)', write: (p, r) => { p.set(`wsgw:w:${r.id}`, JSON.stringify(withoutId(r))); } },
];

/** Writes `count` records under each layout (flushing between) and returns bytes per workspace. */
export async function measureLayouts(admin: Redis, count: number, record: (i: number) => WorkspaceRecord): Promise<Figure[]> {
  const out: Figure[] = [];
  for (const layout of LAYOUTS) {
    await admin.flushall();
    const before = Number(parseInfo(await admin.info('memory')).used_memory);
    for (let i = 0; i < count; i += 1000) {
      const p = admin.pipeline();
      for (let j = i; j < Math.min(count, i + 1000); j++) layout.write(p, record(j));
      await p.exec();
    }
    const after = Number(parseInfo(await admin.info('memory')).used_memory);
    out.push({ name: layout.name, value: Math.round(((after - before) / count) * 10) / 10, unit: 'B/workspace' });
  }
  await admin.flushall();
  return out;
}
