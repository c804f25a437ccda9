// The short soak (issue 8): bench/soak.ts for 30 s in npm test. Churn of WebSockets, workspaces,
// killed workspace processes, upgrade-then-reset clients and one Redis restart; at the end sockets,
// handles and file descriptors back to baseline and heap growth under 5 MB after a forced GC.
import t from 'tap';
import { runSoak } from '../bench/soak.js';

t.test('30 s soak: back to baseline, no heap growth, gateway still serving', async (t) => {
  const lines: string[] = [];
  const r = await runSoak({ durationMs: 30_000, log: (l) => { lines.push(l); t.comment(l); } });
  t.same(r.problems, [], 'no leak, no crash');
  t.ok(r.ops['ws.message'] > 0 && (r.ops['workspace.start'] ?? 0) > 0 && r.ops['redis.restart'] === 1, `churn happened: ${JSON.stringify(r.ops)}`);
});
