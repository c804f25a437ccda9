// Debian's Firefox ESR, driven over WebDriver BiDi (W3C), its own remote protocol. playwright-core
// 1.65 speaks BiDi to Firefox too, but its new context sends emulation.setMediaFeaturesOverride,
// which Firefox ESR 153 does not know; the few commands a test needs are spoken here instead.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';

export const FIREFOX = '/usr/bin/firefox-esr';

export interface Firefox {
  /** Loads `url` in the one tab and waits for its load event. */
  goto(url: string): Promise<void>;
  /** Runs `expression` in the tab (a promise is awaited) and returns its JSON-able value. */
  evaluate(expression: string): Promise<unknown>;
  close(): Promise<void>;
}

interface BidiValue { type: string; value?: unknown }

/**
 * Starts Firefox headless in a profile of its own. `localDomains` resolve to this machine
 * (`network.dns.localDomains`, exact names), IPv4 only, as the test servers listen on 127.0.0.1;
 * certificates are not checked (acceptInsecureCerts), as the test's own are self-signed.
 */
export async function launchFirefox(localDomains: readonly string[]): Promise<Firefox> {
  const profile = mkdtempSync(join(tmpdir(), 'wsgw-firefox-'));
  const prefs: Record<string, string | boolean> = {
    'network.dns.localDomains': localDomains.join(','),
    'network.dns.disableIPv6': true,
    // JSON opens in a plain document, as in Chromium: a fetch from a page shown in Firefox's JSON
    // viewer failed with a NetworkError before it left the browser.
    'devtools.jsonview.enabled': false,
  };
  writeFileSync(join(profile, 'user.js'), Object.entries(prefs).map(([k, v]) => `user_pref(${JSON.stringify(k)}, ${JSON.stringify(v)});\n`).join(''));
  const child: ChildProcess = spawn(FIREFOX, ['--headless', '--no-remote', '--profile', profile, '--remote-debugging-port', '0'], { stdio: ['ignore', 'ignore', 'pipe'] });
  const gone = () => { child.kill('SIGKILL'); rmSync(profile, { recursive: true, force: true }); };
  try {
    const endpoint = await new Promise<string>((resolve, reject) => {
      let said = '';
      const timer = setTimeout(() => reject(new Error(`Firefox named no BiDi endpoint in 30 s: ${said}`)), 30_000);
      const onData = (d: string) => {
        said += d;
        const m = /WebDriver BiDi listening on (ws:\/\/\S+)/.exec(said);
        // Found: stderr is still drained (resume), but no longer kept.
        if (m) { clearTimeout(timer); child.stderr!.off('data', onData).resume(); resolve(m[1]); }
      };
      child.stderr!.setEncoding('utf8').on('data', onData);
      child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`Firefox exited (${code}): ${said}`)); });
    });
    const ws = new WebSocket(`${endpoint}/session`);
    await new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()); ws.once('error', reject); });
    let lastId = 0;
    const waiting = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
    ws.on('message', (data) => {
      const m = JSON.parse(String(data)) as { id?: number; type: string; result?: unknown; error?: string; message?: string };
      const w = m.id === undefined ? undefined : waiting.get(m.id);
      if (!w) return;
      waiting.delete(m.id!);
      if (m.type === 'error') w.reject(new Error(`${m.error}: ${m.message}`)); else w.resolve(m.result);
    });
    const send = <T>(method: string, params: object) => new Promise<T>((resolve, reject) => {
      const id = ++lastId;
      waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
      ws.send(JSON.stringify({ id, method, params }));
    });
    await send('session.new', { capabilities: { alwaysMatch: { acceptInsecureCerts: true } } });
    const tree = await send<{ contexts: Array<{ context: string }> }>('browsingContext.getTree', {});
    const context = tree.contexts[0].context;
    return {
      goto: async (url) => { await send('browsingContext.navigate', { context, url, wait: 'complete' }); },
      evaluate: async (expression) => {
        const r = await send<{ type: string; result?: BidiValue; exceptionDetails?: { text: string } }>('script.evaluate', { expression, target: { context }, awaitPromise: true });
        if (r.type === 'exception') throw new Error(`in the page: ${r.exceptionDetails?.text}`);
        return r.result?.value;
      },
      close: async () => {
        await send('session.end', {}).catch(() => undefined);
        ws.close();
        gone();
      },
    };
  } catch (err) {
    gone();
    throw err;
  }
}
