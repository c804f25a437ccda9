// Debian's Chromium through playwright-core, started as this machine allows (no sandbox as root,
// no background networking: the machine has no network but loopback).
import { chromium, type Browser, type Page } from 'playwright-core';

export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

export function launchChromium(extraArgs: readonly string[] = []): Promise<Browser> {
  return chromium.launch({ executablePath: '/usr/bin/chromium', args: [...CHROMIUM_ARGS, ...extraArgs], headless: true });
}

/**
 * The WebSockets a page opens, and a wait until `count` of them carry traffic (more than two frames
 * received each): VS Code's management and extension-host connections, once its workbench runs.
 */
export function watchWebSockets(page: Page) {
  const opened: string[] = [];
  const framesIn = new Map<string, number>();
  page.on('websocket', (ws) => {
    opened.push(ws.url());
    ws.on('framereceived', () => framesIn.set(ws.url(), (framesIn.get(ws.url()) ?? 0) + 1));
  });
  const busy = () => [...framesIn.values()].filter((n) => n > 2).length;
  return {
    opened,
    /** How many carried traffic by the deadline (at least `count` unless it passed). */
    async waitBusy(count: number, timeoutMs = 60_000): Promise<number> {
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline && busy() < count) await page.waitForTimeout(250);
      return busy();
    },
  };
}
