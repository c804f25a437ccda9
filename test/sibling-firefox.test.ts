// The sibling-workspace attack of sibling-browser.test.ts, in Firefox: it too sends a workspace's
// SameSite=Lax cookie with a classmate's page's requests (same-site), and labels them with Fetch
// Metadata, which is what the gateway refuses them by (W3C Fetch Metadata, resource isolation).
import t from 'tap';
import { launchFirefox } from './helpers/firefox.js';
import { until } from './helpers/gateway.js';
import { startSiblings } from './helpers/tls-front.js';

const BASE = 'ws.example.test';

t.test("Firefox: a classmate's page cannot use a workspace's cookie; a link from it still opens the workspace", async (t) => {
  const { front, gw, victim, loginUrl, victimOrigin, close } = await startSiblings(BASE);
  const firefox = await launchFirefox([`ws-victim.${BASE}`, `ws-classmate.${BASE}`]);
  t.teardown(async () => { await firefox.close(); await close(); });
  const status = (requestLine: string) => front.answer(requestLine)?.split(' ')[1];

  // The victim opens their own workspace, then a classmate's sign-in link (to the classmate's page).
  await firefox.goto(await loginUrl('victim', '/mine'));
  t.equal(status('GET /mine'), '200', 'the victim is in their workspace');
  await firefox.goto(await loginUrl('classmate', '/page'));
  t.equal(status('GET /page'), '200', "on the classmate's page");
  t.equal(await firefox.evaluate('location.origin'), `https://ws-classmate.${BASE}:${front.port}`);

  // The classmate's script: a credentialed POST, a GET it cannot read, an image, then a form post.
  await firefox.evaluate(`(async (origin) => {
    await fetch(origin + '/steal', { method: 'POST', credentials: 'include', mode: 'no-cors', body: 'x' });
    await fetch(origin + '/read', { credentials: 'include' }).catch(() => undefined);
    await new Promise((resolve) => { const img = new Image(); img.onload = img.onerror = resolve; img.src = origin + '/pixel'; });
    const form = document.createElement('form');
    form.method = 'POST';
    form.action = origin + '/form';
    document.body.append(form);
    form.submit();
  })(${JSON.stringify(victimOrigin)})`);
  await until(() => front.answer('POST /form'), 10_000);
  const refused = front.answer('POST /form')!;
  t.equal(status('POST /form'), '403', 'the form post is refused');
  t.match(refused, /\r\nx-gateway-error: ORIGIN_FORBIDDEN\r\n/i);
  t.match(refused, /\r\ncontent-type: text\/html/i, 'with a page the person can read');

  // Firefox sent the victim's cookie with each of them: the threat is real here too, and refused.
  for (const line of ['POST /steal', 'GET /read', 'GET /pixel', 'POST /form']) {
    const head = front.head(line);
    t.match(head, /sec-fetch-site: same-site/i, `${line}: the browser calls it same-site`);
    t.match(head, /__Host-wsgw-session=/, `${line}: and sends the victim's session cookie`);
    t.equal(status(line), '403', `${line}: refused`);
    t.notOk(victim.requests.some((r) => r.url === line.split(' ')[1]), `${line}: never reached the victim's workspace`);
  }

  // A link from the classmate's page is a page load: it opens the victim's workspace as before.
  await firefox.goto(await loginUrl('classmate', '/page'));
  await firefox.evaluate(`location.href = ${JSON.stringify(`${victimOrigin}/from-link`)}`);
  await until(() => front.answer('GET /from-link'), 10_000);
  t.equal(status('GET /from-link'), '200', 'a link from a sibling opens the workspace');
  t.ok(victim.requests.some((r) => r.url === '/from-link'));
  t.equal(gw.provisioner.starts.length, 0);
});
