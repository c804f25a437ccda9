// Heap bytes allocated per proxied request (issue 7: added latency at 1,000 req/s). At that rate the
// gateway's young generation filled every 127 ms and each scavenge stopped the event loop for
// 0.2-0.5 ms, so how much a request allocates sets how often a request waits behind the collector.
// Like an instruction count, it is the same from run to run whatever else the machine is doing.
// V8's sampling heap profiler (through the inspector) is asked to keep the samples of objects the
// collector already freed too, so the total is what was allocated, not what is still alive.
// `node dist/bench/allocations.js [requests] [gateway|node-relay ...] [--warmup=N] [--top]`
import { pathToFileURL } from 'node:url';
import WebSocket from 'ws';
import { openClient, runPerRequestCommand, type Launch } from './instructions.js';
import { freePort, sleep } from './lib.js';

/** Fewer than instructions.ts needs: allocation sites settle before V8's optimising does. */
export const WARMUP = 10_000;
export const COUNTED = 5_000;
/** Mean bytes between samples; 128 gives about 200,000 samples over 5,000 gateway requests. */
export const SAMPLING_INTERVAL = 128;

interface ProfileNode { callFrame: { functionName: string; url: string; lineNumber: number }; selfSize: number; children: ProfileNode[] }

/** A minimal Chrome DevTools Protocol client over the inspector's WebSocket. */
async function inspector(port: number) {
  const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json() as Array<{ webSocketDebuggerUrl: string }>;
  const ws = new WebSocket(targets[0].webSocketDebuggerUrl, { perMessageDeflate: false, maxPayload: 1 << 30 });
  await new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()); ws.once('error', reject); });
  let id = 0;
  const waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  ws.on('message', (data) => {
    const m = JSON.parse(data.toString()) as { id?: number; result?: unknown; error?: { message: string } };
    const w = m.id === undefined ? undefined : waiting.get(m.id);
    if (!w) return;
    waiting.delete(m.id!);
    if (m.error) w.reject(new Error(m.error.message)); else w.resolve(m.result);
  });
  return {
    call: <T>(method: string, params: object = {}) => new Promise<T>((resolve, reject) => {
      waiting.set(++id, { resolve: resolve as (v: unknown) => void, reject });
      ws.send(JSON.stringify({ id, method, params }));
    }),
    close: () => new Promise<void>((resolve) => { ws.once('close', () => resolve()); ws.close(); }),
  };
}

/** Bytes allocated by each function (its own allocations), keyed by name and where it is. */
function selfBytes(root: ProfileNode): Map<string, number> {
  const out = new Map<string, number>();
  const walk = (n: ProfileNode) => {
    if (n.selfSize) {
      const f = n.callFrame;
      const where = f.url ? ` ${f.url.replace(/^.*\/(dist|node_modules)\//, '$1/')}:${f.lineNumber + 1}` : '';
      const key = `${f.functionName || '(anonymous)'}${where}`;
      out.set(key, (out.get(key) ?? 0) + n.selfSize);
    }
    for (const c of n.children) walk(c);
  };
  walk(root);
  return out;
}

/** Heap bytes allocated per request by one system: `warmup` requests, then `requests` sampled. */
export async function measureAllocations(start: Launch, requests: number, warmup: number, top = false): Promise<number> {
  const port = await freePort();
  const system = await start([], [`--inspect=127.0.0.1:${port}`]);
  try {
    const client = await openClient(system.port, system.headers);
    await client.run(warmup);
    await sleep(200);
    const devtools = await inspector(port);
    try {
      await devtools.call('HeapProfiler.enable');
      await devtools.call('HeapProfiler.startSampling', { samplingInterval: SAMPLING_INTERVAL, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true });
      await client.run(requests);
      const { profile } = await devtools.call<{ profile: { head: ProfileNode } }>('HeapProfiler.stopSampling');
      client.close();
      const bytes = selfBytes(profile.head);
      const total = [...bytes.values()].reduce((a, b) => a + b, 0);
      if (top) {
        process.stdout.write('bytes per request, by the function that allocated them\n');
        for (const [k, v] of [...bytes].sort((a, b) => b[1] - a[1]).slice(0, 30)) process.stdout.write(`${Math.round(v / requests).toString().padStart(7)}  ${k}\n`);
      }
      return total / requests;
    } finally {
      await devtools.close();
    }
  } finally {
    await system.close();
  }
}

// A command of its own, and a module the full benchmark imports (scenarios/instructions.ts).
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  void runPerRequestCommand(measureAllocations, { warmup: WARMUP, requests: COUNTED }, 'heap bytes allocated per request');
}
