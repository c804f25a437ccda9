// Sibling workspaces are one site (issue 3: every ws-* host serves pages a student writes), so
// Chromium sends a workspace's SameSite=Lax cookie with requests a classmate's page makes to it. Shown
// here as it happens in production: HTTPS (a TLS terminator standing in for the ALB), a base domain
// under a registrable domain (ws.example.test, mapped to loopback), the victim signed in to their own
// workspace and then following a classmate's sign-in link to the classmate's page.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import t from 'tap';
import { launchChromium } from './helpers/browser.js';
import { TEST_ADMIN_TOKEN, startTestGateway } from './helpers/gateway.js';
import { registerRunning, startRecordingUpstream } from './helpers/upstream.js';

const BASE = 'ws.example.test';

/** A self-signed certificate for *.ws.example.test (Chromium is told to accept it). */
function certificate(dir: string): { key: Buffer; cert: Buffer } {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
    '-subj', `/CN=*.${BASE}`, '-addext', `subjectAltName=DNS:*.${BASE}`, '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
  return { key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) };
}

/** TLS in front of the gateway, as the ALB is; keeps what browsers sent, to show which requests carried the cookie. */
async function tlsTerminator(creds: { key: Buffer; cert: Buffer }, target: () => number) {
  const sent: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = tls.createServer(creds, (client) => {
    const i = sent.push('') - 1;
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    const upstream = net.connect(target(), '127.0.0.1');
    client.on('data', (d: Buffer) => { sent[i] += d.toString('latin1'); });
    client.pipe(upstream).pipe(client);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    /** The head of the request that starts with this request line, as the browser sent it. */
    head(requestLine: string): string | undefined {
      for (const text of sent) {
        const at = text.indexOf(`${requestLine} HTTP/1.1\r\n`);
        if (at !== -1) return text.slice(at, text.indexOf('\r\n\r\n', at));
      }
      return undefined;
    },
    close: () => new Promise<void>((resolve) => { server.close(() => resolve()); for (const c of sockets) c.destroy(); }),
  };
}

t.test("a classmate's page cannot use a workspace's cookie; a link from it still opens the workspace", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-sibling-'));
  let gatewayPort = 0;
  const front = await tlsTerminator(certificate(dir), () => gatewayPort);
  const gw = await startTestGateway({ env: { BASE_DOMAIN: BASE, PUBLIC_SCHEME: 'https', PUBLIC_PORT: String(front.port) } });
  gatewayPort = gw.port;
  const victim = await startRecordingUpstream();
  const classmate = await startRecordingUpstream();
  await registerRunning(gw.store, 'victim', victim.port);
  await registerRunning(gw.store, 'classmate', classmate.port);
  const browser = await launchChromium([`--host-resolver-rules=MAP *.${BASE} 127.0.0.1`, '--ignore-certificate-errors']);
  t.teardown(async () => {
    await browser.close(); await gw.close(); await front.close(); await victim.close(); await classmate.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const loginUrl = async (id: string, next: string) => {
    const r = await fetch(`http://127.0.0.1:${gw.adminPort}/api/workspaces/${id}/login-url`, {
      method: 'POST', headers: { authorization: `Bearer ${TEST_ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ next }),
    });
    return ((await r.json()) as { url: string }).url;
  };
  const victimOrigin = `https://ws-victim.${BASE}:${front.port}`;
  const page = await (await browser.newContext()).newPage();

  // The victim opens their own workspace, then a classmate's sign-in link (to the classmate's page).
  const own = await page.goto(await loginUrl('victim', '/mine'));
  t.equal(own?.status(), 200);
  t.equal(new URL(page.url()).origin, victimOrigin);
  const theirs = await page.goto(await loginUrl('classmate', '/page'));
  t.equal(theirs?.status(), 200, "on the classmate's page");
  t.ok(victim.requests.some((r) => r.url === '/mine'));

  // The classmate's script: a credentialed POST, a GET it cannot read, an image, then a form post.
  await page.evaluate(async (origin) => {
    await fetch(`${origin}/steal`, { method: 'POST', credentials: 'include', mode: 'no-cors', body: 'x' });
    await fetch(`${origin}/read`, { credentials: 'include' }).catch(() => undefined);
    await new Promise((resolve) => { const img = new Image(); img.onload = img.onerror = resolve; img.src = `${origin}/pixel`; });
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
  for (const line of ['POST /steal', 'GET /read', 'GET /pixel', 'POST /form']) {
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
