// Debian's WebKitGTK (the engine Safari is built on), driven over W3C WebDriver by its own driver,
// WebKitWebDriver. Its browser, MiniBrowser, has no headless mode, so each launch gets an X server
// of its own (Xvfb). `*.localhost` resolves to loopback here without any setting.
import { spawn, type ChildProcess } from 'node:child_process';
import { freePort } from './redis.js';

export const WEBKIT_DRIVER = '/usr/bin/WebKitWebDriver';
export const MINIBROWSER = '/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser';

export interface WebKitCookie { name: string; value: string; secure?: boolean; httpOnly?: boolean; sameSite?: string }

/** WebDriver's code points for the keys a test needs (W3C WebDriver 17.4.2). */
export const KEYS = { enter: '\uE007', escape: '\uE00C', f1: '\uE031' } as const;

export interface WebKit {
  /** Loads `url` in the one window and waits for its load event. */
  goto(url: string): Promise<void>;
  /** Runs `expression` in the page (a promise is awaited) and returns its JSON-able value. */
  evaluate(expression: string): Promise<unknown>;
  /** The window's address now. */
  url(): Promise<string>;
  /**
   * Types `text` into whatever has the focus, key by key as a person would (W3C WebDriver key
   * actions); WebDriver's code points stand for special keys (`KEYS`).
   */
  type(text: string): Promise<void>;
  /** The cookies the browser holds for the page's address, HttpOnly ones too. */
  cookies(): Promise<WebKitCookie[]>;
  close(): Promise<void>;
}

function stopped(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => { child.once('exit', () => resolve()); child.kill('SIGKILL'); });
}

/** An X server on a display number it picks itself (`-displayfd`), so parallel tests never collide. */
async function startXvfb(): Promise<{ display: string; child: ChildProcess }> {
  const child = spawn('Xvfb', ['-displayfd', '3', '-screen', '0', '1280x800x24', '-nolisten', 'tcp'], { stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
  child.stderr!.resume();
  try {
    const display = await new Promise<string>((resolve, reject) => {
      let said = '';
      const timer = setTimeout(() => reject(new Error('Xvfb named no display in 10 s')), 10_000);
      (child.stdio[3] as NodeJS.ReadableStream).setEncoding('utf8');
      (child.stdio[3] as NodeJS.ReadableStream).on('data', (d: string) => {
        said += d;
        if (said.includes('\n')) { clearTimeout(timer); resolve(`:${said.trim()}`); }
      });
      child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`Xvfb exited (${code})`)); });
    });
    return { display, child };
  } catch (err) {
    await stopped(child);
    throw err;
  }
}

/** The driver on a free port, answering `/status`. Another process can take that port first: then it exits, and we try again. */
async function startDriver(display: string): Promise<{ base: string; child: ChildProcess }> {
  let last = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const child = spawn(WEBKIT_DRIVER, [`--port=${port}`], { env: { ...process.env, DISPLAY: display }, stdio: ['ignore', 'ignore', 'pipe'] });
    let said = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { if (said.length < 4096) said += d; });
    const base = `http://127.0.0.1:${port}`;
    for (const deadline = Date.now() + 10_000; Date.now() < deadline && child.exitCode === null;) {
      const ready = await fetch(`${base}/status`).then((r) => r.ok, () => false);
      // Ours only if it is still running: another process on that port could answer too.
      if (ready && child.exitCode === null) return { base, child };
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    last = `WebKitWebDriver on ${port} did not answer (exit ${child.exitCode}): ${said}`;
    await stopped(child);
  }
  throw new Error(last);
}

/**
 * Starts MiniBrowser under WebKitWebDriver in an X server of its own. Certificates are not
 * checked (acceptInsecureCerts), as the tests' own are self-signed.
 */
export async function launchWebKit(): Promise<WebKit> {
  const x = await startXvfb();
  let driver: { base: string; child: ChildProcess } | undefined;
  const gone = async () => { if (driver) await stopped(driver.child); await stopped(x.child); };
  try {
    driver = await startDriver(x.display);
    const { base } = driver;
    const call = async <T>(method: string, path: string, body?: object): Promise<T> => {
      const r = await fetch(`${base}${path}`, { method, headers: { 'content-type': 'application/json' }, body: body && JSON.stringify(body) });
      const answer = (await r.json()) as { value: T & { error?: string; message?: string } };
      if (!r.ok) throw new Error(`WebDriver ${method} ${path}: ${answer.value?.error}: ${answer.value?.message}`);
      return answer.value;
    };
    const session = await call<{ sessionId: string }>('POST', '/session', {
      capabilities: { alwaysMatch: { acceptInsecureCerts: true, 'webkitgtk:browserOptions': { binary: MINIBROWSER, args: ['--automation'] } } },
    });
    const s = `/session/${session.sessionId}`;
    return {
      goto: async (url) => { await call('POST', `${s}/url`, { url }); },
      // The last argument of an async script is its callback; a rejection comes back as its text.
      evaluate: async (expression) => {
        const r = await call<{ ok: boolean; value?: unknown; error?: string }>('POST', `${s}/execute/async`, {
          script: `const done = arguments[arguments.length - 1];
            Promise.resolve().then(() => (${expression})).then((value) => done({ ok: true, value }), (e) => done({ ok: false, error: String(e) }));`,
          args: [],
        });
        if (!r.ok) throw new Error(`in the page: ${r.error}`);
        return r.value;
      },
      url: () => call<string>('GET', `${s}/url`),
      type: async (text) => {
        const actions = [...text].flatMap((value) => [{ type: 'keyDown', value }, { type: 'keyUp', value }]);
        await call('POST', `${s}/actions`, { actions: [{ type: 'key', id: 'keyboard', actions }] });
      },
      cookies: () => call<WebKitCookie[]>('GET', `${s}/cookie`),
      close: async () => {
        await call('DELETE', s).catch(() => undefined);
        await gone();
      },
    };
  } catch (err) {
    await gone();
    throw err;
  }
}
