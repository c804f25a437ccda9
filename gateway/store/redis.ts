// Redis state store for several replicas. Thin adapter: every operation is one round trip (a
// command, a pipeline or a Lua script). Commands never wait in ioredis's offline queue and have a
// bounded timeout, so a dead or hung Redis turns into a fast StoreUnavailable (issue 8).
import { Redis, type RedisOptions } from 'ioredis';
import {
  WORKSPACE_STATES, type WorkspaceState, StoreUnavailable, type Fence, type ListPage, type ListQuery, type StateStore, type WorkspaceEvent,
  type WorkspaceRecord,
} from './contract.js';

export interface RedisStoreOptions {
  url: string;
  /** Key and channel prefix, so several systems can share one Redis. */
  prefix: string;
  /** Upper bound on any one command, in ms. */
  commandTimeoutMs: number;
  onError?(err: Error): void;
}

// Writes a record only while the fence lease is held, and keeps the running index in step.
// Memory (issue 5: under 300 B per idle workspace; bench/scenarios/state-scale.ts): one string key
// per workspace holding its JSON without the id (the key names it), and no per-workspace index
// entry: a sorted set of all ids cost another 104 B per workspace (skiplist node + dict entry).
// Listing all workspaces, an admin-only need, scans the record keys instead.
// Per-state counts (metrics) move with each write: -1 for the state the record had, +1 for the new.
const PUT_SCRIPT = `
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[5] then return 0 end
local old = redis.call('GET', KEYS[1])
if old then
  local ok, prev = pcall(cjson.decode, old)
  if ok and prev.state then redis.call('HINCRBY', KEYS[4], prev.state, -1) end
end
redis.call('HINCRBY', KEYS[4], ARGV[3], 1)
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[3] == 'running' then redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2]) else redis.call('ZREM', KEYS[2], ARGV[2]) end
return 1`;
const RENEW_SCRIPT = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`;
const RELEASE_SCRIPT = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;
const HIT_SCRIPT = `
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n`;

// A workspace's revocation epoch: one past Redis's own clock (TIME), never a replica's, so which
// replica revokes and which signs a session in does not matter; one past the epoch in force when
// that is later (two revocations in one millisecond, Redis's clock stepped back). %d keeps epoch ms
// an integer string, where tostring could print a float.
const REVOKE_SCRIPT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now) + 1
redis.call('SET', KEYS[1], string.format('%d', v), 'PX', ARGV[1])
return string.format('%d', v)`;

// When this Redis's data began (contract.ts revocationEpoch's dataSince): set from its own clock
// (TIME) by the first script that finds it missing, so after a restart with no persistence, or a
// flush, it is later than anything signed before. No expiry: a volatile-* eviction policy never
// drops it (an allkeys-* one may, and links signed before the new value are then refused, never
// let in twice).
const SINCE_SCRIPT = `
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('SET', KEYS[1], now, 'NX')`;
// One script, so a revocation or a restart is wholly before or after all three values. The epoch
// (maybe none, so false) comes last.
const EPOCH_SCRIPT = `${SINCE_SCRIPT}
return {now, redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]) or false}`;

// A token bucket on Redis's own clock (TIME), so replicas with skewed clocks share one rate; the
// same arithmetic as provisioner/admission.ts takeToken.
const TOKEN_SCRIPT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(b[1]) or burst, tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait`;

export async function createRedisStore(opts: RedisStoreOptions): Promise<StateStore> {
  const p = opts.prefix;
  const k = {
    record: (id: string) => `${p}w:${id}`,
    running: `${p}running`,
    states: `${p}states`,
    activity: `${p}act`,
    lease: (key: string) => `${p}lease:${key}`,
    conn: (instance: string) => `${p}conn:${instance}`,
    instances: `${p}instances`,
    once: (key: string) => `${p}once:${key}`,
    hit: (key: string) => `${p}rl:${key}`,
    bucket: (key: string) => `${p}bucket:${key}`,
    revoked: (id: string) => `${p}revoked:${id}`,
    since: `${p}since`,
    channel: `${p}events`,
  };
  const base: RedisOptions = {
    lazyConnect: true,
    connectTimeout: Math.max(1000, opts.commandTimeoutMs * 2),
    // Reconnect for ever, but with a ceiling, so Redis coming back is noticed within 1 s.
    retryStrategy: (times) => Math.min(50 * times, 1000),
    maxRetriesPerRequest: 0,
  };
  const client = new Redis(opts.url, { ...base, enableOfflineQueue: false, commandTimeout: opts.commandTimeoutMs });
  const sub = new Redis(opts.url, { ...base, enableOfflineQueue: true });
  const report = (err: Error) => opts.onError?.(err);
  client.on('error', report);
  sub.on('error', report);
  await client.connect();
  await sub.connect();

  const handlers = new Set<(e: WorkspaceEvent) => void>();
  sub.on('message', (_channel: string, message: string) => {
    let event: WorkspaceEvent;
    try { event = JSON.parse(message) as WorkspaceEvent; } catch { return; }
    for (const h of handlers) h(event);
  });
  await sub.subscribe(k.channel);
  // Its data began no later than this connection, so a link signed from here on is not before it
  // even when signed on the caller's own clock (auth.ts createLoginToken's default, which tests
  // use). If this fails, the first read sets it.
  await client.eval(SINCE_SCRIPT, 1, k.since).catch(report);

  const run = async <T>(op: () => Promise<T>): Promise<T> => {
    try {
      return await op();
    } catch (err) {
      throw new StoreUnavailable(`redis: ${(err as Error).message}`, { cause: err });
    }
  };
  // Stored without the id (the key holds it); records written before that carry it, harmlessly.
  const parse = (id: string, s: string | null): WorkspaceRecord | undefined => (s ? { ...(JSON.parse(s) as Omit<WorkspaceRecord, 'id'>), id } : undefined);
  const serialize = (r: WorkspaceRecord) => { const { id: _id, ...rest } = r; return JSON.stringify(rest); };
  const recordPrefix = k.record('');
  const recordPattern = `${recordPrefix.replace(/[*?[\]\\]/g, '\\$&')}*`;

  return {
    kind: 'redis',
    getWorkspace: (id) => run(async () => parse(id, await client.get(k.record(id)))),
    putWorkspace: (record: WorkspaceRecord, fence?: Fence) => run(async () => {
      const written = await client.eval(
        PUT_SCRIPT, 4, k.record(record.id), k.running, fence ? k.lease(fence.key) : k.lease(''), k.states,
        serialize(record), record.id, record.state, String(record.startedAt ?? 0), fence?.owner ?? '',
      );
      return written === 1;
    }),
    listWorkspaces: (q: ListQuery) => run(async (): Promise<ListPage> => {
      // All ids after the cursor, by SCAN (O(workspaces) per page: an admin listing, never on the
      // request path), in lexical order like the memory store.
      const ids: string[] = [];
      let scan = '0';
      do {
        const [next, keys] = await client.scan(scan, 'MATCH', recordPattern, 'COUNT', 1000);
        scan = next;
        for (const key of keys) {
          const id = key.slice(recordPrefix.length);
          if (!q.cursor || id > q.cursor) ids.push(id);
        }
      } while (scan !== '0');
      ids.sort();
      const items: WorkspaceRecord[] = [];
      let i = 0;
      while (i < ids.length && items.length < q.limit) {
        const batch = ids.slice(i, i + q.limit);
        const values = await client.mget(batch.map(k.record));
        for (let b = 0; b < batch.length && items.length < q.limit; b++, i++) {
          const r = parse(batch[b], values[b]);
          if (r && (!q.state || r.state === q.state)) items.push(r);
        }
      }
      return i < ids.length ? { items, cursor: ids[i - 1] } : { items };
    }),
    runningStartedBefore: (beforeMs, limit) => run(() => client.zrangebyscore(k.running, '-inf', beforeMs, 'LIMIT', 0, limit)),
    countRunning: () => run(() => client.zcard(k.running)),
    countByState: () => run(async () => {
      const raw = await client.hgetall(k.states);
      const counts = Object.fromEntries(WORKSPACE_STATES.map((st) => [st, Math.max(0, Number(raw[st] ?? 0))])) as Record<WorkspaceState, number>;
      return counts;
    }),
    acquireLease: (key, owner, ttlMs) => run(async () => (await client.set(k.lease(key), owner, 'PX', ttlMs, 'NX')) === 'OK'),
    renewLease: (key, owner, ttlMs) => run(async () => (await client.eval(RENEW_SCRIPT, 1, k.lease(key), owner, ttlMs)) === 1),
    releaseLease: (key, owner) => run(async () => { await client.eval(RELEASE_SCRIPT, 1, k.lease(key), owner); }),
    leaseOwner: (key) => run(async () => (await client.get(k.lease(key))) ?? undefined),
    publish: (event) => run(async () => { await client.publish(k.channel, JSON.stringify(event)); }),
    subscribe(handler) {
      handlers.add(handler);
      return () => handlers.delete(handler);
    },
    recordActivity: (entries) => run(async () => {
      if (entries.length === 0) return;
      // ZADD GT (Redis >= 6.2): a replica flushing late never moves a time back.
      const args: (string | number)[] = [];
      for (const [id, at] of entries) args.push(at, id);
      await client.zadd(k.activity, 'GT', ...args);
    }),
    getActivity: (id) => run(async () => {
      const s = await client.zscore(k.activity, id);
      return s === null ? undefined : Number(s);
    }),
    activityBefore: (beforeMs, limit) => run(async () => {
      const flat = await client.zrangebyscore(k.activity, '-inf', beforeMs, 'WITHSCORES', 'LIMIT', 0, limit);
      const out: Array<[string, number]> = [];
      for (let i = 0; i < flat.length; i += 2) out.push([flat[i], Number(flat[i + 1])]);
      return out;
    }),
    resetActivity: (id, atMs) => run(async () => { await client.zadd(k.activity, atMs, id); }),
    clearActivity: (id) => run(async () => { await client.zrem(k.activity, id); }),
    reportConnections: (instanceId, counts, ttlMs) => run(async () => {
      const key = k.conn(instanceId);
      const m = client.multi().del(key);
      const fields: string[] = [];
      for (const [id, n] of counts) if (n > 0) fields.push(id, String(n));
      if (fields.length) m.hset(key, ...fields);
      // The instance list carries each instance's expiry, so a crashed one stops counting.
      await m.pexpire(key, ttlMs).zadd(k.instances, Date.now() + ttlMs, instanceId)
        .zremrangebyscore(k.instances, '-inf', Date.now()).exec();
    }),
    getConnections: (id) => run(async () => {
      const instances = await client.zrangebyscore(k.instances, Date.now(), '+inf');
      if (instances.length === 0) return 0;
      const pipe = client.pipeline();
      for (const i of instances) pipe.hget(k.conn(i), id);
      const results = (await pipe.exec()) ?? [];
      return results.reduce((sum, [, v]) => sum + (v ? Number(v) : 0), 0);
    }),
    revokeSessions: (id, ttlMs) => run(async () => Number(await client.eval(REVOKE_SCRIPT, 1, k.revoked(id), ttlMs))),
    revocationEpoch: (id) => run(async () => {
      const [now, since, epoch] = (await client.eval(EPOCH_SCRIPT, 2, k.since, k.revoked(id))) as [string, string, string | null];
      return { epoch: epoch === null ? undefined : Number(epoch), storeNow: Number(now), dataSince: Number(since) };
    }),
    consumeOnce: (key, ttlMs) => run(async () => (await client.set(k.once(key), '1', 'PX', ttlMs, 'NX')) === 'OK'),
    countHit: (key, windowMs) => run(async () => Number(await client.eval(HIT_SCRIPT, 1, k.hit(key), windowMs))),
    takeToken: (key, ratePerSec, burst) => run(async () => {
      const waitMs = Number(await client.eval(TOKEN_SCRIPT, 1, k.bucket(key), ratePerSec, burst));
      return { granted: waitMs === 0, waitMs };
    }),
    async ping() {
      try { return (await client.ping()) === 'PONG'; } catch { return false; }
    },
    async close() {
      handlers.clear();
      client.disconnect();
      sub.disconnect();
    },
  };
}
