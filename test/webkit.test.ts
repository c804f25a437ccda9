// In WebKit, Safari's engine (Debian's WebKitGTK under its own WebDriver): a student signs in
// through the handoff link, sees the starting page, lands in the workspace and its WebSocket works
// through the gateway; a classmate's page cannot use the workspace's cookie (issue 2, issue 3).
import t from 'tap';
import { TEST_ADMIN_TOKEN, startTestGateway, until } from './helpers/gateway.js';
import { startSiblings } from './helpers/tls-front.js';
import { launchWebKit } from './helpers/webkit.js';

async function loginUrl(adminPort: number, id: string): Promise<string> {
  const r = await fetch(`http://127.0.0.1:${adminPort}/api/workspaces/${id}/login-url`, {
    method: 'POST', headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: '{}',
  });
  return ((await r.json()) as { url: string }).url;
}

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
  const BASE = 'ws.localhost';
  const { front, gw, victim, loginUrl: siblingLoginUrl, victimOrigin, close } = await startSiblings(BASE);
  const webkit = await launchWebKit();
  t.teardown(async () => { await webkit.close(); await close(); });
  const status = (requestLine: string) => front.answer(requestLine)?.split(' ')[1];

  await webkit.goto(await siblingLoginUrl('victim', '/mine'));
  t.equal(status('GET /mine'), '200', 'the victim is in their workspace');
  t.ok((await webkit.cookies()).some((c) => c.name === '__Host-wsgw-session' && c.secure), 'with a Secure `__Host-` cookie');
  await webkit.goto(await siblingLoginUrl('classmate', '/page'));
  t.equal(status('GET /page'), '200', "on the classmate's page");
  t.equal(await webkit.evaluate('location.origin'), `https://ws-classmate.${BASE}:${front.port}`);

  await webkit.evaluate(`(async (origin) => {
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
  t.equal(status('POST /form'), '403', 'the form post is refused');
  t.match(front.answer('POST /form')!, /\r\nx-gateway-error: ORIGIN_FORBIDDEN\r\n/i);

  for (const line of ['POST /steal', 'GET /read', 'GET /pixel', 'POST /form']) {
    const head = front.head(line);
    t.match(head, /sec-fetch-site: same-site/i, `${line}: WebKit calls it same-site`);
    t.match(head, /__Host-wsgw-session=/, `${line}: and sends the victim's session cookie`);
    t.equal(status(line), '403', `${line}: refused`);
    t.notOk(victim.requests.some((r) => r.url === line.split(' ')[1]), `${line}: never reached the victim's workspace`);
  }

  await webkit.goto(await siblingLoginUrl('classmate', '/page'));
  await webkit.evaluate(`location.href = ${JSON.stringify(`${victimOrigin}/from-link`)}`);
  await until(() => front.answer('GET /from-link'), 10_000);
  t.equal(status('GET /from-link'), '200', 'a link from a sibling opens the workspace');
  t.equal(gw.provisioner.starts.length, 0);
});
