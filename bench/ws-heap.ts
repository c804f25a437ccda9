// Where an idle WebSocket's memory goes in the gateway (issue 7: "where a target is missed, profile"):
// starts the bench upstream and the gateway as the benchmark does, opens a few sockets and closes them
// (warm-up), takes a heap snapshot, opens `count` idle sockets, takes another, and prints the heap
// growth per socket pair grouped by object type. `--bare` measures a bare node:http relay instead
// (upgrade, then one data listener per socket): the floor of any Node proxy.
//
//   npm run build && node dist/bench/ws-heap.js [count] [--bare]
import { mkdtempSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startGateway, startGatewayState, startUpstream, workDir } from './field.js';
import { LOAD_CPU, PROXY_CPU, sleep, start, stopAll, waitLine } from './lib.js';

const BARE_RELAY = `const http=require('http');const up=+process.argv[1];
const srv=http.createServer((q,s)=>s.end());
srv.on('upgrade',(req,sock)=>{const o=http.request({host:'127.0.0.1',port:up,path:req.url,headers:req.headers,agent:false});
o.on('upgrade',(res,u)=>{let h='HTTP/1.1 101 Switching Protocols\\r\\n';for(const[k,v]of Object.entries(res.headers))h+=k+': '+v+'\\r\\n';sock.write(h+'\\r\\n');
const f=(a,b)=>{a.on('data',(c)=>{if(!b.write(c)){a.pause();b.once('drain',()=>a.resume())}});a.on('end',()=>b.end());a.on('error',()=>b.destroy());a.on('close',()=>b.destroy())};f(u,sock);f(sock,u)});
o.on('error',()=>sock.destroy());o.end()});
srv.listen(0,'127.0.0.1',()=>console.log(JSON.stringify({event:'listening',gatewayPort:srv.address().port})))`;

interface Snapshot { snapshot: { meta: { node_fields: string[]; node_types: [string[]] } }; nodes: number[]; strings: string[] }

/** Self size and count per "type:constructor" (strings lumped together). */
function byType(file: string): { total: number; groups: Map<string, [count: number, bytes: number]> } {
  const h = JSON.parse(readFileSync(file, 'utf8')) as Snapshot;
  const f = h.snapshot.meta.node_fields;
  const types = h.snapshot.meta.node_types[0];
  const [ti, ni, si] = [f.indexOf('type'), f.indexOf('name'), f.indexOf('self_size')];
  const groups = new Map<string, [number, number]>();
  let total = 0;
  for (let i = 0; i < h.nodes.length; i += f.length) {
    const type = types[h.nodes[i + ti]];
    const key = `${type}:${type.includes('string') ? '' : h.strings[h.nodes[i + ni]].slice(0, 60)}`;
    const g = groups.get(key) ?? [0, 0];
    g[0]++;
    g[1] += h.nodes[i + si];
    groups.set(key, g);
    total += h.nodes[i + si];
  }
  return { total, groups };
}

async function main() {
  const count = Number(process.argv.slice(2).find((a) => /^\d+$/.test(a)) ?? 3000);
  const bare = process.argv.includes('--bare');
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-heap-'));
  const flags = ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${dir}`];
  try {
    const up = await startUpstream();
    let target: { pid: number; port: number; host: string; headers: Record<string, string> };
    if (bare) {
      const child = start(process.execPath, [...flags, '-e', BARE_RELAY, String(up.port)], { cpu: PROXY_CPU });
      const port = await waitLine(child, (l) => { try { return (JSON.parse(l) as { gatewayPort?: number }).gatewayPort; } catch { return undefined; } }, 10_000, 'bare relay');
      target = { pid: child.pid!, port, host: 'bare.localhost', headers: {} };
    } else {
      target = await startGateway(await startGatewayState(up, workDir()), 'gateway', {}, flags);
    }
    const snapshot = async (): Promise<string> => {
      const before = readdirSync(dir).length;
      process.kill(target.pid, 'SIGUSR2');
      for (;;) {
        await sleep(500);
        const files = readdirSync(dir).filter((f) => f.endsWith('.heapsnapshot')).sort();
        if (files.length <= before) continue;
        const file = join(dir, files[files.length - 1]);
        // Written when its size stops changing.
        for (let last = -1; ; await sleep(700)) { const size = statSync(file).size; if (size > 0 && size === last) return file; last = size; }
      }
    };
    const loadgen = fileURLToPath(new URL('./loadgen.js', import.meta.url));
    const open = async (n: number) => {
      const child = start(process.execPath, [loadgen, JSON.stringify({ mode: 'ws-idle', port: target.port, host: target.host, headers: target.headers, durationMs: 600_000, connections: n })], { cpu: LOAD_CPU, stdio: ['pipe', 'pipe', 'inherit'] });
      const opened = await new Promise<string>((resolve) => child.stdout!.once('data', (d) => resolve(String(d).trim())));
      return { opened, close: () => { child.stdin!.end(); child.kill(); } };
    };
    const warm = await open(200);
    await sleep(1000);
    warm.close();
    await sleep(2000);
    const a = byType(await snapshot());
    const idle = await open(count);
    process.stdout.write(`${bare ? 'bare relay' : 'gateway'}: ${idle.opened}\n`);
    await sleep(3000);
    const b = byType(await snapshot());
    idle.close();
    process.stdout.write(`heap per idle WebSocket pair: ${((b.total - a.total) / count).toFixed(0)} B\n`);
    const rows: Array<[string, number, number]> = [];
    for (const [k, [n, bytes]] of b.groups) {
      const [n0, bytes0] = a.groups.get(k) ?? [0, 0];
      if (bytes - bytes0 > count * 16) rows.push([k, (n - n0) / count, (bytes - bytes0) / count]);
    }
    for (const [k, n, bytes] of rows.sort((x, y) => y[2] - x[2]).slice(0, 30)) {
      process.stdout.write(`${bytes.toFixed(0).padStart(6)} B  ${n.toFixed(2).padStart(6)} x  ${k}\n`);
    }
  } finally {
    await stopAll();
  }
}

main().then(() => process.exit(0), async (err) => { process.stderr.write(`${(err as Error).stack}\n`); await stopAll(); process.exit(1); });
