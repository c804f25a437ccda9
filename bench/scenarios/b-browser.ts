// What a browser does with a workspace page load, step by step, as the gateway's starting page
// script does it (gateway/pages.ts): GET the page as a navigation; if the starting page comes back,
// read its embedded status and long-poll /__gateway/status?wait=1 with what it knows until the state
// is running, then load the page again. An error page is what a person would see: they press reload
// after a second (bounded). Each simulated browser has its own keep-alive connections.
import http from 'node:http';

export const NAVIGATE = { 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document', 'sec-fetch-site': 'none', accept: 'text/html,application/xhtml+xml,*/*;q=0.8' };
export const FETCH = { 'sec-fetch-mode': 'cors', 'sec-fetch-dest': 'empty', 'sec-fetch-site': 'same-origin', accept: '*/*' };

interface Resp { status: number; headers: http.IncomingHttpHeaders; body: string }

function get(agent: http.Agent, port: number, host: string, path: string, headers: Record<string, string>, timeoutMs: number): Promise<Resp> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, agent, setHost: false, headers: { host, ...headers }, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

export interface PageLoadResult {
  ok: boolean;
  /** Epoch ms the workspace's own page arrived. */
  servedAt?: number;
  /** Epoch ms the status long-poll first said running. */
  runningSeenAt?: number;
  /** Navigations made (1 = straight through, 2 = starting page then the workspace). */
  navigations: number;
  polls: number;
  /** Error codes (x-gateway-error, or transport errors) met along the way. */
  errors: string[];
  finalState?: string;
}

export interface PageLoadOptions {
  port: number;
  host: string;
  cookie: string;
  deadlineMs: number;
  /** Most reloads after an error page before giving up. */
  maxReloads?: number;
}

/** One simulated page load, until the workspace's own page is served, it fails, or the deadline. */
export async function pageLoad(o: PageLoadOptions): Promise<PageLoadResult> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 6 });
  const end = Date.now() + o.deadlineMs;
  const r: PageLoadResult = { ok: false, navigations: 0, polls: 0, errors: [] };
  const left = () => Math.max(1, end - Date.now());
  let reloads = 0;
  try {
    navigation: while (Date.now() < end) {
      r.navigations++;
      let page: Resp;
      try {
        page = await get(agent, o.port, o.host, '/', { ...NAVIGATE, cookie: o.cookie }, left());
      } catch (err) {
        r.errors.push(`transport:${(err as Error).message}`);
        if (++reloads > (o.maxReloads ?? 5)) break;
        await new Promise((res) => setTimeout(res, Math.min(1000, left())));
        continue;
      }
      const gatewayState = page.headers['x-gateway-state'];
      const errorCode = page.headers['x-gateway-error'];
      if (page.status === 200 && gatewayState === undefined && errorCode === undefined) {
        r.ok = true;
        r.servedAt = Date.now();
        r.finalState = 'running';
        return r;
      }
      if (page.status !== 200 || gatewayState === undefined) {
        r.errors.push(String(errorCode ?? `http_${page.status}`));
        if (++reloads > (o.maxReloads ?? 5)) break;
        await new Promise((res) => setTimeout(res, Math.min(1000, left())));
        continue;
      }
      // The starting page: its script holds the status it was rendered with (`var st={...},S=`).
      const m = /var st=(\{.*?\}),S=/.exec(page.body);
      let st = m ? (JSON.parse(m[1]) as { state: string; generation: number; stage?: string }) : { state: String(gatewayState), generation: 0 };
      if (st.state === 'running') continue navigation;
      while (Date.now() < end) {
        r.polls++;
        let res: Resp;
        try {
          res = await get(agent, o.port, o.host, `/__gateway/status?wait=1&generation=${st.generation}&stage=${st.stage ?? ''}&state=${st.state}`, { ...FETCH, cookie: o.cookie }, left());
        } catch (err) {
          // The page script retries a failed poll after 2 s.
          r.errors.push(`poll:${(err as Error).message}`);
          await new Promise((res2) => setTimeout(res2, Math.min(2000, left())));
          continue;
        }
        if (res.status === 401) continue navigation;
        if (res.status !== 200) {
          r.errors.push(String(res.headers['x-gateway-error'] ?? `poll_http_${res.status}`));
          await new Promise((res2) => setTimeout(res2, Math.min(2000, left())));
          continue;
        }
        st = JSON.parse(res.body) as typeof st;
        if (st.state === 'running') { r.runningSeenAt ??= Date.now(); continue navigation; }
        if (st.state === 'failed') { r.finalState = 'failed'; r.errors.push(`failed:${(st as { reasonCode?: string }).reasonCode ?? ''}`); return r; }
      }
    }
    r.finalState ??= 'timeout';
    return r;
  } finally {
    agent.destroy();
  }
}
