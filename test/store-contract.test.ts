// One contract suite, run against both state stores (issue 2).
import t, { type Test } from 'tap';
import { createManualClock } from '../gateway/clock.js';
import type { StateStore, WorkspaceEvent, WorkspaceRecord } from '../gateway/store/contract.js';
import { StoreUnavailable } from '../gateway/store/contract.js';
import { createMemoryStore } from '../gateway/store/memory.js';
import { createRedisStore } from '../gateway/store/redis.js';
import { startRedis } from './helpers/redis.js';

const rec = (id: string, state: WorkspaceRecord['state'], extra: Partial<WorkspaceRecord> = {}): WorkspaceRecord => ({ id, state, generation: 1, since: 1, ...extra });

async function contract(t: Test, make: () => Promise<StateStore>, advance: (ms: number) => Promise<void>) {
  const store = await make();
  t.teardown(() => store.close());

  t.test('records round-trip and list by state with a cursor', async (t) => {
    t.equal(await store.getWorkspace('none'), undefined);
    for (let i = 0; i < 7; i++) await store.putWorkspace(rec(`w${i}`, i % 2 ? 'running' : 'stopped', { startedAt: 100 + i, endpoint: { host: '127.0.0.1', port: 1000 + i } }));
    t.same(await store.getWorkspace('w1'), rec('w1', 'running', { startedAt: 101, endpoint: { host: '127.0.0.1', port: 1001 } }));
    const all: string[] = [];
    let cursor: string | undefined;
    do {
      const page = await store.listWorkspaces({ limit: 3, cursor });
      all.push(...page.items.map((r) => r.id));
      cursor = page.cursor;
    } while (cursor);
    t.same(all, ['w0', 'w1', 'w2', 'w3', 'w4', 'w5', 'w6']);
    const running = await store.listWorkspaces({ limit: 10, state: 'running' });
    t.same(running.items.map((r) => r.id), ['w1', 'w3', 'w5']);
    t.equal(await store.countRunning(), 3);
    t.same(await store.countByState(), { stopped: 4, starting: 0, running: 3, stopping: 0, failed: 0 }, 'per-state counts follow every write');
    t.same(await store.runningStartedBefore(103, 10), ['w1', 'w3']);
    await store.putWorkspace(rec('w1', 'stopped'));
    t.same(await store.runningStartedBefore(103, 10), ['w3']);
    t.same(await store.countByState(), { stopped: 5, starting: 0, running: 2, stopping: 0, failed: 0 });
  });

  t.test('leases: one holder, renew, release only by the owner, expiry', async (t) => {
    t.equal(await store.acquireLease('l', 'a', 200), true);
    t.equal(await store.acquireLease('l', 'b', 200), false);
    t.equal(await store.leaseOwner('l'), 'a');
    t.equal(await store.renewLease('l', 'b', 200), false);
    t.equal(await store.renewLease('l', 'a', 200), true);
    await store.releaseLease('l', 'b');
    t.equal(await store.leaseOwner('l'), 'a');
    await store.releaseLease('l', 'a');
    t.equal(await store.acquireLease('l', 'b', 100), true);
    await advance(150);
    t.equal(await store.leaseOwner('l'), undefined, 'expired');
    t.equal(await store.acquireLease('l', 'c', 100), true);
  });

  t.test('fenced writes apply only while the lease is held', async (t) => {
    await store.acquireLease('lock:f', 'me', 1000);
    t.equal(await store.putWorkspace(rec('f', 'starting'), { key: 'lock:f', owner: 'me' }), true);
    t.equal(await store.putWorkspace(rec('f', 'running'), { key: 'lock:f', owner: 'someone-else' }), false);
    t.equal((await store.getWorkspace('f'))?.state, 'starting');
  });

  t.test('events reach subscribers', async (t) => {
    const got = new Promise<WorkspaceEvent>((resolve) => { const off = store.subscribe((e) => { off(); resolve(e); }); });
    await store.publish({ record: rec('e', 'running') });
    t.same(await got, { record: rec('e', 'running') });
    const revoked = new Promise<WorkspaceEvent>((resolve) => { const off = store.subscribe((e) => { off(); resolve(e); }); });
    await store.publish({ sessionsRevoked: { id: 'e', epoch: 1_764_316_800_000 } });
    t.same(await revoked, { sessionsRevoked: { id: 'e', epoch: 1_764_316_800_000 } });
  });

  t.test('revocation epochs: past everything signed before, never past what is signed after, per workspace, kept for their ttl', async (t) => {
    // What a session signed now carries (gateway/revocations.ts forSigning).
    const signAs = async (id: string) => { const { epoch, storeNow } = await store.revocationEpoch(id); return Math.max(epoch ?? 0, storeNow); };
    const none = await store.revocationEpoch('r');
    t.equal(none.epoch, undefined, 'none in force');
    t.ok(Number.isSafeInteger(none.storeNow) && none.storeNow > 1_700_000_000_000, 'the store tells its own time in epoch ms');
    const before = await signAs('r');
    const first = await store.revokeSessions('r', 200);
    t.ok(before < first, 'signed before the revocation: below its epoch');
    t.equal((await store.revocationEpoch('r')).epoch, first);
    t.ok(await signAs('r') >= first, 'signed after it: not below');
    const second = await store.revokeSessions('r', 200);
    t.ok(second > first, 'a second revocation in the same millisecond still moves it forward');
    t.equal((await store.revocationEpoch('other')).epoch, undefined, 'per workspace');
    await advance(250);
    t.equal((await store.revocationEpoch('r')).epoch, undefined, 'forgotten once nothing it voids can be current');
    t.ok(await signAs('r') >= second, 'and what is signed then is not below the epoch a replica may still remember');
  });

  t.test('data since: when the store\'s data began, on its own clock, once for all workspaces, never after what it signs', async (t) => {
    const a = await store.revocationEpoch('d1');
    t.ok(Number.isSafeInteger(a.dataSince) && a.dataSince > 1_700_000_000_000, 'epoch ms');
    t.ok(a.dataSince <= a.storeNow, 'not after the store\'s time: a link signed now is not before it');
    await advance(20);
    const b = await store.revocationEpoch('d2');
    t.equal(b.dataSince, a.dataSince, 'set once, the same for every workspace');
    t.ok(b.storeNow > a.dataSince, 'while the store\'s time goes on');
  });

  t.test('activity only moves forward; range query oldest first', async (t) => {
    await store.recordActivity([['a', 100], ['b', 50]]);
    await store.recordActivity([['a', 90], ['c', 70]]);
    t.equal(await store.getActivity('a'), 100, 'an older flush never moves it back');
    t.same(await store.activityBefore(80, 10), [['b', 50], ['c', 70]]);
    await store.resetActivity('a', 10);
    t.equal(await store.getActivity('a'), 10);
    await store.clearActivity('a');
    t.equal(await store.getActivity('a'), undefined);
    await store.recordActivity([]);
  });

  t.test('connections sum over live instances', async (t) => {
    await store.reportConnections('i1', new Map([['x', 2]]), 60_000);
    await store.reportConnections('i2', new Map([['x', 1], ['y', 4]]), 60_000);
    t.equal(await store.getConnections('x'), 3);
    await store.reportConnections('i2', new Map([['y', 4]]), 60_000);
    t.equal(await store.getConnections('x'), 2);
  });

  t.test('one-time keys and rate windows', async (t) => {
    t.equal(await store.consumeOnce('jti:1', 1000), true);
    t.equal(await store.consumeOnce('jti:1', 1000), false);
    t.equal(await store.countHit('rl', 100), 1);
    t.equal(await store.countHit('rl', 100), 2);
    await advance(150);
    t.equal(await store.countHit('rl', 100), 1, 'a new window');
    t.equal(await store.ping(), true);
  });

  t.test('a token bucket: the burst at once, then the rate', async (t) => {
    for (let i = 0; i < 3; i++) t.same(await store.takeToken('b', 10, 3), { granted: true, waitMs: 0 }, `burst token ${i + 1}`);
    const denied = await store.takeToken('b', 10, 3);
    t.equal(denied.granted, false);
    t.ok(denied.waitMs > 0 && denied.waitMs <= 100, `next token within 1/rate (${denied.waitMs} ms)`);
    await advance(denied.waitMs + 20);
    t.equal((await store.takeToken('b', 10, 3)).granted, true, 'refilled');
    t.equal((await store.takeToken('other', 10, 3)).granted, true, 'buckets are per key');
  });

  t.test('a route that requires proof keeps the requirement (gateway/workspace-proof.ts)', async (t) => {
    // Losing `proves` on the way through a store would forward to the address unasked.
    await store.putWorkspace(rec('proving', 'running', { startedAt: 1, endpoint: { host: '10.0.0.7', port: 8080, proves: true } }));
    t.same((await store.getWorkspace('proving'))?.endpoint, { host: '10.0.0.7', port: 8080, proves: true });
    t.same((await store.listWorkspaces({ state: 'running', limit: 100 })).items.find((r) => r.id === 'proving')?.endpoint, { host: '10.0.0.7', port: 8080, proves: true });
  });
}

t.test('memory store', async (t) => {
  const clock = createManualClock();
  await contract(t, async () => createMemoryStore(clock), async (ms) => clock.advance(ms));

  t.test('its data begins when it is made (one replica: at process start)', async (t) => {
    const made = clock.now();
    const store = createMemoryStore(clock);
    clock.advance(1000);
    t.equal((await store.revocationEpoch('x')).dataSince, made);
  });
});

t.test('redis store', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  await contract(t, () => createRedisStore({ url: redis.url, prefix: 't:', commandTimeoutMs: 500 }), (ms) => new Promise((r) => setTimeout(r, ms)));

  t.test('replicas share one bucket (RunTask is rated per AWS account)', async (t) => {
    const a = await createRedisStore({ url: redis.url, prefix: 's:', commandTimeoutMs: 500 });
    const b = await createRedisStore({ url: redis.url, prefix: 's:', commandTimeoutMs: 500 });
    t.teardown(async () => { await a.close(); await b.close(); });
    const got = [];
    for (const s of [a, b, a, b, a, b]) got.push((await s.takeToken('runtask', 1, 4)).granted);
    t.same(got, [true, true, true, true, false, false], 'four tokens in all, not four each');
  });

  t.test('restarted empty: its data begins again, after everything signed before', async (t) => {
    const store = await createRedisStore({ url: redis.url, prefix: 'since:', commandTimeoutMs: 500 });
    t.teardown(() => store.close());
    const before = await store.revocationEpoch('x');
    await redis.restart();
    for (let i = 0; i < 100 && !(await store.ping()); i++) await new Promise((r) => setTimeout(r, 50));
    const after = await store.revocationEpoch('x');
    t.ok(after.dataSince > before.storeNow, 'a link signed before the restart is before the new data');
    t.ok(after.dataSince <= after.storeNow, 'and not after its time');
  });

  t.test('a dead Redis fails fast with StoreUnavailable, and it recovers', async (t) => {
    const store = await createRedisStore({ url: redis.url, prefix: 'd:', commandTimeoutMs: 300 });
    t.teardown(() => store.close());
    await redis.kill();
    const started = Date.now();
    await t.rejects(store.getWorkspace('x'), StoreUnavailable);
    t.ok(Date.now() - started < 1000, 'no offline queue');
    t.equal(await store.ping(), false);
    await redis.restart();
    for (let i = 0; i < 100 && !(await store.ping()); i++) await new Promise((r) => setTimeout(r, 50));
    t.equal(await store.ping(), true);
  });
});
