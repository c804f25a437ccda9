// Sibling workspaces are one site (issue 3: every ws-* host serves pages a student writes), so
// Chromium sends a workspace's SameSite=Lax cookie with requests a classmate's page makes to it. Shown
// here as it happens in production: HTTPS (a TLS terminator standing in for the ALB), a base domain
// under a registrable domain (ws.example.test, mapped to loopback), the victim signed in to their own
// workspace and then following a classmate's sign-in link to the classmate's page.
import t from 'tap';
import { launchChromium } from './helpers/browser.js';
import { startSiblings } from './helpers/tls-front.js';

const BASE = 'ws.example.test';

t.test("a classmate's page cannot use a workspace's cookie; a link from it still opens the workspace", async (t) => {
  const { front, gw, victim, loginUrl, victimOrigin, close } = await startSiblings(BASE);
  const browser = await launchChromium([`--host-resolver-rules=MAP *.${BASE} 127.0.0.1`, '--ignore-certificate-errors']);
  t.teardown(async () => { await browser.close(); await close(); });
  const page = await (await browser.newContext()).newPage();

  // The victim opens their own workspace, then a classmate's sign-in link (to the classmate's page).
  const own = await page.goto(await loginUrl('victim', '/mine'));
  t.equal(own?.status(), 200);
  t.equal(new URL(page.url()).origin, victimOrigin);
  const theirs = await page.goto(await loginUrl('classmate', '/page'));
  t.equal(theirs?.status(), 200, "on the classmate's page");
  t.ok(victim.requests.some((r) => r.url === '/mine'));

  // The classmate's script: a credentialed POST, a GET it cannot read, an image, the workspace in an
  // invisible frame (clickjacking: the victim's clicks and keys land in their own IDE), then a form post.
  await page.evaluate(async (origin) => {
    await fetch(`${origin}/steal`, { method: 'POST', credentials: 'include', mode: 'no-cors', body: 'x' });
    await fetch(`${origin}/read`, { credentials: 'include' }).catch(() => undefined);
    await new Promise((resolve) => { const img = new Image(); img.onload = img.onerror = resolve; img.src = `${origin}/pixel`; });
    await new Promise((resolve) => { const f = document.createElement('iframe'); f.style.opacity = '0'; f.onload = resolve; f.src = `${origin}/framed`; document.body.append(f); });
  }, victimOrigin);
  const posted = page.waitForNavigation();
  await page.evaluate((origin) => {
    const form = document.createElement('form');
    form.method = 'POST';
    form.action = `${origin}/form`;
    document.body.append(form);
    form.submit();
  }, victimOrigin);
  const refusedPage = await posted;
  t.equal(refusedPage?.status(), 403, 'the form post is refused');
  t.equal(await refusedPage?.headerValue('x-gateway-error'), 'ORIGIN_FORBIDDEN');
  t.match(await refusedPage?.headerValue('content-type'), /text\/html/, 'with a page the person can read');

  // Chromium sent the victim's cookie with each of them: the threat is real, and the gateway refused it.
  for (const line of ['POST /steal', 'GET /read', 'GET /pixel', 'GET /framed', 'POST /form']) {
    const head = front.head(line);
    t.match(head, /sec-fetch-site: same-site/i, `${line}: the browser calls it same-site`);
    t.match(head, /__Host-wsgw-session=/, `${line}: and sends the victim's session cookie`);
    t.notOk(victim.requests.some((r) => r.url === line.split(' ')[1]), `${line}: never reached the victim's workspace`);
  }

  // A link from the classmate's page is a page load: it opens the victim's workspace as before.
  await page.goto(await loginUrl('classmate', '/page'));
  const followed = page.waitForNavigation();
  await page.evaluate((origin) => { location.href = `${origin}/from-link`; }, victimOrigin);
  t.equal((await followed)?.status(), 200, 'a link from a sibling opens the workspace');
  t.ok(victim.requests.some((r) => r.url === '/from-link'));
  t.equal(gw.provisioner.starts.length, 0);
});
