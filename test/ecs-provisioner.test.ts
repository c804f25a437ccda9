// The ECS provisioner against the fake AWS endpoint, with the real SDK clients over loopback HTTP.
import t from 'tap';
import { createManualClock, systemClock } from '../gateway/clock.js';
import { StartFailure } from '../provisioner/contract.js';
import { createEcsProvisioner, serviceIndex, type EcsProvisioner } from '../provisioner/ecs.js';
import type { EcsProvisionerOptions, WorkspaceClaim } from '../provisioner/ecs-types.js';
import { startFakeAws, type FakeAws, type FakeAwsOptions } from './fake-aws/index.js';
import { fakeEcsOptions } from './fake-aws/config.js';
import { enrol, httpGet, startRequest, until } from './fake-aws/harness.js';
import { createScaledTime } from '../provisioner/timers.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WORKSPACE_FIELD } from '../gateway/http-fields.js';
import { startDemoWorkspace } from '../provisioner/demo-workspace.js';
import { createServer as createNetServer, type Socket } from 'node:net';

async function setup(t: { teardown(fn: () => unknown): void }, fakeOpts: FakeAwsOptions = {}, over: Partial<EcsProvisionerOptions> = {}) {
  const fake = await startFakeAws({ durations: { provisioningMs: 40, pendingMs: 40, stoppingMs: 20 }, ...fakeOpts });
  const provisioners: EcsProvisioner[] = [];
  const make = (o: Partial<EcsProvisionerOptions> = {}) => {
    // The start keys as startRequest() gives them (a gateway's identityKeysOf), for reconcile's adoption probe.
    const deps = { clock: systemClock, identityKeys: testKey };
    const p = createEcsProvisioner(fakeEcsOptions(fake, { describePollMs: 30, ...over, ...o }), deps);
    provisioners.push(p);
    return p;
  };
  t.teardown(async () => {
    for (const p of provisioners) await p.close();
    await fake.close();
  });
  return { fake, make, p: make() };
}

/** The key startRequest() gives a start (harness.ts). */
const testKey = (workspaceId: string, generation: number) => `key-${workspaceId}-${generation}`;

function taskOf(fake: FakeAws, arn: string) {
  return fake.tasks().find((x) => x.taskArn === arn)!;
}

t.test('a cold start makes exactly one access point, task definition, RunTask and registration, and reports every stage', async (t) => {
  const { fake, p } = await setup(t);
  const s = startRequest('alice', 1);
  const r = await p.start(s.req);
  // In order, never backwards (pending can pass between two polls here; the manual-clock test
  // below shows every stage).
  const seen = s.stages.map((x) => x.stage);
  t.same(seen.filter((x) => x !== 'pending'), ['queued', 'provisioning', 'running', 'probing', 'ready']);
  t.ok(seen.indexOf('pending') === -1 || seen.indexOf('pending') === 2);
  t.same(s.handles, [r.handle], 'onHandle got the task ARN');
  t.equal(fake.count('CreateAccessPoint'), 1);
  t.equal(fake.count('RegisterTaskDefinition'), 1);
  t.equal(fake.count('RunTask'), 1);
  t.equal(fake.count('RegisterInstance'), 1);

  const run = fake.callsOf('RunTask')[0].input;
  t.equal(run.clientToken, 'alice.1', 'deterministic clientToken of id and generation');
  t.ok(run.clientToken.length <= 64);
  t.equal(run.taskDefinition, 'ws-alice');
  t.equal(run.startedBy, 'workspace-gateway');
  t.same(run.capacityProviderStrategy, [{ capacityProvider: 'FARGATE_SPOT', weight: 1 }]);
  t.equal(run.networkConfiguration.awsvpcConfiguration.assignPublicIp, 'DISABLED');
  t.same(run.tags, [{ key: 'workspace-id', value: 'alice' }, { key: 'generation', value: '1' }]);

  const ap = fake.accessPoints()[0];
  t.equal(ap.RootDirectory.Path, '/students/alice');
  t.same(ap.PosixUser, { Uid: 1000, Gid: 1000 });
  t.same(ap.RootDirectory.CreationInfo, { OwnerUid: 1000, OwnerGid: 1000, Permissions: '0750' });
  const td = fake.taskDefinitions('ws-alice')[0];
  t.same(td.volumes[0].efsVolumeConfiguration, {
    fileSystemId: fake.fileSystemIds[0],
    rootDirectory: '/',
    transitEncryption: 'ENABLED',
    authorizationConfig: { accessPointId: ap.AccessPointId, iam: 'ENABLED' },
  });
  t.same(td.containerDefinitions, fake.taskDefinitions(fake.baseFamily)[0].containerDefinitions, 'copied from the base');

  const inst = fake.instances();
  t.equal(inst.length, 1);
  t.equal(inst[0].id, 'alice');
  t.same(inst[0].attributes.AWS_INSTANCE_IPV4, r.endpoint.host);
  t.same(inst[0].attributes.AWS_INSTANCE_PORT, String(fake.workspacePort));
  t.equal(inst[0].attributes.ECS_TASK_ARN, r.handle);
  t.equal(inst[0].attributes.WORKSPACE_GENERATION, '1');

  const page = await httpGet(r.endpoint.host, r.endpoint.port, '/');
  t.match(page.body, 'workspace alice generation 1', 'the endpoint is the task\'s workspace');
  t.same(await p.describe('alice'), { workspaceId: 'alice', generation: 1, endpoint: r.endpoint, handle: r.handle, startedAt: (await p.list())[0].startedAt });

  await p.stop('alice', r.handle, 'idle for 30 minutes');
  t.equal(taskOf(fake, r.handle).lastStatus, 'STOPPED', 'stop waits until STOPPED');
  t.equal(taskOf(fake, r.handle).stoppedReason, 'idle for 30 minutes');
  t.equal(fake.instances().length, 0, 'deregistered');
  await p.stop('alice', r.handle, 'again');
  await p.stop('alice', undefined, 'again, without a handle');
  t.pass('stop is idempotent');
  t.equal(await p.describe('alice'), undefined);
});

t.test('later starts reuse the access point and task definition; a new base re-registers only the definition', async (t) => {
  const { fake, p, make } = await setup(t);
  const r1 = await p.start(startRequest('bob', 1).req);
  await p.stop('bob', r1.handle, 'idle');
  const r2 = await p.start(startRequest('bob', 2).req);
  t.not(r2.handle, r1.handle);
  t.equal(fake.count('CreateAccessPoint'), 1, 'no new access point');
  t.equal(fake.count('RegisterTaskDefinition'), 1, 'no new task definition');
  await p.stop('bob', r2.handle, 'idle');

  const restarted = make(); // a new gateway process: nothing cached
  await restarted.start(startRequest('bob', 3).req);
  t.equal(fake.count('CreateAccessPoint'), 1, 'found through the family\'s tags after a restart');
  t.equal(fake.count('RegisterTaskDefinition'), 1);
  t.equal(fake.count('RunTask'), 3);

  // The base task definition changes: the next start of a fresh process re-registers the family.
  const base = fake.taskDefinitions(fake.baseFamily)[0];
  fake.registerTaskDefinition({ ...base, containerDefinitions: [{ ...base.containerDefinitions[0], image: 'code-server:4.97.0' }] });
  await restarted.stop('bob', undefined, 'idle');
  const third = make();
  await third.start(startRequest('bob', 4).req);
  t.equal(fake.count('RegisterTaskDefinition'), 2, 're-registered for the new base');
  t.equal(fake.count('CreateAccessPoint'), 1, 'same access point');
  t.equal(fake.taskDefinitions('ws-bob')[1].containerDefinitions[0].image, 'code-server:4.97.0');
  t.equal(fake.taskDefinitions('ws-bob').length, 2);
});

t.test('a class of new students: task definitions registered at AWS\'s 1 a second after its burst, next to none throttled, everyone started', async (t) => {
  // AWS allows RegisterTaskDefinition 1 call a second, burst 20 (the fake's default); 26 new
  // students need 26. On a clock 2x real time: the rate is per clock second. At 5x the token after the
  // burst came 200 ms after it, and on a machine loaded by other tests the starts arrived further
  // apart than that, so no two ever waited at once (the place-in-line check below failed).
  const { clock, timers } = createScaledTime(2);
  const fake = await startFakeAws({ clock, durations: { provisioningMs: 200, pendingMs: 200, stoppingMs: 100 } });
  const p = createEcsProvisioner(fakeEcsOptions(fake, { describePollMs: 250, probeIntervalMs: 100, awsCallTimeoutMs: 60_000 }), { clock, timers });
  t.teardown(async () => { await p.close(); await fake.close(); });
  const ids = Array.from({ length: 26 }, (_, i) => `new-${i}`);
  const starts = ids.map((id) => startRequest(id, 1));
  const results = await Promise.allSettled(starts.map((s) => p.start(s.req)));
  t.same(results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason)), [], 'every student started');
  t.equal(fake.count('RegisterTaskDefinition'), 26, 'one family each');
  // Paced at exactly AWS's rate, a call that reaches AWS a moment before its due time is throttled
  // and retried (ecs-shared-rate.test.ts); unpaced, the six past the burst would all be.
  const throttled = fake.count('RegisterTaskDefinition', 'throttled');
  t.ok(throttled <= 2, `next to none throttled (${throttled})`);
  const at = fake.callsOf('RegisterTaskDefinition').map((c) => c.at).sort((a, b) => a - b);
  t.ok(at[25] - at[0] >= 5_000, `the six past the burst about a second apart (${at[25] - at[0]} clock ms for all 26)`);
  const waited = starts.filter((s) => s.stages.some((x) => x.stage === 'queued' && (x.queuePosition ?? 0) > 1));
  // How many wait at once depends on how the 26 arrive (a loaded machine spreads them): at least one.
  t.ok(waited.length >= 1, `students behind the burst were shown their place in line (${waited.length})`);
});

t.test('after a base change, a class starts at once: the burst re-registered first, the rest on their family as it is and re-registered in the background', async (t) => {
  const { fake } = await setup(t);
  const ids = Array.from({ length: 25 }, (_, i) => `back-${i}`);
  await enrol(fake, ids);
  const base = fake.taskDefinitions(fake.baseFamily)[0];
  fake.registerTaskDefinition({ ...base, containerDefinitions: [{ ...base.containerDefinitions[0], image: 'code-server:4.97.0' }] });
  const registeredBefore = fake.count('RegisterTaskDefinition');
  const p = createEcsProvisioner(fakeEcsOptions(fake, { describePollMs: 30 }), { clock: systemClock });
  t.teardown(() => p.close());
  const t0 = Date.now();
  const results = await Promise.allSettled(ids.map((id) => p.start(startRequest(id, 2).req)));
  const tookMs = Date.now() - t0;
  t.same(results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason)), [], 'every student started');
  t.ok(tookMs < 4_000, `nobody waited for the registrations past the burst (${tookMs} ms)`);
  const images = fake.tasks().map((x) => fake.taskDefinitions().find((d) => d.taskDefinitionArn === x.taskDefinitionArn)!.containerDefinitions[0].image);
  t.equal(images.filter((i) => i === 'code-server:4.97.0').length, 20, 'the burst\'s twenty on the new image');
  t.equal(images.length, 25);
  // The other five are re-registered in the background at 1 a second; their next start has the new image.
  await until(() => fake.count('RegisterTaskDefinition') - registeredBefore === 25, 15_000, 'background re-registrations');
  t.ok(fake.count('RegisterTaskDefinition', 'throttled') <= 2, 'next to none throttled');
  const current = ids.map((id) => fake.taskDefinitions(`ws-${id}`).at(-1).containerDefinitions[0].image);
  t.same(current, ids.map(() => 'code-server:4.97.0'), 'every family re-registered from the new base, once');
  t.ok(ids.every((id) => fake.taskDefinitions(`ws-${id}`).length === 2));
});

t.test('new students waiting for their registrations hold no start slot: returning students behind them are not held up', async (t) => {
  // Two slots, registrations 2 a second with no burst: six new students ahead of two returning ones.
  // AWS's bucket holds one token more than ours: a call that reaches it a moment early (loopback,
  // a loaded machine) is not throttled for arriving 499 ms after the one before.
  const { fake } = await setup(t, { rateLimits: { 'ecs:TaskDefinitionModify': { rate: 2, burst: 2 } } });
  await enrol(fake, ['back-a', 'back-b']);
  const p = createEcsProvisioner(fakeEcsOptions(fake, { describePollMs: 30, startMaxInFlight: 2, taskDefRate: 2, taskDefBurst: 1 }), { clock: systemClock });
  t.teardown(() => p.close());
  const ids = ['new-a', 'new-b', 'new-c', 'new-d', 'new-e', 'new-f', 'back-a', 'back-b'];
  const results = await Promise.allSettled(ids.map((id) => p.start(startRequest(id, 1).req)));
  t.same(results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason)), [], 'everyone started');
  const runAt = (id: string) => fake.callsOf('RunTask').find((c) => c.input.taskDefinition === `ws-${id}`)!.at;
  const lastRegistration = Math.max(...fake.callsOf('RegisterTaskDefinition').filter((c) => c.input.family?.startsWith('ws-new-')).map((c) => c.at));
  for (const id of ['back-a', 'back-b']) {
    t.ok(runAt(id) < lastRegistration - 1000, `${id} launched ${lastRegistration - runAt(id)} ms before the last new student's registration`);
  }
  t.ok(fake.count('RegisterTaskDefinition', 'throttled') <= 2, 'next to none throttled (paced at AWS\'s rate)');
});

t.test('a new student who gives up while waiting for their registration leaves no start slot held', async (t) => {
  // One slot, registrations 2 a second with a burst of one. The registration of a start that is
  // cancelled goes on (racing starts share it); taking the slot back for a start that is gone held
  // it for good, and every later start on this replica waited until its deadline.
  const { fake } = await setup(t);
  await enrol(fake, ['back-z']);
  const depth: number[] = [];
  const p = createEcsProvisioner(
    fakeEcsOptions(fake, { describePollMs: 30, startMaxInFlight: 1, taskDefRate: 2, taskDefBurst: 1, startDeadlineMs: 8000 }),
    { clock: systemClock, observer: { awsCall: () => {}, stage: () => {}, queueDepth: (n) => depth.push(n) } },
  );
  t.teardown(() => p.close());
  await p.start(startRequest('new-x', 1).req); // spends the burst
  const quitter = startRequest('new-y', 1);
  const quit = p.start(quitter.req).catch((e) => e);
  await until(() => depth.at(-1) === 1, 5000, 'new-y waiting in the registration line');
  quitter.controller.abort(new Error('the student closed the tab'));
  t.equal((await quit).code, 'ABORTED');
  await until(() => fake.callsOf('RegisterTaskDefinition').some((c) => c.input.family === 'ws-new-y'), 5000, 'new-y registered anyway');
  const r = await p.start(startRequest('back-z', 1).req).catch((e) => e);
  t.notOk(r.code, `a returning student still starts (${r.code ?? 'started'})`);
});

t.test('reconcile leaves alone a registration made while it listed, whose task runs', async (t) => {
  // Reconcile lists the tasks and Cloud Map side by side; a start that registers between the two
  // lists has an instance whose task the task list missed. Deregistering it (and marking the
  // workspace gone) cut a student who had just become ready.
  const { fake, p } = await setup(t);
  const release = fake.hold('ListInstances');
  const rec = p.reconcile(() => ({ state: 'unknown' }));
  await until(() => fake.count('ListTasks') === 1, 5000, 'ListTasks answered');
  const r = await p.start(startRequest('olga', 1).req);
  release();
  const sum = await rec;
  t.same(sum.deregistered, [], 'nothing deregistered');
  t.same(fake.instances().map((i) => i.attributes.ECS_TASK_ARN), [r.handle], 'still registered');

  // A registration whose task did stop is still removed.
  fake.interrupt(r.handle);
  const again = await p.reconcile(() => ({ state: 'running', generation: 1 }));
  t.same(again.deregistered.map((d) => d.workspaceId), ['olga']);
});

t.test('stopping a task ECS no longer knows does not wait for it to stop', async (t) => {
  // StopTask answers InvalidParameterException for a task ECS has forgotten (stopped over an hour
  // ago): there is nothing to wait for, and polling it held the stop for the whole bounded wait.
  const { fake, p } = await setup(t, {}, { stopWaitMs: 3000 });
  const gone = 'arn:aws:ecs:eu-west-1:123456789012:task/workspaces/0123456789abcdef0123456789abcdef';
  await p.stop('pia', gone, 'idle for 30 minutes');
  t.equal(fake.count('StopTask', 'any'), 1);
  t.equal(fake.callsOf('DescribeTasks', 'any').filter((c) => c.input.tasks?.includes(gone)).length, 0, 'not polled');
});

t.test('after a base change, a re-registration AWS refuses costs the new image, not the start', async (t) => {
  const { fake, p } = await setup(t);
  await enrol(fake, ['erin']);
  const base = fake.taskDefinitions(fake.baseFamily)[0];
  fake.registerTaskDefinition({ ...base, containerDefinitions: [{ ...base.containerDefinitions[0], image: 'code-server:4.97.0' }] });
  fake.fault('RegisterTaskDefinition', 500);
  const r = await p.start(startRequest('erin', 2).req);
  t.ok(r.handle, 'started');
  t.ok(fake.count('RegisterTaskDefinition', 'fault') >= 1, 'the re-registration was tried');
  const task = fake.tasks().find((x) => x.taskArn === r.handle)!;
  t.equal(fake.taskDefinitions().find((d) => d.taskDefinitionArn === task.taskDefinitionArn)!.containerDefinitions[0].image, base.containerDefinitions[0].image, 'on the family as it was');
});

t.test('racing starts of the same generation on two replicas launch one task', async (t) => {
  const { fake, p, make } = await setup(t);
  const q = make();
  const [a, b] = await Promise.all([p.start(startRequest('carol', 1).req), q.start(startRequest('carol', 1).req)]);
  t.equal(a.handle, b.handle, 'both follow the same task');
  t.equal(fake.liveTasks('carol').length, 1);
  t.equal(fake.tasks().length, 1, 'one task ever launched');
  t.equal(fake.calls.filter((c) => c.error === 'ConflictException').length, 0, 'identical parameters: no ConflictException');
});

t.test('the fake enforces clientToken parameters: same token, other parameters is a ConflictException', async (t) => {
  const { fake, p } = await setup(t, {}, { environment: { A: '1' } });
  await p.start(startRequest('dora', 1).req);
  const other = createEcsProvisioner(fakeEcsOptions(fake, { describePollMs: 30, environment: { A: '2' } }), { clock: systemClock });
  t.teardown(() => other.close());
  const r = await other.start(startRequest('dora', 1).req);
  t.equal(fake.calls.filter((c) => c.op === 'RunTask' && c.error === 'ConflictException').length, 1, 'AWS refused the differing parameters');
  t.equal(fake.tasks().length, 1, 'and the start adopted the task its generation launched');
  t.equal(r.handle, fake.tasks()[0].taskArn);
});

t.test('no Fargate Spot capacity falls back to on-demand; no capacity at all is NO_CAPACITY', async (t) => {
  const { fake, p } = await setup(t, { spotCapacity: false });
  const r = await p.start(startRequest('eve', 1).req);
  const runs = fake.callsOf('RunTask');
  t.equal(runs.length, 2);
  t.same(runs[0].input.capacityProviderStrategy, [{ capacityProvider: 'FARGATE_SPOT', weight: 1 }]);
  t.same(runs[1].input.capacityProviderStrategy, [{ capacityProvider: 'FARGATE', weight: 1 }]);
  t.equal(runs[1].input.clientToken, 'eve.1-od', 'its own token: the first is bound to the Spot parameters');
  t.equal(taskOf(fake, r.handle).capacityProviderName, 'FARGATE');

  fake.setCapacity({ fargate: false });
  const err = await p.start(startRequest('finn', 1).req).catch((e) => e);
  t.type(err, StartFailure);
  t.equal(err.code, 'NO_CAPACITY');
  t.match(err.message, 'Capacity is unavailable');
});

t.test('a task that dies while starting fails the start with its stop code and reason', async (t) => {
  const { fake, p } = await setup(t);
  fake.planTask('gina', { dieAt: 'PENDING', stopCode: 'TaskFailedToStart', stoppedReason: 'CannotPullContainerError: pull image manifest has been retried 5 time(s)' });
  const s = startRequest('gina', 1);
  const err = await p.start(s.req).catch((e) => e);
  t.equal(err.code, 'TASK_STOPPED');
  t.match(err.message, 'TaskFailedToStart: CannotPullContainerError');
  t.notOk(s.stages.some((x) => x.stage === 'ready'));
  t.equal(fake.count('RegisterInstance'), 0);

  fake.planTask('hugo', { dieAt: 'RUNNING', stopCode: 'EssentialContainerExited', stoppedReason: 'Essential container in task exited', exitCode: 137 });
  const err2 = await p.start(startRequest('hugo', 1).req).catch((e) => e);
  t.equal(err2.code, 'TASK_STOPPED');
  t.match(err2.message, /EssentialContainerExited: Essential container in task exited.*exit code 137/);
});

t.test('a start past its deadline is stopped and failed', async (t) => {
  const { fake, p } = await setup(t, { durations: { provisioningMs: 60_000 } }, { startDeadlineMs: 300 });
  const s = startRequest('ida', 1);
  const err = await p.start(s.req).catch((e) => e);
  t.equal(err.code, 'START_DEADLINE');
  t.match(err.message, 'last stage: provisioning');
  await until(() => fake.count('StopTask') === 1, 5000, 'StopTask');
  t.equal(fake.callsOf('StopTask')[0].input.task, s.handles[0]);
});

t.test("a task answering for another workspace (a dead task's reused IP) is never taken for healthy", async (t) => {
  // The private IP this task got is one another student's task still answers on: that workspace's
  // server (here the demo workspace of 'olga') refuses a probe that names 'ida2' with a 421.
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-ecs-identity-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const probes: Array<string | undefined> = [];
  const healthz: string[] = [];
  const { p } = await setup(t, {
    workspace: async (info) => {
      const demo = startDemoWorkspace({ host: info.host, port: info.port, dataDir: dir, id: 'olga', readyDelayMs: 0, key: 'olga-key' });
      demo.server.prependListener('request', (req) => {
        if (req.url === '*') probes.push(req.headers[WORKSPACE_FIELD] as string | undefined);
        else healthz.push(req.url ?? '');
      });
      await demo.listen();
      return { close: () => demo.close() };
    },
  }, { startDeadlineMs: 1500 });
  const err = await p.start(startRequest('ida2', 1).req).catch((e) => e);
  t.equal(err.code, 'START_DEADLINE', 'probed until the deadline, never ready');
  t.match(err.message, 'last stage: probing');
  t.ok(probes.length > 0 && probes.every((w) => w === 'ida2'), `every probe's challenge named the workspace it was for (${probes.length})`);
  t.same(healthz, [], 'and no probe went past it');
});

t.test("RunTask gives the task its start's key (WORKSPACE_KEY); it is probed only once it proves itself with it", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-ecs-key-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const seen: string[] = [];
  const { fake, p } = await setup(t, {
    workspace: async (info) => {
      // A task that ignores its key (a student's own server on the port): never healthy.
      const demo = startDemoWorkspace({ host: info.host, port: info.port, dataDir: dir, id: info.workspaceId!, readyDelayMs: 0, key: info.workspaceId === 'keyless' ? 'not-the-key' : info.environment.WORKSPACE_KEY });
      demo.server.prependListener('request', (req) => { seen.push(`${info.workspaceId} ${req.method} ${req.url}`); });
      await demo.listen();
      return { close: () => demo.close() };
    },
  }, { startDeadlineMs: 1500 });
  const s = startRequest('kate', 4);
  s.req.identityKey = 'the-key-of-kate-4';
  const r = await p.start(s.req);
  const env = fake.callsOf('RunTask')[0].input.overrides.containerOverrides[0].environment as Array<{ name: string; value: string }>;
  t.same(env.filter((e) => e.name.startsWith('WORKSPACE_')), [
    { name: 'WORKSPACE_ID', value: 'kate' }, { name: 'WORKSPACE_GENERATION', value: '4' }, { name: 'WORKSPACE_KEY', value: 'the-key-of-kate-4' },
  ], 'in containerOverrides, beside the id and generation');
  t.equal(r.endpoint.proves, true, 'its route requires proof');
  t.same(seen.slice(0, 2), ['kate OPTIONS *', 'kate GET /healthz'], 'challenged, then probed');
  const listed = await p.list();
  t.ok(listed.length > 0 && listed.every((w) => w.endpoint.proves === true), 'rediscovered routes require proof too');
  const err = await p.start(startRequest('keyless', 1).req).catch((e) => e);
  // Its own ENI's address answers in full, never with a proof: a task that cannot prove itself fails
  // fast as a configuration fault, not at START_DEADLINE.
  t.equal(err.code, 'BAD_CONFIG', 'a task that cannot prove itself is never ready, and says why');
  t.match(err.message, /preload|WORKSPACE_KEY/, 'naming the likely causes');
  t.equal(seen.filter((r) => r === 'keyless OPTIONS *').length, 3, 'after three challenges answered without a proof');
  t.notOk(seen.includes('keyless GET /healthz'), 'and never probed past the challenge');
});

t.test('a task that closes the connection on each challenge (still starting, restarting) is probed on until the deadline, not failed as BAD_CONFIG', async (t) => {
  let challenges = 0;
  const { p } = await setup(t, {
    workspace: async (info) => {
      const sockets = new Set<Socket>();
      const server = createNetServer((s) => { sockets.add(s); s.on('error', () => undefined); s.once('data', () => { challenges++; s.end(); }); });
      await new Promise<void>((resolve) => server.listen(info.port, info.host, resolve));
      return { close: () => new Promise<void>((resolve) => { for (const s of sockets) s.destroy(); server.close(() => resolve()); }) };
    },
  }, { startDeadlineMs: 1500 });
  const err = await p.start(startRequest('closer', 1).req).catch((e) => e);
  t.equal(err.code, 'START_DEADLINE', 'no definite answer: waited for, as before');
  t.ok(challenges > 3, `more than three challenges went unanswered (${challenges})`);
});

t.test('a start cancelled by its caller fails ABORTED and leaves the task for a takeover (resumeHandle)', async (t) => {
  const { fake, p, make } = await setup(t);
  const s = startRequest('jack', 1);
  s.req.onHandle = (h) => {
    s.handles.push(h);
    s.controller.abort(new Error('lease lost'));
  };
  const err = await p.start(s.req).catch((e) => e);
  t.equal(err.code, 'ABORTED');
  t.equal(fake.count('StopTask'), 0, 'not stopped: another replica resumes it');
  const takeover = make();
  const r = await takeover.start(startRequest('jack', 1, { resumeHandle: s.handles[0] }).req);
  t.equal(r.handle, s.handles[0], 'resumed the recorded task');
  t.equal(fake.count('RunTask'), 1, 'no second RunTask');
  t.equal(fake.count('RegisterInstance'), 1);
});

t.test('a start resumed across a GATEWAY_SECRET rotation: its task proves itself under the accepted key', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-ecs-rotated-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { fake, p, make } = await setup(t, {
    workspace: async (info) => {
      const demo = startDemoWorkspace({ host: info.host, port: info.port, dataDir: dir, id: info.workspaceId!, readyDelayMs: 0, key: info.environment.WORKSPACE_KEY });
      await demo.listen();
      return { close: () => demo.close() };
    },
  }, { startDeadlineMs: 3000 });
  // Launched by a replica signing with the old secret, which then went away mid-start (a rolling deploy).
  const launched: Record<string, string> = {};
  for (const id of ['liv', 'max']) {
    const s = startRequest(id, 1, { identityKey: `old-key-${id}` });
    s.req.onHandle = (h) => { launched[id] = h; s.controller.abort(new Error('lease lost')); };
    t.equal((await p.start(s.req).catch((e) => e)).code, 'ABORTED');
  }
  const takeover = make();
  const r = await takeover.start(startRequest('liv', 1, { resumeHandle: launched.liv, identityKey: 'new-key-liv', acceptedIdentityKey: 'old-key-liv' }).req);
  t.same([r.handle, r.endpoint.proves], [launched.liv, true], 'the replica with the new secret, accepting the old, resumes it');
  const err = await takeover.start(startRequest('max', 1, { resumeHandle: launched.max, identityKey: 'new-key-max' }).req).catch((e) => e);
  t.equal(err.code, 'BAD_CONFIG', 'without the accepted key: it cannot prove itself, as before');
  t.equal(fake.count('RunTask'), 2, 'no task launched twice');
});

t.test('Spot interruption: describe and list stop reporting it, reconcile deregisters it, the next start runs a new task', async (t) => {
  const { fake, p } = await setup(t);
  const r = await p.start(startRequest('kim', 1).req);
  t.equal((await p.list()).length, 1);
  fake.interrupt(r.handle);
  t.equal(await p.describe('kim'), undefined);
  t.same(await p.list(), []);
  const sum = await p.reconcile(() => ({ state: 'running', generation: 1 }));
  t.same(sum.deregistered.map((d) => [d.workspaceId, d.stopCode, d.generation]), [['kim', 'SpotInterruption', 1]]);
  t.match(sum.deregistered[0].reason, 'SpotInterruption: Your Spot Task was interrupted.');
  t.equal(fake.instances().length, 0);
  const r2 = await p.start(startRequest('kim', 2).req);
  t.not(r2.handle, r.handle);
  t.equal((await p.describe('kim'))?.generation, 2);
});

t.test('reconcile adopts an orphan, stops tasks no workspace claims, keeps the claimed ones', async (t) => {
  const { fake, p } = await setup(t);
  const kept = await p.start(startRequest('liam', 1).req);
  const stale = await p.start(startRequest('mia', 1).req);
  const unclaimed = await p.start(startRequest('noah', 3).req);
  // A replica launched this one and died before registering it; the store lost its record.
  const orphan = fake.launchTask({ family: fake.baseFamily, workspaceId: 'olga', generation: 7, startedBy: 'workspace-gateway', cluster: 'workspaces', environment: { WORKSPACE_KEY: testKey('olga', 7) } });
  await until(() => taskOf(fake, orphan).lastStatus === 'RUNNING', 5000, 'orphan RUNNING');
  const ip = fake.tasks().find((x) => x.taskArn === orphan)!.ip;
  await until(() => httpGet(ip, fake.workspacePort, '/healthz').then((r) => r.status === 200, () => false), 5000, 'orphan healthy');

  fake.dropInstance('liam'); // Cloud Map lost a registration the store still has running
  const claims: Record<string, WorkspaceClaim> = {
    liam: { state: 'running', generation: 1 },
    mia: { state: 'running', generation: 2 }, // a newer generation is the one in use
    noah: { state: 'stopped' },
  };
  const sum = await p.reconcile((id) => claims[id] ?? { state: 'unknown' });
  t.equal(sum.kept, 1);
  t.same(sum.errors, []);
  t.same(sum.adopted.map((a) => [a.workspaceId, a.generation, a.handle]), [['olga', 7, orphan]]);
  t.same(sum.stopped.map((s) => s.workspaceId).sort(), ['mia', 'noah']);
  t.equal(fake.liveTasks('liam')[0].taskArn, kept.handle);
  t.equal(fake.liveTasks('mia')[0]?.desiredStatus ?? 'STOPPED', 'STOPPED');
  t.equal(taskOf(fake, stale.handle).desiredStatus, 'STOPPED');
  t.equal(taskOf(fake, unclaimed.handle).desiredStatus, 'STOPPED');
  t.same(fake.instances().map((i) => i.id).sort(), ['liam', 'olga'], 'the orphan is now discoverable, the stopped ones are not');
  t.same((await p.list()).map((w) => w.workspaceId).sort(), ['liam', 'olga']);
});

t.test('workspaces spread over several Cloud Map services by a stable hash', async (t) => {
  const services = ['srv-aaaaaaaaaaaaaaa1', 'srv-aaaaaaaaaaaaaaa2', 'srv-aaaaaaaaaaaaaaa3'];
  const { fake, p } = await setup(t, { serviceIds: services });
  const ids = ['pia', 'quinn', 'rosa', 'sam', 'tess', 'uma'];
  await Promise.all(ids.map((id) => p.start(startRequest(id, 1).req)));
  const used = new Set(fake.instances().map((i) => i.serviceId));
  t.ok(used.size > 1, 'more than one service used');
  t.same((await p.list()).map((w) => w.workspaceId).sort(), ids);
  for (const id of ids) t.equal((await p.describe(id))?.workspaceId, id);
});

t.test('on a manual clock the fake moves tasks only when the test advances it', async (t) => {
  const clock = createManualClock();
  const { fake, p } = await setup(t, { clock, durations: { provisioningMs: 10_000, pendingMs: 20_000 } });
  const s = startRequest('vera', 1);
  const started = p.start(s.req);
  await s.reached('provisioning');
  await until(() => fake.count('DescribeTasks') >= 2, 5000, 'a few polls');
  t.equal(fake.liveTasks('vera')[0].lastStatus, 'PROVISIONING', 'time stands still');
  clock.advance(10_000);
  await s.reached('pending');
  clock.advance(20_000);
  const r = await started;
  t.same(s.stages.map((x) => x.stage), ['queued', 'provisioning', 'pending', 'running', 'probing', 'ready']);
  t.equal(taskOf(fake, r.handle).lastStatus, 'RUNNING');
});

t.test('beyond 10,000 access points: new students go to the next file system and stay there; all full is BAD_CONFIG', async (t) => {
  const fsA = 'fs-0aaaaaaaaaaaaaaa1';
  const fsB = 'fs-0bbbbbbbbbbbbbbb2';
  const { fake, p, make } = await setup(t, { fileSystemIds: [fsA, fsB], maxAccessPointsPerFileSystem: 2 });
  for (const id of ['w1', 'w2', 'w3']) await p.start(startRequest(id, 1).req);
  t.same(fake.accessPoints(fsA).map((a) => a.RootDirectory.Path), ['/students/w1', '/students/w2']);
  t.same(fake.accessPoints(fsB).map((a) => a.RootDirectory.Path), ['/students/w3']);
  t.equal(fake.taskDefinitions('ws-w3')[0].volumes[0].efsVolumeConfiguration.fileSystemId, fsB);

  // A fresh process, and a new base: w3 stays on its file system, with no EFS call.
  const base = fake.taskDefinitions(fake.baseFamily)[0];
  fake.registerTaskDefinition({ ...base, cpu: '2048' });
  await p.stop('w3', undefined, 'idle');
  const fresh = make();
  await fresh.start(startRequest('w3', 2).req);
  t.equal(fake.taskDefinitions('ws-w3')[1].volumes[0].efsVolumeConfiguration.fileSystemId, fsB);
  t.equal(fake.taskDefinitions('ws-w3')[1].cpu, '2048');
  t.equal(fake.count('CreateAccessPoint'), 3);

  await p.start(startRequest('w4', 1).req);
  const err = await p.start(startRequest('w5', 1).req).catch((e) => e);
  t.equal(err.code, 'BAD_CONFIG');
  t.match(err.message, 'add a file system');
  t.equal(fake.tasks().filter((x) => x.tags!.some((k) => k.value === 'w5')).length, 0, 'nothing launched');
});

t.test('a full Cloud Map service fails the start with BAD_CONFIG and stops its task', async (t) => {
  const { fake, p } = await setup(t, { maxInstancesPerService: 1 });
  await p.start(startRequest('x1', 1).req);
  const s = startRequest('x2', 1);
  const err = await p.start(s.req).catch((e) => e);
  t.equal(err.code, 'BAD_CONFIG');
  t.match(err.message, 'add a service to CLOUDMAP_SERVICE_IDS');
  await until(() => fake.count('StopTask') === 1, 5000, 'StopTask');
  t.equal(fake.callsOf('StopTask')[0].input.task, s.handles[0]);
});

t.test('after CLOUDMAP_SERVICE_IDS grows, describe and stop still find a registration in its old service', async (t) => {
  const services = ['srv-aaaaaaaaaaaaaaa1', 'srv-aaaaaaaaaaaaaaa2', 'srv-aaaaaaaaaaaaaaa3'];
  const { fake, p, make } = await setup(t, { serviceIds: services }, { cloudMapServiceIds: [services[0]] });
  const id = ['y1', 'y2', 'y3', 'y4', 'y5', 'y6', 'y7'].find((x) => serviceIndex(x, 3) !== 0)!;
  const r = await p.start(startRequest(id, 1).req);
  const grown = make({ cloudMapServiceIds: services });
  t.equal((await grown.describe(id))?.handle, r.handle);
  await grown.stop(id, r.handle, 'idle');
  t.equal(fake.instances().length, 0);
});

// A task ECS was told to stop (StopTask from elsewhere, a Spot reclaim, a deployment) keeps
// lastStatus RUNNING, its workspace still answering, until its container ends: desiredStatus STOPPED
// is what says it is on its way out. It must never become, or stay, a workspace's route.
t.test('a task told to stop while still RUNNING: a resumed start fails TASK_STOPPED instead of registering it', async (t) => {
  const { fake, p, make } = await setup(t);
  const s = startRequest('rex', 1);
  s.req.onHandle = (h) => {
    s.handles.push(h);
    s.controller.abort(new Error('lease lost'));
  };
  t.equal((await p.start(s.req).catch((e) => e)).code, 'ABORTED');
  await until(() => taskOf(fake, s.handles[0]).lastStatus === 'RUNNING', 5000, 'task RUNNING');
  fake.beginStop(s.handles[0]);
  t.equal(taskOf(fake, s.handles[0]).lastStatus, 'RUNNING', 'the fake reports it RUNNING, desired STOPPED');
  const err = await make().start(startRequest('rex', 1, { resumeHandle: s.handles[0] }).req).catch((e) => e);
  t.equal(err.code, 'TASK_STOPPED', `the resumed start failed (${err.code ?? 'it became ready'})`);
  t.equal(fake.count('RegisterInstance'), 0, 'never registered');
});

t.test('a task told to stop between two polls, as it reached RUNNING, fails the start', async (t) => {
  const { fake, p } = await setup(t);
  const s = startRequest('sid', 1);
  const started = p.start(s.req).then((r) => r, (e) => e);
  await s.reached('provisioning');
  const release = fake.hold('DescribeTasks');
  await until(() => s.handles.length === 1 && taskOf(fake, s.handles[0]).lastStatus === 'RUNNING', 5000, 'task RUNNING');
  fake.beginStop(s.handles[0], 'UserInitiated', 'stopped by a deployment');
  release();
  const r = await started;
  t.equal(r.code, 'TASK_STOPPED', `the start failed (${r.code ?? 'it became ready'})`);
  t.match(r.message ?? '', 'stopped by a deployment');
  t.equal(fake.count('RegisterInstance'), 0, 'never registered');
});

t.test('a Spot reclaim while the workspace is being probed fails the start, though it still answers', async (t) => {
  let healthy = false;
  const { fake, p } = await setup(t, {
    workspace: async (info) => {
      const server = (await import('node:http')).createServer((req, res) => {
        res.writeHead(healthy ? 200 : 503);
        res.end();
      });
      await new Promise<void>((resolve) => server.listen(info.port, info.host, resolve));
      return { close: () => new Promise<void>((resolve) => { server.close(() => resolve()); server.closeAllConnections(); }) };
    },
  });
  const s = startRequest('tia', 1);
  const started = p.start(s.req).then((r) => r, (e) => e);
  await s.reached('probing');
  fake.beginStop(s.handles[0]);
  const polls = fake.count('DescribeTasks');
  let settled = false;
  void started.then(() => (settled = true));
  await until(() => settled || fake.count('DescribeTasks') >= polls + 2, 5000, 'two polls after the reclaim');
  healthy = true;
  const r = await started;
  t.equal(r.code, 'TASK_STOPPED', `the start failed (${r.code ?? 'it became ready'})`);
  t.equal(fake.count('RegisterInstance'), 0, 'never registered');
});

t.test('describe, list and reconcile never report a task told to stop as running, nor adopt or keep its registration', async (t) => {
  const { fake, p } = await setup(t);
  const kept = await p.start(startRequest('uli', 1).req);
  const orphan = fake.launchTask({ family: fake.baseFamily, workspaceId: 'vic', generation: 2, startedBy: 'workspace-gateway', cluster: 'workspaces', environment: { WORKSPACE_KEY: testKey('vic', 2) } });
  await until(() => taskOf(fake, orphan).lastStatus === 'RUNNING', 5000, 'orphan RUNNING');
  const ip = taskOf(fake, orphan).ip;
  await until(() => httpGet(ip, fake.workspacePort, '/healthz').then((r) => r.status === 200, () => false), 5000, 'orphan healthy');

  fake.beginStop(kept.handle);
  t.equal(await p.describe('uli'), undefined, 'describe: not running');

  // ListTasks then DescribeTasks: a stop between the two shows the task RUNNING, desired STOPPED.
  const racing = async <T>(run: () => Promise<T>, ...refs: string[]) => {
    const release = fake.hold('DescribeTasks');
    const listed = fake.count('ListTasks');
    const out = run();
    await until(() => fake.count('ListTasks') > listed && fake.heldCount('DescribeTasks') > 0, 5000, 'ListTasks answered, DescribeTasks held');
    for (const ref of refs) fake.beginStop(ref);
    release();
    return out;
  };
  const again = await p.start(startRequest('uli', 2).req);
  t.same((await racing(() => p.list(), again.handle)).map((w) => w.workspaceId), [], 'list: not running');

  const third = await p.start(startRequest('uli', 3).req);
  const sum = await racing(() => p.reconcile((id) => (id === 'uli' ? { state: 'running', generation: 3 } : { state: 'unknown' })), third.handle, orphan);
  t.equal(sum.kept, 0, 'not kept');
  t.same(sum.adopted, [], 'the orphan told to stop is not adopted');
  t.same(sum.deregistered.map((d) => [d.workspaceId, d.stopCode]), [['uli', 'SpotInterruption']], 'its registration removed, so the gateway marks it gone');
  t.same(fake.instances(), [], 'nothing left registered');
});

t.test('a task stopped by the reaper while its start registers it: the registration is removed and the start fails TASK_STOPPED', async (t) => {
  // The reaper's stop() is StopTask, then the deregistration of what Cloud Map holds: with the start's
  // RegisterInstance still on its way there is nothing yet, and the registration that lands after it
  // was a route to a stopping task, reported ready.
  const { fake, p, make } = await setup(t);
  const s = startRequest('ria', 1);
  const release = fake.hold('RegisterInstance');
  const started = p.start(s.req).then((r) => r, (e) => e);
  await until(() => fake.heldCount('RegisterInstance') === 1, 5000, 'RegisterInstance sent');
  await make().stop('ria', s.handles[0], 'idle for 30 minutes');
  release();
  const r = await started;
  t.equal(r.code, 'TASK_STOPPED', `the start failed (${r.code ?? 'it became ready'})`);
  t.same(fake.instances(), [], 'no registration left: no route to the stopped task');
  t.equal(fake.count('RegisterInstance'), 1, 'it had been registered');
});

t.test('a task ECS tells to stop while its start registers it: the same, though it still answers', async (t) => {
  const { fake, p } = await setup(t);
  const s = startRequest('rob', 1);
  const release = fake.hold('RegisterInstance');
  const started = p.start(s.req).then((r) => r, (e) => e);
  await until(() => fake.heldCount('RegisterInstance') === 1, 5000, 'RegisterInstance sent');
  fake.beginStop(s.handles[0]);
  release();
  const r = await started;
  t.equal(r.code, 'TASK_STOPPED', `the start failed (${r.code ?? 'it became ready'})`);
  t.same(fake.instances(), [], 'no registration left');
});

t.test('reconcile adopts an unregistered orphan only if it proves it is its generation\'s start', async (t) => {
  // The orphan's generation is in its tags, so its key is known: adopting it on a bare /healthz took
  // a task that cannot prove itself (started under another GATEWAY_SECRET, an image without the
  // preload) for a workspace, and the gateway stopped it at the first request.
  const { fake, p, make } = await setup(t);
  const launch = (workspaceId: string, environment: Record<string, string>) => {
    const arn = fake.launchTask({ family: fake.baseFamily, workspaceId, generation: 4, startedBy: 'workspace-gateway', cluster: 'workspaces', environment });
    return arn;
  };
  const keyless = launch('wes', {});
  const foreign = launch('xan', { WORKSPACE_KEY: 'a key of another secret' });
  const proven = launch('yul', { WORKSPACE_KEY: testKey('yul', 4) });
  for (const arn of [keyless, foreign, proven]) {
    await until(() => taskOf(fake, arn).lastStatus === 'RUNNING', 5000, 'orphan RUNNING');
    const ip = taskOf(fake, arn).ip;
    await until(() => httpGet(ip, fake.workspacePort, '/healthz').then((r) => r.status === 200, () => false), 5000, 'orphan answers /healthz');
  }
  const sum = await p.reconcile(() => ({ state: 'unknown' }));
  t.same(sum.adopted.map((a) => a.workspaceId), ['yul'], 'only the task that proves itself is adopted');
  t.same(fake.instances().map((i) => i.id), ['yul'], 'and only it registered');
  t.same(sum.stopped, [], 'the others are young enough to be a start in progress: left alone');

  // Past any start deadline, a task that cannot prove itself is stopped, like one never healthy.
  const late = make({ startDeadlineMs: 1 });
  const later = await late.reconcile((id) => (id === 'yul' ? { state: 'running', generation: 4 } : { state: 'unknown' }));
  t.same(later.adopted, []);
  t.same(later.stopped.map((x) => x.workspaceId).sort(), ['wes', 'xan']);
  t.equal(taskOf(fake, keyless).desiredStatus, 'STOPPED');
  t.equal(taskOf(fake, foreign).desiredStatus, 'STOPPED');
  t.equal(taskOf(fake, proven).desiredStatus, 'RUNNING');
});

t.test('after a ConflictException, a generation whose task already stopped fails TASK_STOPPED, launching nothing', async (t) => {
  // Another replica with other settings launched this generation, and its task stopped (or was told
  // to) before this replica's RunTask: findGenerationTask listed RUNNING tasks only, found none, and
  // the start failed BACKEND_UNAVAILABLE with AWS's "client token already used" (an AWS alert).
  const { fake, p, make } = await setup(t, {}, { environment: { A: '1' } });
  const first = await p.start(startRequest('zed', 1).req);
  fake.interrupt(first.handle);
  const other = make({ environment: { A: '2' } });
  const err = await other.start(startRequest('zed', 1).req).catch((e) => e);
  t.equal(fake.calls.filter((c) => c.op === 'RunTask' && c.error === 'ConflictException').length, 1, 'AWS refused the differing parameters');
  t.equal(err.code, 'TASK_STOPPED', `the start failed with its task's fate (${err.code})`);
  t.equal(fake.tasks().length, 1, 'no second task launched');

  // Told to stop but still RUNNING: the same.
  const second = await p.start(startRequest('zed', 2).req);
  fake.beginStop(second.handle);
  const err2 = await other.start(startRequest('zed', 2).req).catch((e) => e);
  t.equal(err2.code, 'TASK_STOPPED', `(${err2.code})`);
  t.equal(fake.tasks().length, 2, 'no second task launched');
});
