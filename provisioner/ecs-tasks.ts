// Following ECS tasks: the fields the provisioner reads from a described task, and one batched
// DescribeTasks poller shared by every start and stop in a process.
import { DescribeTasksCommand, type ECSClient, type Task } from '@aws-sdk/client-ecs';
import type { Clock } from '../gateway/clock.js';
import { START_STAGES, StartFailure, type StartRequest, type StartStage } from './contract.js';
import { AwsCallError, type AwsCaller } from './aws-call.js';
import type { EcsObserver } from './ecs-types.js';
import type { Timers } from './timers.js';

export function tag(tags: { key?: string; value?: string }[] | undefined, key: string): string | undefined {
  return tags?.find((t) => t.key === key)?.value;
}

export function privateIp(task: Task): string | undefined {
  for (const a of task.attachments ?? []) {
    if (a.type !== 'ElasticNetworkInterface') continue;
    const ip = a.details?.find((d) => d.name === 'privateIPv4Address')?.value;
    if (ip) return ip;
  }
  return task.containers?.[0]?.networkInterfaces?.[0]?.privateIpv4Address;
}

/**
 * Stopped, or on its way there: after StopTask, a Spot reclaim or a deployment ECS sets desiredStatus
 * STOPPED at once, while lastStatus stays RUNNING through the container's stop timeout (a Spot task
 * gets two minutes) and its workspace still answers. Such a task is never a route to send students to.
 */
export function stoppingOrStopped(task: Task): boolean {
  return task.lastStatus === 'STOPPED' || task.desiredStatus === 'STOPPED';
}

export function stopDescription(task: Task): string {
  const parts = [task.stopCode, task.stoppedReason].filter(Boolean).join(': ');
  const c = task.containers?.find((x) => x.reason || x.exitCode !== undefined);
  const container = c ? ` (container ${c.name}${c.exitCode !== undefined ? ` exit code ${c.exitCode}` : ''}${c.reason ? `: ${c.reason}` : ''})` : '';
  return `${parts || 'stopped'}${container}`;
}

export function chunks<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/**
 * How long to wait before the next batched poll: `minMs` while one page (100 tasks) covers every
 * watched task, 100 ms more per further page, so one process makes at most about ten DescribeTasks
 * calls a second however many starts are in flight. A task's readiness is then seen within a
 * quarter of a second at small scale and half a second for a class of 500 (issue 7, class surge).
 */
export function pollIntervalMs(watched: number, minMs: number): number {
  return Math.max(minMs, Math.ceil(watched / 100) * 100);
}

interface Watch {
  until(task: Task): boolean;
  onUpdate(task: Task): void;
  resolve(task: Task): void;
  reject(err: unknown): void;
  /** Clock time of the first of the polls in a row that reported the task MISSING. */
  missingSince: number | undefined;
  /** Polls in a row that failed after their retries. */
  failed: number;
  /** Polls sent before this watch began: their answers may predate it, so it takes none of them. */
  sentBefore: number;
}

/**
 * Polls in a row that may fail (throttled, 5xx, timed out, each after its own retries) before the
 * tasks they cover are given up: one bad moment of the DescribeTasks API must not fail the starts
 * of up to 100 students whose tasks are booting fine (and stop those tasks).
 */
export const FAILED_POLLS_TOLERATED = 5;

/**
 * How long DescribeTasks may report a task MISSING before it is given up. The ECS API is eventually
 * consistent: a task RunTask just returned may stay unknown to DescribeTasks for seconds (RunTask API
 * reference: describe "starting with a couple of seconds of wait time and increasing gradually up to
 * five minutes"). Five polls (1.25 s) failed healthy starts, and the gateway then stopped their tasks.
 */
export const MISSING_TOLERATED_MS = 60_000;

/** Whether a task MISSING since `since` (clock ms) is given up at `now`. */
export function missingForTooLong(since: number, now: number): boolean {
  return now - since >= MISSING_TOLERATED_MS;
}

/**
 * Follows many tasks with one DescribeTasks per poll for up to 100 of them at once, instead of a
 * call per start per poll: 300 starts would otherwise be hundreds of calls per second.
 */
export class TaskWatcher {
  private readonly watches = new Map<string, Set<Watch>>();
  private timer: unknown = undefined;
  private closed = false;
  /** Polls sent so far. */
  private sent = 0;

  constructor(
    private readonly call: AwsCaller,
    private readonly ecs: ECSClient,
    private readonly cluster: string,
    private readonly timers: Timers,
    private readonly pollMs: number,
    private readonly clock: Clock,
  ) {}

  /**
   * Resolves with the task once `until(task)` holds (see stoppingOrStopped for what desiredStatus says),
   * as read by a poll sent after this call: `() => true` is the task's state as of now or later.
   */
  watch(taskArn: string, until: (t: Task) => boolean, signal: AbortSignal, onUpdate: (t: Task) => void = () => {}): Promise<Task> {
    return new Promise((resolve, reject) => {
      if (signal.aborted) return reject(signal.reason);
      const set = this.watches.get(taskArn) ?? new Set<Watch>();
      const onAbort = () => {
        set.delete(w);
        if (set.size === 0) this.watches.delete(taskArn);
        reject(signal.reason);
      };
      const w: Watch = {
        until,
        onUpdate,
        missingSince: undefined,
        failed: 0,
        sentBefore: this.sent,
        resolve: (t) => {
          signal.removeEventListener('abort', onAbort);
          resolve(t);
        },
        reject: (e) => {
          signal.removeEventListener('abort', onAbort);
          reject(e);
        },
      };
      signal.addEventListener('abort', onAbort, { once: true });
      set.add(w);
      this.watches.set(taskArn, set);
      this.schedule();
    });
  }

  close(): void {
    this.closed = true;
    if (this.timer !== undefined) this.timers.clearTimeout(this.timer);
    const err = new StartFailure('ABORTED', 'provisioner closed');
    for (const set of this.watches.values()) for (const w of set) w.reject(err);
    this.watches.clear();
  }

  private schedule(): void {
    if (this.timer !== undefined || this.closed || this.watches.size === 0) return;
    this.timer = this.timers.setTimeout(() => {
      void this.poll().finally(() => {
        this.timer = undefined;
        this.schedule();
      });
    }, pollIntervalMs(this.watches.size, this.pollMs));
  }

  private async poll(): Promise<void> {
    const arns = [...this.watches.keys()];
    const round = ++this.sent;
    const answers = (w: Watch) => w.sentBefore < round;
    await Promise.all(
      chunks(arns, 100).map(async (page) => {
        let out;
        try {
          out = await this.call('DescribeTasks', (abortSignal) =>
            this.ecs.send(new DescribeTasksCommand({ cluster: this.cluster, tasks: page }), { abortSignal }),
          );
        } catch (err) {
          // A refusal (access denied, no such cluster) will not pass: give up at once.
          const lasting = !(err instanceof AwsCallError) || err.errorClass === 'fatal';
          for (const arn of page) {
            const set = this.watches.get(arn);
            if (!set) continue;
            for (const w of [...set].filter(answers)) {
              if (lasting || ++w.failed >= FAILED_POLLS_TOLERATED) {
                set.delete(w);
                w.reject(err);
              }
            }
            if (set.size === 0) this.watches.delete(arn);
          }
          return;
        }
        for (const t of out.tasks ?? []) {
          const set = this.watches.get(t.taskArn!);
          if (!set) continue;
          for (const w of [...set].filter(answers)) {
            w.missingSince = undefined;
            w.failed = 0;
            w.onUpdate(t);
            if (w.until(t)) {
              set.delete(w);
              w.resolve(t);
            }
          }
          if (set.size === 0) this.watches.delete(t.taskArn!);
        }
        for (const f of out.failures ?? []) {
          const set = this.watches.get(f.arn ?? '');
          if (!set) continue;
          // DescribeTasks is eventually consistent right after RunTask: wait it out (MISSING_TOLERATED_MS).
          const now = this.clock.now();
          for (const w of [...set].filter(answers)) {
            w.missingSince ??= now;
            if (missingForTooLong(w.missingSince, now)) {
              set.delete(w);
              w.reject(new StartFailure('TASK_STOPPED', `task ${f.arn} is unknown to ECS (${f.reason ?? 'MISSING'})`));
            }
          }
          if (set.size === 0) this.watches.delete(f.arn ?? '');
        }
      }),
    );
  }
}

/** Reports stages in order (never backwards), times them for the observer. */
export function stageTracker(req: StartRequest, clock: Clock, observer: EcsObserver | undefined) {
  let current: StartStage | undefined;
  let since = clock.now();
  const t0 = since;
  let lastPosition: number | undefined;
  return {
    get current() {
      return current;
    },
    to(stage: StartStage, queuePosition?: number): void {
      if (current !== undefined && START_STAGES.indexOf(stage) < START_STAGES.indexOf(current)) return;
      if (stage === current && (stage !== 'queued' || queuePosition === lastPosition)) return;
      const now = clock.now();
      if (current !== undefined && current !== stage) observer?.stage(current, (now - since) / 1000);
      if (current !== stage) since = now;
      current = stage;
      lastPosition = queuePosition;
      if (stage === 'ready') observer?.stage('ready', (now - t0) / 1000);
      try {
        req.onStage(stage === 'queued' && queuePosition !== undefined ? { stage, queuePosition } : { stage });
      } catch {
        /* onStage must not throw; a faulty listener must not fail the start */
      }
    },
  };
}

