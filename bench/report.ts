// Output of the runner: one Markdown table per scenario (system x figure), the targets met or missed,
// and a hand-written SVG bar chart of throughput and latency by system.
import type { ScenarioResult } from './result.js';

const fmt = (v: number) => (!Number.isFinite(v) ? 'n/a' : Math.abs(v) >= 100 ? String(Math.round(v)) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(3).replace(/\.?0+$/, '') || '0');

export function table(r: ScenarioResult): string {
  const lines: string[] = [`### ${r.scenario}`, ''];
  const names: string[] = [];
  const units = new Map<string, string>();
  for (const s of r.systems) for (const f of s.figures) if (!names.includes(f.name)) { names.push(f.name); units.set(f.name, f.unit); }
  if (r.systems.length) {
    lines.push(`| system | ${names.map((n) => `${n} (${units.get(n)})`).join(' | ')} |`);
    lines.push(`|---|${names.map(() => '---:').join('|')}|`);
    for (const s of r.systems) {
      lines.push(`| ${s.system} | ${names.map((n) => { const f = s.figures.find((x) => x.name === n); return f ? fmt(f.value) : ''; }).join(' | ')} |`);
    }
    lines.push('');
  }
  if (r.targets.length) {
    lines.push('| target | value | limit | result |', '|---|---:|---:|---|');
    for (const t of r.targets) lines.push(`| ${t.name} | ${fmt(t.value)} ${t.unit} | ${t.op} ${fmt(t.limit)} ${t.unit} | ${t.met ? 'met' : '**MISSED**'} |`);
    lines.push('');
  }
  for (const n of r.notes) lines.push(`- ${n}`);
  if (r.notes.length) lines.push('');
  return lines.join('\n');
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const COLORS: Record<string, string> = { direct: '#7f8c8d', nginx: '#27ae60', chp: '#e67e22', gateway: '#2980b9', 'gw-metrics-off': '#5dade2', 'gw-bare': '#aed6f1' };

/** Panels of horizontal bars, one per (scenario, figure) worth charting, one bar per system. */
export function svg(results: ScenarioResult[], title: string): string {
  const wanted = ['rps', 'p99', 'CPU/req', 'added p50', 'added p99', 'msg/s', 'echo p99', 'idle mem/conn'];
  const panels: Array<{ label: string; unit: string; bars: Array<{ system: string; value: number }> }> = [];
  for (const r of results) {
    for (const name of wanted) {
      const bars = r.systems.flatMap((s) => s.figures.filter((f) => f.name === name && Number.isFinite(f.value)).map((f) => ({ system: s.system, value: f.value, unit: f.unit })));
      if (bars.length) panels.push({ label: `${r.scenario.split(' ')[0]} ${name}`, unit: bars[0].unit, bars });
    }
  }
  const W = 520; const barH = 16; const pad = 8; const labelW = 120; const cols = 2;
  const panelH = (p: (typeof panels)[number]) => 28 + p.bars.length * (barH + 4) + pad;
  const rowsH: number[] = [];
  for (let i = 0; i < panels.length; i += cols) rowsH.push(Math.max(...panels.slice(i, i + cols).map(panelH)));
  const height = 40 + rowsH.reduce((a, b) => a + b, 0) + 10;
  const out: string[] = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W * cols}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="#fff"/>`, `<text x="10" y="22" font-size="14" font-weight="bold">${esc(title)}</text>`];
  let y = 40;
  for (let row = 0; row * cols < panels.length; row++) {
    for (let c = 0; c < cols; c++) {
      const p = panels[row * cols + c];
      if (!p) continue;
      const x0 = c * W + 10;
      const max = Math.max(...p.bars.map((b) => Math.abs(b.value)), 1e-9);
      out.push(`<text x="${x0}" y="${y + 14}" font-weight="bold">${esc(p.label)} (${esc(p.unit)})</text>`);
      p.bars.forEach((b, i) => {
        const by = y + 22 + i * (barH + 4);
        const w = Math.max(1, (Math.abs(b.value) / max) * (W - labelW - 90));
        out.push(`<text x="${x0}" y="${by + 12}">${esc(b.system)}</text>`,
          `<rect x="${x0 + labelW}" y="${by}" width="${w.toFixed(1)}" height="${barH}" fill="${COLORS[b.system] ?? '#95a5a6'}"/>`,
          `<text x="${(x0 + labelW + w + 4).toFixed(1)}" y="${by + 12}">${esc(fmt(b.value))}</text>`);
      });
    }
    y += rowsH[row];
  }
  out.push('</svg>');
  return out.join('\n');
}
