// The operator's side of issue 6: the alert rules pass `promtool check rules` and their own
// `promtool test rules` unit tests, and every expression in the rules and the Grafana dashboard
// parses as PromQL and names only metrics the gateway really exports.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import t from 'tap';
import { createMetrics } from '../gateway/metrics.js';
import { PROMTOOL } from './helpers/prometheus.js';

const root = resolve(import.meta.dirname, '..', '..');
const RULES = join(root, 'deploy/prometheus/workspace-gateway.rules.yml');
const RULE_TESTS = join(root, 'deploy/prometheus/workspace-gateway.rules.test.yml');
const DASHBOARD = join(root, 'deploy/grafana/workspace-gateway.json');

const promtool = (...args: string[]) => {
  const r = spawnSync(PROMTOOL, args, { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, output: `${r.stdout ?? ''}${r.stderr ?? ''}` };
};

/** Every metric name the gateway exports (histograms also as _bucket/_sum/_count), plus Prometheus's `up`. */
async function exportedNames(): Promise<Set<string>> {
  const m = createMetrics({ enabled: true, defaultMetrics: true });
  const names = new Set(['up']);
  for (const metric of await m.registry.getMetricsAsJSON()) {
    names.add(metric.name);
    if (String(metric.type) === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(metric.name + s);
  }
  m.close();
  return names;
}
const metricNames = (expr: string) => [...expr.matchAll(/\b((?:wsgw|process|nodejs)_[a-z0-9_]+)\b/g)].map((m) => m[1]).concat(/\bup\{/.test(expr) ? ['up'] : []);

t.test('promtool check rules', async (t) => {
  const r = promtool('check', 'rules', RULES);
  t.equal(r.status, 0, r.output);
  t.match(r.output, /SUCCESS: \d+ rules found/);
  t.notMatch(r.output, /warn/i, 'no warnings');
});

t.test('promtool test rules (alert unit tests)', async (t) => {
  const r = promtool('test', 'rules', RULE_TESTS);
  t.equal(r.status, 0, r.output);
  t.match(r.output, /SUCCESS/);
});

t.test('rules name only exported metrics', async (t) => {
  const names = await exportedNames();
  const text = readFileSync(RULES, 'utf8');
  const used = new Set(metricNames(text).filter((n) => !n.startsWith('wsgw:')));
  t.ok(used.size > 10);
  for (const n of used) t.ok(names.has(n), n);
});

t.test("every counter series a rule selects exists at 0 before its first event", async (t) => {
  // increase() and rate() cannot see a series' first sample as an increase: a counter whose series
  // appears only at its first event (1) hides that event, so "BAD_CONFIG pages at once" needed two
  // failures on one replica, and a single NO_CAPACITY never fired. The rule tests start at 0 too.
  const m = createMetrics({ enabled: true, defaultMetrics: false });
  t.teardown(() => m.close());
  const exposition = await m.registry.metrics();
  const text = readFileSync(RULES, 'utf8');
  let checked = 0;
  for (const [, name, matchers] of text.matchAll(/\b(wsgw_[a-z0-9_]+_total)\{([^}]*)\}/g)) {
    for (const [, label, op, values] of matchers.matchAll(/([a-z_]+)(=~|=)"([^"]*)"/g)) {
      for (const value of op === '=~' ? values.split('|') : [values]) {
        checked++;
        t.match(exposition, new RegExp(`^${name}\\{[^}]*\\b${label}="${value}"[^}]*\\} 0$`, 'm'), `${name}{${label}="${value}"} is 0 from the start`);
      }
    }
  }
  t.ok(checked >= 10, `${checked} selected series`);
});

t.test('dashboard: valid JSON, unique panel ids, every query parses and names exported metrics', async (t) => {
  const dash = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { uid: string; panels: Array<{ id: number; type: string; title: string; targets?: Array<{ expr: string }> }> };
  t.equal(dash.uid, 'workspace-gateway');
  const ids = dash.panels.map((p) => p.id);
  t.equal(new Set(ids).size, ids.length, 'unique panel ids');
  const exprs = dash.panels.flatMap((p) => (p.targets ?? []).map((x) => ({ title: p.title, expr: x.expr })));
  t.ok(exprs.length >= 25);
  const names = await exportedNames();
  for (const { title, expr } of exprs) for (const n of metricNames(expr)) t.ok(names.has(n), `${title}: ${n}`);
  // promtool parses PromQL in rule files: wrap each query as a recording rule, Grafana variables substituted.
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-dash-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const concrete = (e: string) => e.replaceAll('$__rate_interval', '1m').replaceAll('$instance', '.*');
  const file = join(dir, 'dashboard-queries.yml');
  writeFileSync(file, `groups:\n  - name: dashboard\n    rules:\n${exprs.map((x, i) => `      - record: dashboard:q${i}\n        expr: ${JSON.stringify(concrete(x.expr))}\n`).join('')}`);
  const r = promtool('check', 'rules', file);
  t.equal(r.status, 0, r.output);
  t.match(r.output, new RegExp(`SUCCESS: ${exprs.length} rules found`));
});
