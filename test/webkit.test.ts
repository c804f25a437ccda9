// In WebKit, Safari's engine (Debian's WebKitGTK under its own WebDriver): a student signs in
// through the handoff link, sees the starting page, lands in the workspace and its WebSocket works
// through the gateway; a classmate's page cannot use the workspace's cookie (issue 2, issue 3); the
// real code-server's workbench runs, and what the student types is activity, an idle tab is not
// (issue 5).
import t from 'tap';
import { loginUrl, startTestGateway, until } from './helpers/gateway.js';
import { checkSiblingAttackRefused } from './helpers/sibling-attack.js';
import { startHttpsFront, startSiblings } from './helpers/tls-front.js';
import { KEYS, launchWebKit, type WebKit } from './helpers/webkit.js';

// Regression: the cookie was `__Host-` and Secure over http too, which Chromium and Firefox keep on
// *.localhost; WebKit dropped it, so `npm start`'s link led back to "Sign in" in Safari's engine.
t.test('demo workspace in WebKit over http: sign in, starting page, workspace, WebSocket round trip', async (t) => {
  const gw = await startTestGateway({ env: { DEMO_READY_DELAY: '1500ms' } });
  const webkit = await launchWebKit();
  t.teardown(async () => { await webkit.close(); await gw.close(); });
  await webkit.goto(await loginUrl(gw.adminPort, 'demo'));
  t.match(await webkit.evaluate('document.body.innerText'), /Starting your workspace/, 'the starting page is shown');
  t.equal(await webkit.url(), `http://ws-demo.localhost:${gw.port}/`, 'the token is gone from the address bar');
  const session = (await webkit.cookies()).find((c) => c.name === 'wsgw-session');
  t.ok(session, 'the session cookie was kept');
  t.equal(session?.httpOnly, true);
  t.equal(session?.secure, false);
  t.equal(session?.sameSite, 'Lax');
  await until(async () => /round trip ok/.test(String(await webkit.evaluate("document.querySelector('#ws')?.innerText ?? ''"))), 30_000, 100);
  t.match(await webkit.evaluate("document.querySelector('h1').innerText"), /Demo workspace/);
  t.match(await webkit.evaluate("document.querySelector('#log').innerText"), /echo: ping/, 'a WebSocket message went there and back through the gateway');
  t.equal(gw.provisioner.starts.length, 1);
});

t.test("WebKit over https: a classmate's page cannot use a workspace's cookie; a link from it still opens the workspace", async (t) => {
  // *.localhost reaches this machine in WebKit with no setting; under it, ws.localhost is the site.
  const BASE = 'ws.localhost';
  const siblings = await startSiblings(BASE);
  const webkit = await launchWebKit();
  t.teardown(async () => { await webkit.close(); await siblings.close(); });
  await checkSiblingAttackRefused(t, webkit, siblings, BASE);
  t.ok((await webkit.cookies()).some((c) => c.name === '__Host-wsgw-session' && c.secure), "the victim's cookie is `__Host-` and Secure");
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The command palette's way to a terminal, tried again while the workbench is still taking its parts in. */
async function openTerminal(webkit: WebKit): Promise<void> {
  const focused = () => webkit.evaluate("document.activeElement?.classList.contains('xterm-helper-textarea') ?? false");
  for (let attempt = 0; attempt < 4 && !(await focused()); attempt++) {
    await webkit.type(KEYS.escape);
    await webkit.type(KEYS.f1);
    await until(() => webkit.evaluate("!!document.querySelector('.quick-input-widget input')"), 15_000, 250).catch(() => undefined);
    await webkit.type('Terminal: Create New Terminal');
    await sleep(1_000);
    await webkit.type(KEYS.enter);
    await until(focused, 20_000, 250).catch(() => undefined);
  }
  if (!(await focused())) throw new Error(`no terminal took the keys; on top: ${String(await webkit.evaluate("document.querySelector('.notifications-toasts, .monaco-dialog-box, .quick-input-widget')?.innerText ?? ''")).slice(0, 300)}`);
}

t.test('the real code-server in WebKit over https: the workbench, its WebSockets with a small window, typing is activity and an idle tab is not', async (t) => {
  const BASE = 'ws.localhost';
  let gatewayPort = 0;
  const front = await startHttpsFront(BASE, () => gatewayPort);
  const gw = await startTestGateway({
    env: { BASE_DOMAIN: BASE, PUBLIC_SCHEME: 'https', PUBLIC_PORT: String(front.port), LOCAL_WORKSPACE: 'code-server', START_DEADLINE: '120s', ACTIVITY_FLUSH_INTERVAL: '1s' },
  });
  gatewayPort = gw.port;
  const webkit = await launchWebKit();
  t.teardown(async () => { await webkit.close(); await gw.close(); await front.close(); });

  await webkit.goto(await loginUrl(gw.adminPort, 'safari'));
  await until(() => webkit.evaluate("!!document.querySelector('.monaco-workbench .part.statusbar')"), 120_000, 500);
  t.pass('the workbench rendered');
  await until(() => gw.gateway.openWebSockets() >= 2, 30_000, 250);
  t.pass('its two WebSockets run through the gateway');
  // WebKit offers client_max_window_bits, so it is asked for the small window the decoder reads
  // VS Code's messages in (RFC 7692 7.1.2.2, gateway/activity/README.md).
  const upgrades = front.answers().filter((head) => head.startsWith('HTTP/1.1 101'));
  t.ok(upgrades.length >= 2, `101 answers: ${upgrades.length}`);
  for (const head of upgrades) t.match(head, /\r\nsec-websocket-extensions: permessage-deflate; client_max_window_bits=12(\r\n|$)/i);

  await openTerminal(webkit);
  // Nobody types. The workbench may still fetch what the terminal needs (a request for content is
  // activity), so first wait for 10 s without any; VS Code's keep-alives (every 5 s on each socket),
  // acks and latency pings go on all the while, and must not count, or no such quiet comes.
  let quietSince = Date.now();
  let before = await gw.store.getActivity('safari');
  await until(async () => {
    const at = await gw.store.getActivity('safari');
    if (at !== before) { before = at; quietSince = Date.now(); }
    return Date.now() - quietSince >= 10_000;
  }, 60_000, 500);
  await sleep(20_000);
  t.equal(await gw.store.getActivity('safari'), before, 'an open, untouched workbench is not activity');
  // The student types a command, key by key.
  const typedAt = Date.now();
  await webkit.type(`echo typed-in-webkit${KEYS.enter}`);
  const after = await until(async () => { const at = await gw.store.getActivity('safari'); return at !== undefined && at >= typedAt - 1_000 ? at : undefined; }, 10_000, 250);
  t.ok(after, 'what the student types is activity');
  t.equal(gw.provisioner.starts.length, 1);
});
