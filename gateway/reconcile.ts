// Periodic reconcile for provisioners that can compare what runs with what the store says (ECS):
// adopt running tasks the store does not know, mark workspaces whose task is gone as stopped, and
// let the provisioner stop tasks nobody claims (issue 4). Skipped entirely while the store is away:
// an unreadable store must never look like "nothing should run".
import type { Provisioner, RunningWorkspace } from '../provisioner/contract.js';
import type { Logger } from './log.js';
import type { StateStore } from './store/contract.js';
import type { Workspaces } from './workspaces.js';

export type Claim = { state: 'unknown' } | { state: 'stopped' } | { state: 'running' | 'starting'; generation: number };

export interface Reconcilable {
  reconcile(claim: (workspaceId: string) => Promise<Claim>): Promise<{
    adopted: RunningWorkspace[];
    deregistered: Array<{ workspaceId: string; generation?: number; stopCode?: string; reason?: string }>;
    stopped: unknown[];
    errors: string[];
  }>;
}

export function canReconcile(p: object): p is Reconcilable {
  return typeof (p as Partial<Reconcilable>).reconcile === 'function';
}

/**
 * For provisioners without their own reconcile (local): adopt what list() says runs and the store
 * does not know (after Redis came back empty), so nothing runs unmanaged and unreaped.
 */
export function reconcileFromList(provisioner: Provisioner): Reconcilable {
  return {
    async reconcile(claim) {
      const adopted: RunningWorkspace[] = [];
      for (const running of await provisioner.list()) {
        if ((await claim(running.workspaceId)).state === 'unknown') adopted.push(running);
      }
      return { adopted, deregistered: [], stopped: [], errors: [] };
    },
  };
}

export function createReconciler(opts: { provisioner: Reconcilable; store: StateStore; workspaces: Workspaces; log: Logger; intervalMs: number }) {
  const { store, workspaces, log } = opts;
  let running: Promise<void> | undefined;

  async function once(): Promise<void> {
    if (!(await store.ping())) return;
    const summary = await opts.provisioner.reconcile(async (id) => {
      const r = await store.getWorkspace(id);
      if (!r) return { state: 'unknown' };
      if (r.state === 'running' || r.state === 'starting' || r.state === 'stopping') return { state: r.state === 'stopping' ? 'running' : r.state, generation: r.generation };
      return { state: 'stopped' };
    });
    for (const found of summary.adopted) await workspaces.adoptUnknown(found);
    for (const gone of summary.deregistered) {
      await workspaces.markGone(gone.workspaceId, gone.generation, gone.stopCode === 'SpotInterruption' ? 'spot_interruption' : 'gone', gone.reason ?? 'the task stopped');
    }
    if (summary.adopted.length || summary.deregistered.length || summary.stopped.length || summary.errors.length) {
      log.info({ event: 'reconcile', adopted: summary.adopted.length, deregistered: summary.deregistered.length, stopped: summary.stopped.length, errors: summary.errors }, 'reconciled');
    }
  }

  const run = () => (running ??= once().catch((err) => log.warn({ event: 'reconcile.error', err: (err as Error).message }, 'reconcile failed')).finally(() => { running = undefined; }));
  const timer = setInterval(() => { void run(); }, opts.intervalMs);
  timer.unref();
  return { run, async close() { clearInterval(timer); await running; } };
}
