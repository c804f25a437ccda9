// The real code-server behind the gateway in headless Chromium, with IDLE_TIMEOUT scaled down to two
// minutes (issue 5): an untouched tab (visible, then hidden) is reaped; a tab where someone types a
// few keys every 30 s is not; a terminal printing output with nobody typing is reaped; after reaping,
// the open tab does not restart the workspace until a page load. And the terminal's shell inherits none
// of the gateway's settings.
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import type { Page } from 'playwright-core';
import { launchChromium } from './helpers/browser.js';
import { loginUrl, startTestGateway, TEST_SECRET } from './helpers/gateway.js';
import type { WorkspaceRecord } from '../gateway/store/contract.js';

const IDLE_MS = 120_000;

async function openTerminal(page: Page) {
  // The workbench takes keys only once it has restored its parts; on a loaded machine (CI runs the
  // browser tests side by side) that can take many seconds after .monaco-workbench first appears, and
  // a notification or dialog may hold the focus. So: wait for the parts, dismiss what is on top, try
  // the command palette and then the keyboard shortcut, and say what the page showed if all fail.
  await page.waitForSelector('.part.statusbar', { state: 'visible', timeout: 60_000 }).catch(() => null);
  await page.waitForSelector('.part.editor', { state: 'visible', timeout: 60_000 }).catch(() => null);
  for (let attempt = 0; attempt < 6; attempt++) {
    if (await page.locator('.xterm').first().isVisible().catch(() => false)) break;
    await page.keyboard.press('Escape');
    await page.locator('.part.editor').click({ position: { x: 200, y: 200 } }).catch(() => undefined);
    if (attempt % 2 === 0) {
      await page.keyboard.press(attempt === 2 ? 'Control+Shift+P' : 'F1');
      const palette = await page.waitForSelector('.quick-input-widget input', { state: 'visible', timeout: 15_000 }).catch(() => null);
      if (!palette) continue;
      await page.keyboard.type('Terminal: Create New Terminal');
      await page.waitForSelector('.quick-input-list .monaco-list-row', { timeout: 15_000 }).catch(() => null);
      await page.keyboard.press('Enter');
    } else {
      await page.keyboard.press('Control+Shift+Backquote');
    }
    await page.waitForSelector('.xterm', { state: 'visible', timeout: 30_000 }).catch(() => null);
  }
  if (await page.locator('.xterm').first().isVisible().catch(() => false)) {
    await page.locator('.xterm').first().click();
    return;
  }
  const shot = join(tmpdir(), `reaper-browser-${Date.now()}.png`);
  await page.screenshot({ path: shot }).catch(() => undefined);
  const shown = await page.locator('.notifications-toasts, .monaco-dialog-box, .quick-input-widget').allInnerTexts().catch(() => []);
  throw new Error(`could not open a terminal in the workbench (screenshot ${shot}; on top: ${JSON.stringify(shown).slice(0, 500)})`);
}

t.test('reaping decided by what a person does in the real code-server', { timeout: 420_000 }, async (t) => {
  const gw = await startTestGateway({
    env: { LOCAL_WORKSPACE: 'code-server', IDLE_TIMEOUT: `${IDLE_MS}ms`, REAPER: 'on', REAP_INTERVAL: '5s', ACTIVITY_FLUSH_INTERVAL: '2s', START_DEADLINE: '120s' },
  });
  const browser = await launchChromium();
  let watching = true;
  t.teardown(async () => { watching = false; await browser.close(); await gw.close(); });
  const stoppedAt = new Map<string, number>();
  const watch = async (id: string) => {
    while (watching) {
      const r: WorkspaceRecord | undefined = await gw.gateway.workspaces.nextChange(id, 60_000);
      if (r?.state === 'stopped') { stoppedAt.set(id, Date.now()); return; }
    }
  };
  const pages: Record<string, Page> = {};
  for (const id of ['untouched', 'typing', 'terminal']) {
    const page = await (await browser.newContext()).newPage();
    await page.goto(await loginUrl(gw.adminPort, id));
    await page.waitForSelector('.monaco-workbench', { timeout: 120_000 });
    pages[id] = page;
    void watch(id);
  }
  const t0 = Date.now();
  // A terminal that prints every 2 s, then nobody touches the tab.
  await openTerminal(pages.terminal);
  await pages.terminal.keyboard.type('while true; do date; sleep 2; done\n');
  // The student who works: opens a terminal and types a few keys every 30 s. The first command also
  // shows what that shell inherited: none of the gateway's settings (its secret signs every session).
  await openTerminal(pages.typing);
  await pages.typing.keyboard.type('env > "$HOME/terminal-env.txt"\n');
  const envFile = join(gw.dataDir, 'typing', 'home', 'terminal-env.txt');
  // The shell creates the file before env writes into it: wait for what env writes, not for the file.
  const written = () => (existsSync(envFile) ? readFileSync(envFile, 'utf8') : '');
  for (let i = 0; i < 100 && !/^PATH=/m.test(written()); i++) await new Promise((r) => setTimeout(r, 100));
  const terminalEnv = written();
  t.match(terminalEnv, /^PATH=/m, 'the terminal\'s shell has a PATH');
  t.notOk(terminalEnv.includes(TEST_SECRET), 'the terminal\'s shell does not see GATEWAY_SECRET\'s value');
  t.notMatch(terminalEnv, /^(GATEWAY_SECRET|ADMIN_TOKEN|REDIS_URL)=/m, 'nor any of the gateway\'s settings');
  // The untouched tab goes to the background after a while (as a browser reports it to the page).
  setTimeout(() => {
    void pages.untouched.evaluate(() => {
      Object.defineProperty(document, 'visibilityState', { value: 'hidden', configurable: true });
      Object.defineProperty(document, 'hidden', { value: true, configurable: true });
      document.dispatchEvent(new Event('visibilitychange'));
      window.dispatchEvent(new Event('blur'));
    }).catch(() => undefined);
  }, 30_000);
  const deadline = t0 + IDLE_MS + 100_000;
  while (Date.now() < deadline && !(stoppedAt.has('untouched') && stoppedAt.has('terminal'))) {
    await pages.typing.keyboard.type('ls\n');
    await new Promise((r) => setTimeout(r, 30_000));
  }
  t.ok(stoppedAt.has('untouched'), 'the untouched tab was reaped');
  t.ok(stoppedAt.has('terminal'), 'the terminal printing with nobody typing was reaped');
  t.notOk(stoppedAt.has('typing'), 'the tab where someone types was not');
  t.equal((await gw.store.getWorkspace('typing'))?.state, 'running');
  t.equal((await gw.store.getWorkspace('untouched'))?.reasonCode, 'idle');

  // The reaped tab's reconnect loop does not bring it back; a page load does.
  const startsBefore = gw.provisioner.starts.filter((s) => s.workspaceId === 'untouched').length;
  await pages.untouched.waitForTimeout(5000);
  t.equal(gw.provisioner.starts.filter((s) => s.workspaceId === 'untouched').length, startsBefore, 'no restart from the open tab');
  t.equal((await gw.store.getWorkspace('untouched'))?.state, 'stopped');
  await pages.untouched.reload();
  await pages.untouched.waitForSelector('text=stopped after being idle', { timeout: 10_000 });
  t.pass('the starting page says it was stopped after being idle');
  t.equal(gw.provisioner.starts.filter((s) => s.workspaceId === 'untouched').length, startsBefore + 1, 'a page load starts it again');
});
