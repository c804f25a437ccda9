// In headless Chromium (Debian's, driven by playwright-core): sign in through the handoff link, see
// the starting page, land in the workspace, and see its WebSockets work through the gateway; then
// the same with the real code-server's VS Code workbench (issue 2, issue 3).
import t from 'tap';
import { launchChromium, watchWebSockets } from './helpers/browser.js';
import { loginUrl, startTestGateway } from './helpers/gateway.js';

t.test('demo workspace in Chromium: sign in, starting page, workspace, WebSocket round trip', async (t) => {
  const gw = await startTestGateway({ env: { DEMO_READY_DELAY: '1500ms' } });
  const browser = await launchChromium();
  t.teardown(async () => { await browser.close(); await gw.close(); });
  const page = await browser.newPage();
  const url = await loginUrl(gw.adminPort, 'demo');
  t.match(url, new RegExp(`^http://ws-demo\\.localhost:${gw.port}/__gateway/login\\?token=`));
  await page.goto(url);
  await page.waitForSelector('text=Starting your workspace', { timeout: 10_000 });
  t.pass('the starting page is shown');
  t.notMatch(page.url(), /token=/, 'the token is gone from the address bar');
  await page.waitForSelector('#ws >> text=round trip ok', { timeout: 30_000 });
  t.match(await page.textContent('h1'), /Demo workspace/);
  t.match(await page.textContent('#log') ?? '', /echo: ping/, 'a WebSocket message went there and back through the gateway');
  const cookies = await page.context().cookies();
  // Reached over http (development), so the plain name: test/webkit.test.ts says why.
  const session = cookies.find((c) => c.name === 'wsgw-session');
  t.ok(session, 'the session cookie was accepted');
  t.equal(session?.httpOnly, true);
  t.equal(session?.sameSite, 'Lax');
  t.equal(gw.provisioner.starts.length, 1);
  // The token cannot be used twice.
  const second = await browser.newPage();
  const replay = await second.goto(url);
  t.equal(replay?.status(), 401);
});

t.test('the real code-server: the VS Code workbench loads through the gateway and its WebSockets connect', async (t) => {
  const gw = await startTestGateway({ env: { LOCAL_WORKSPACE: 'code-server', START_DEADLINE: '120s' } });
  const browser = await launchChromium();
  t.teardown(async () => { await browser.close(); await gw.close(); });
  const page = await browser.newPage();
  const sockets = watchWebSockets(page);
  await page.goto(await loginUrl(gw.adminPort, 'vscode'));
  await page.waitForSelector('.monaco-workbench', { timeout: 120_000 });
  t.pass('workbench rendered');
  const busy = await sockets.waitBusy(2);
  const { opened } = sockets;
  t.ok(opened.length >= 2, `WebSockets opened: ${opened.length}`);
  t.ok(opened.every((u) => u.startsWith(`ws://ws-vscode.localhost:${gw.port}/`)), 'through the gateway');
  t.ok(busy >= 2, 'and traffic flows on them');
  t.equal(gw.gateway.openWebSockets() >= 2, true, 'the gateway proxies them');
  t.equal(gw.provisioner.starts.length, 1);
});
