// Small helpers shared by the ECS provisioner tests.
import { request } from 'node:http';
import type { StageReport, StartRequest } from '../../provisioner/contract.js';
import { createEcsProvisioner } from '../../provisioner/ecs.js';
import { systemClock } from '../../gateway/clock.js';
import type { FakeAws } from './index.js';
import { fakeEcsOptions } from './config.js';

export interface RecordedStart {
  req: StartRequest;
  stages: StageReport[];
  handles: string[];
  controller: AbortController;
  /** Resolves when `stage` is reported. */
  reached(stage: StageReport['stage']): Promise<void>;
}

export function startRequest(workspaceId: string, generation: number, extra: Partial<StartRequest> = {}): RecordedStart {
  const controller = new AbortController();
  const stages: StageReport[] = [];
  const handles: string[] = [];
  const waiters: { stage: string; resolve(): void }[] = [];
  const req: StartRequest = {
    workspaceId,
    generation,
    identityKey: `key-${workspaceId}-${generation}`,
    signal: controller.signal,
    onStage(r) {
      stages.push(r);
      for (const w of waiters.filter((x) => x.stage === r.stage)) w.resolve();
    },
    onHandle(h) {
      handles.push(h);
    },
    ...extra,
  };
  return {
    req,
    stages,
    handles,
    controller,
    reached(stage) {
      if (stages.some((s) => s.stage === stage)) return Promise.resolve();
      return new Promise((resolve) => waiters.push({ stage, resolve }));
    },
  };
}

/** Polls `cond` every 10 ms (for effects with no event to wait on, e.g. a background StopTask). */
export async function until(cond: () => boolean | Promise<boolean>, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export function httpGet(host: string, port: number, path = '/'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host, port, path, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/**
 * Students who used the platform on an earlier day: their task definition families and access
 * points exist. Registered as an enrolment would, without waiting out the task definition buckets
 * (RegisterTaskDefinition's 1 call a second, DescribeTaskDefinition's 20: the fake's and the
 * provisioner's own, lifted for the enrolment, then back at AWS's rates with full buckets; the read
 * bucket alone held 500 students' enrolment to 22 s of a quick bench run).
 */
export async function enrol(fake: FakeAws, ids: string[]): Promise<void> {
  const lifted = ['ecs:TaskDefinitionModify', 'ecs:TaskDefinitionRead'].map((k) => [k, fake.setRateLimit(k, undefined)] as const);
  const p = createEcsProvisioner(fakeEcsOptions(fake, { awsCallTimeoutMs: 60_000 }, { TASKDEF_RATE: '100000', TASKDEF_BURST: '10000', ECS_API_RATES: 'taskdef-read=100000/10000' }), { clock: systemClock });
  try {
    for (let i = 0; i < ids.length; i += 50) await Promise.all(ids.slice(i, i + 50).map((id) => p.prepare(id)));
  } finally {
    await p.close();
    for (const [k, limit] of lifted) fake.setRateLimit(k, limit);
  }
}
