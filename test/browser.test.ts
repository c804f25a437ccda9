// In headless Chromium (Debian's, driven by playwright-core): sign in through the handoff link, see
// the starting page, land in the workspace, and see its WebSockets work through the gateway; then
// the same with the real code-server's VS Code workbench (issue 2, issue 3).
import t from 'tap';
import { launchChromium, watchWebSockets } from './helpers/browser.js';
import { lockKey } from '../gateway/workspaces.js';
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

t.test('a page loaded while the workspace is being stopped starts it once the stop ends, without polling in a loop', async (t) => {
  const gw = await startTestGateway({ env: { DEMO_READY_DELAY: '500ms' } });
  const browser = await launchChromium();
  t.teardown(async () => { await browser.close(); await gw.close(); });
  // A live stop, as the reaper or the admin API holds one: 'stopping' under a held workspace lock.
  const stopping = { id: 'demo', state: 'stopping' as const, generation: 1, since: Date.now(), reasonCode: 'idle', reason: 'stopped after being idle' };
  await gw.store.putWorkspace(stopping);
  t.ok(await gw.store.acquireLease(lockKey('demo'), 'a-live-stop', 60_000));
  const page = await browser.newPage();
  let polls = 0;
  page.on('request', (r) => { if (r.url().includes('/__gateway/status')) polls++; });
  await page.goto(await loginUrl(gw.adminPort, 'demo'));
  await page.waitForSelector('text=Starting your workspace', { timeout: 10_000 });
  t.equal(gw.provisioner.starts.length, 0, 'nothing starts while the stop runs');

  // The stop ends: 'stopped', announced as a real stop announces it, and the lock let go.
  const before = polls;
  const stopped = { ...stopping, state: 'stopped' as const, since: Date.now() };
  await gw.store.putWorkspace(stopped);
  await gw.store.publish({ record: stopped });
  await gw.store.releaseLease(lockKey('demo'), 'a-live-stop');
  await page.waitForSelector('#ws >> text=round trip ok', { timeout: 30_000 });
  t.pass('the page went on to start the workspace and open it');
  t.equal(gw.provisioner.starts.length, 1, 'started once');
  t.ok(polls - before < 20, `no loop of status polls once it was stopped (${polls - before})`);
});
