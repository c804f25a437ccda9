// A real Prometheus (Debian's /usr/bin/prometheus) for tests: its own temp config and data dir,
// web on a free loopback port, scraping the given targets every second. Values are read back
// through the HTTP query API (https://prometheus.io/docs/prometheus/latest/querying/api/).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './redis.js';

export const PROMETHEUS = '/usr/bin/prometheus';
export const PROMTOOL = '/usr/bin/promtool';

export interface Sample { metric: Record<string, string>; value: number }

export interface TestPrometheus {
  url: string;
  /** An instant query; every sample of the vector result. */
  query(expr: string): Promise<Sample[]>;
  /** Polls `query` until `accept` holds (bounded); returns the accepted samples. */
  waitFor(expr: string, accept: (s: Sample[]) => boolean, timeoutMs?: number): Promise<Sample[]>;
  close(): Promise<void>;
}

export interface ScrapeTarget { address: string; labels: Record<string, string> }

export async function startPrometheus(targets: ScrapeTarget[]): Promise<TestPrometheus> {
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-prom-'));
  const config = [
    'global:',
    '  scrape_interval: 1s',
    '  scrape_timeout: 1s',
    '  evaluation_interval: 1s',
    'scrape_configs:',
    '  - job_name: workspace-gateway',
    '    static_configs:',
    ...targets.flatMap((t) => [
      `      - targets: ['${t.address}']`,
      '        labels:',
      ...Object.entries(t.labels).map(([k, v]) => `          ${k}: '${v}'`),
    ]),
    '',
  ].join('\n');
  writeFileSync(join(dir, 'prometheus.yml'), config);
  const port = await freePort();
  const child: ChildProcess = spawn(PROMETHEUS, [
    `--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`,
    `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn', '--storage.tsdb.retention.time=1h',
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => { stderr = (stderr + c.toString()).slice(-4000); });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const url = `http://127.0.0.1:${port}`;

  const close = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
    rmSync(dir, { recursive: true, force: true });
  };

  // Ready once the TSDB is open and the web server answers (/-/ready); bounded, and fails fast if it exits.
  const deadline = Date.now() + 30_000;
  let dead = false;
  void exited.then(() => { dead = true; });
  for (;;) {
    if (dead) { await close(); throw new Error(`prometheus exited: ${stderr}`); }
    const ok = await fetch(`${url}/-/ready`).then((r) => r.ok, () => false);
    if (ok) break;
    if (Date.now() > deadline) { await close(); throw new Error(`prometheus not ready: ${stderr}`); }
    await new Promise((r) => setTimeout(r, 100));
  }

  async function query(expr: string): Promise<Sample[]> {
    const r = await fetch(`${url}/api/v1/query?query=${encodeURIComponent(expr)}`);
    const body = await r.json() as { status: string; error?: string; data?: { resultType: string; result: Array<{ metric: Record<string, string>; value: [number, string] }> } };
    if (body.status !== 'success') throw new Error(`query ${expr}: ${body.error}`);
    return (body.data?.result ?? []).map((s) => ({ metric: s.metric, value: Number(s.value[1]) }));
  }

  async function waitFor(expr: string, accept: (s: Sample[]) => boolean, timeoutMs = 20_000): Promise<Sample[]> {
    const end = Date.now() + timeoutMs;
    let last: Sample[] = [];
    for (;;) {
      last = await query(expr);
      if (accept(last)) return last;
      if (Date.now() > end) throw new Error(`${expr}: not accepted in time, last ${JSON.stringify(last)}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  return { url, query, waitFor, close };
}

/** `promtool check metrics` on an exposition text: exit status and everything it printed. */
export function promtoolCheckMetrics(exposition: string): { status: number | null; output: string } {
  const r = spawnSync(PROMTOOL, ['check', 'metrics'], { input: exposition, encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, output: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}
