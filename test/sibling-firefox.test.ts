// The sibling-workspace attack of sibling-browser.test.ts, in Firefox: it too sends a workspace's
// SameSite=Lax cookie with a classmate's page's requests (same-site), and labels them with Fetch
// Metadata, which is what the gateway refuses them by (W3C Fetch Metadata, resource isolation).
import t from 'tap';
import { launchFirefox } from './helpers/firefox.js';
import { checkSiblingAttackRefused } from './helpers/sibling-attack.js';
import { startSiblings } from './helpers/tls-front.js';

const BASE = 'ws.example.test';

t.test("Firefox: a classmate's page cannot use a workspace's cookie; a link from it still opens the workspace", async (t) => {
  const siblings = await startSiblings(BASE);
  const firefox = await launchFirefox([`ws-victim.${BASE}`, `ws-classmate.${BASE}`]);
  t.teardown(async () => { await firefox.close(); await siblings.close(); });
  await checkSiblingAttackRefused(t, firefox, siblings, BASE);
});
