// The sibling-workspace attack, for browsers driven by a test's own WebDriver client (Firefox over
// BiDi, WebKit over classic): the victim signs in, follows a classmate's sign-in link, and the
// classmate's page then tries a credentialed POST, a GET it cannot read, an image, an invisible frame
// (clickjacking) and a form post on the victim's workspace; each must be refused (W3C Fetch Metadata),
// and a link must still open it.
import type { Test } from 'tap';
import { until } from './gateway.js';
import type { startSiblings } from './tls-front.js';

/** What a page driven by a test can do: load a URL, run an expression. */
export interface DrivenPage {
  goto(url: string): Promise<void>;
  evaluate(expression: string): Promise<unknown>;
}

type Siblings = Awaited<ReturnType<typeof startSiblings>>;

export async function checkSiblingAttackRefused(t: Test, page: DrivenPage, siblings: Siblings, base: string): Promise<void> {
  const { front, gw, victim, loginUrl, victimOrigin } = siblings;
  const status = (requestLine: string) => front.answer(requestLine)?.split(' ')[1];

  await page.goto(await loginUrl('victim', '/mine'));
  t.equal(status('GET /mine'), '200', 'the victim is in their workspace');
  await page.goto(await loginUrl('classmate', '/page'));
  t.equal(status('GET /page'), '200', "on the classmate's page");
  t.equal(await page.evaluate('location.origin'), `https://ws-classmate.${base}:${front.port}`);

  await page.evaluate(`(async (origin) => {
    await fetch(origin + '/steal', { method: 'POST', credentials: 'include', mode: 'no-cors', body: 'x' });
    await fetch(origin + '/read', { credentials: 'include' }).catch(() => undefined);
    await new Promise((resolve) => { const img = new Image(); img.onload = img.onerror = resolve; img.src = origin + '/pixel'; });
    await new Promise((resolve) => { const f = document.createElement('iframe'); f.style.opacity = '0'; f.onload = resolve; f.src = origin + '/framed'; document.body.append(f); });
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

  // The browser sent the victim's cookie with each of them: the threat is real here too, and refused.
  for (const line of ['POST /steal', 'GET /read', 'GET /pixel', 'GET /framed', 'POST /form']) {
    const head = front.head(line);
    t.match(head, /sec-fetch-site: same-site/i, `${line}: the browser calls it same-site`);
    t.match(head, /__Host-wsgw-session=/, `${line}: and sends the victim's session cookie`);
    t.equal(status(line), '403', `${line}: refused`);
    t.notOk(victim.requests.some((r) => r.url === line.split(' ')[1]), `${line}: never reached the victim's workspace`);
  }

  // A link from the classmate's page is a page load: it opens the victim's workspace as before.
  await page.goto(await loginUrl('classmate', '/page'));
  await page.evaluate(`location.href = ${JSON.stringify(`${victimOrigin}/from-link`)}`);
  await until(() => front.answer('GET /from-link'), 10_000);
  t.equal(status('GET /from-link'), '200', 'a link from a sibling opens the workspace');
  t.ok(victim.requests.some((r) => r.url === '/from-link'));
  t.equal(gw.provisioner.starts.length, 0);
}
