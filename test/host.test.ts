import t from 'tap';
import { checkRequestTarget, hostHeaderValues, originForm, parseHost, proxyRouteAllowed } from '../gateway/host.js';
import { isNavigation, prefersHtml, siteAllowed, wantsHtml, type RequestSite } from '../gateway/request-kind.js';

t.test('parseHost table', async (t) => {
  const base = 'example.com';
  const rows: Array<[string[], string, string?]> = [
    [['ws-abc.example.com'], 'workspace', 'abc'],
    [['WS-ABC.Example.COM'], 'workspace', 'abc'],
    [['ws-abc.example.com.'], 'workspace', 'abc'],
    [['ws-abc.example.com:8443'], 'workspace', 'abc'],
    [['ws-abc.example.com.:443'], 'workspace', 'abc'],
    [['ws-a-b-9.example.com'], 'workspace', 'a-b-9'],
    [[`ws-${'a'.repeat(60)}.example.com`], 'workspace', 'a'.repeat(60)],
    [[`ws-${'a'.repeat(61)}.example.com`], 'malformed'],
    [['ws--abc.example.com'], 'malformed'],
    [['ws-abc-.example.com'], 'malformed'],
    [['ws-.example.com'], 'malformed'],
    [['ws-a_b.example.com'], 'malformed'],
    [['ws-abc.example.com@evil.com'], 'malformed'],
    [['ws-abc.example.com:99999'], 'malformed'],
    [['ws-abc.example.com:x'], 'malformed'],
    [['ws-abc..example.com'], 'malformed'],
    [['ws-a b.example.com'], 'malformed'],
    [[''], 'malformed'],
    [[], 'malformed'],
    [['ws-a.example.com', 'ws-b.example.com'], 'malformed'],
    [['ws-a.example.com', 'ws-a.example.com'], 'malformed'],
    [['example.com'], 'unknown'],
    [['api.example.com'], 'unknown'],
    [['x.ws-abc.example.com'], 'unknown'],
    [['ws-abc.example.org'], 'unknown'],
    [['ws-abc.notexample.com'], 'unknown'],
    [['127.0.0.1:8080'], 'unknown'],
    [['[::1]:8080'], 'unknown'],
  ];
  for (const [hosts, kind, id] of rows) {
    const v = parseHost(hosts, base);
    t.equal(v.kind, kind, `${JSON.stringify(hosts)} -> ${kind}`);
    if (id) t.equal(v.kind === 'workspace' && v.id, id);
  }
});

t.test('hostHeaderValues sees every Host line, even those Node drops', async (t) => {
  t.same(hostHeaderValues(['Host', 'a', 'X', 'y', 'host', 'b']), ['a', 'b']);
});

t.test('request target table (absolute-form, asterisk, CONNECT)', async (t) => {
  const rows: Array<[string, string, string | undefined, 'ok' | 'bad']> = [
    ['GET', '/', 'ws-a.x', 'ok'],
    ['GET', '/a?b#c', 'ws-a.x', 'ok'],
    ['GET', 'http://ws-a.x/', 'ws-a.x', 'ok'],
    ['GET', 'http://WS-A.X:80/p', 'ws-a.x:80', 'ok'],
    ['GET', 'http://ws-b.x/', 'ws-a.x', 'bad'],
    ['GET', 'http://evil.com/', 'ws-a.x', 'bad'],
    ['GET', 'http://ws-a.x@evil.com/', 'ws-a.x', 'bad'],
    ['OPTIONS', '*', 'ws-a.x', 'bad'],
    ['CONNECT', 'ws-a.x:443', 'ws-a.x', 'bad'],
    ['GET', 'ws-a.x/', 'ws-a.x', 'bad'],
    ['GET', '', 'ws-a.x', 'bad'],
  ];
  for (const [method, url, host, expected] of rows) t.equal(checkRequestTarget(method, url, host), expected, `${method} ${url}`);
});

t.test('originForm table: what the guards and the upstream see', async (t) => {
  const rows: Array<[string, string]> = [
    ['/x', '/x'],
    ['/x?q=1', '/x?q=1'],
    // A fragment never belongs in a request target (RFC 9112 3.2): the upstream must not see one.
    ['/x#frag', '/x'],
    ['/x?q=1#frag', '/x?q=1'],
    ['http://ws-a.localhost/x#frag', '/x'],
    ['http://ws-a.localhost', '/'],
    ['http://ws-a.localhost?q', '/?q'],
    ['HTTPS://ws-a.localhost/__gateway/login?token=t', '/__gateway/login?token=t'],
  ];
  for (const [url, expected] of rows) t.equal(originForm(url), expected, url);
});

t.test('proxyRouteAllowed table: plain targets read as they are, anything else decoded and resolved first', async (t) => {
  // The plain ones skip decoding and dot-segment resolution (bench/instructions.ts); each refused
  // target has one feature (percent, backslash, doubled slash, dot segment) that sends it the long way.
  const rows: Array<[string, boolean]> = [
    ['/', true], ['/static/out/vs/workbench.js?v=1.2', true], ['/proxy/8080/', true], ['/absproxy/3000/app?x=@evil', true],
    ['/proxy/8080/@evil.example', true], ['/proxyx/@evil', true], ['/?next=/proxy/80@evil/', true], ['/file.name.js', true],
    ['/proxy/8080@evil.example/', false], ['/PROXY/8080@evil.example/', false], ['/absproxy/80:80@evil/', false], ['/proxy/123456/', false],
    ['/proxy/8080%40evil.example/', false], ['/%70roxy/8080@evil.example/', false], ['/proxy/80%ZZ/', false],
    ['/proxy\\8080@evil.example/', false], ['//proxy/8080@evil.example/', false], ['/x/../proxy/8080@evil.example/', false],
    ['/./proxy/8080@evil.example/', false], ['/%2e%2e/proxy/8080@evil.example/', false], ['/a%2fb/%2e%2e/%2e%2e/proxy/1@evil/', false],
    ['/x/.hidden/ok', true], ['/a//b', true],
    // A literal percent (a file named `100%`) decodes once, then is no escape: it used to be refused.
    ['/100%25/x', true], ['/files/50%25off.txt', true],
    ['/%2570roxy/8080@evil.example/%zz', false], ['/%25%37%30roxy/1@evil/%', false],
    // code-server's Express router reads the port as sent, before any dot segment is resolved: these
    // resolve to `/proxy/8080/`, yet code-server fetched `evil.example` for each.
    ['/proxy/8080@evil.example/../8080/', false], ['/absproxy/8080@evil.example/../8080/x', false],
    ['/proxy/8080@evil.example\\..\\8080/', false],
    ['/proxy/8080/a/../b', true],
  ];
  for (const [url, allowed] of rows) t.equal(proxyRouteAllowed(url), allowed, url);
});

t.test('navigation and html preference', async (t) => {
  const rows: Array<[string, Record<string, string>, boolean]> = [
    ['GET', { 'sec-fetch-mode': 'navigate' }, true],
    ['GET', { 'sec-fetch-mode': 'cors', accept: 'text/html' }, false],
    ['GET', { 'sec-fetch-mode': 'no-cors' }, false],
    ['GET', { 'sec-fetch-mode': 'websocket' }, false],
    ['POST', { 'sec-fetch-mode': 'navigate' }, false],
    ['GET', { accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8' }, true],
    ['GET', { accept: 'application/json' }, false],
    ['GET', { accept: '*/*' }, false],
    ['GET', {}, false],
    ['HEAD', { accept: 'text/html' }, false],
  ];
  for (const [method, headers, expected] of rows) t.equal(isNavigation(method, headers), expected, `${method} ${JSON.stringify(headers)}`);
  t.equal(prefersHtml('application/json, text/html;q=0.5'), false);
  t.equal(prefersHtml('text/html;q=0.9, application/json;q=0.8'), true);
  t.equal(wantsHtml({ 'sec-fetch-dest': 'document' }), true);
  t.equal(wantsHtml({ 'sec-fetch-dest': 'empty', accept: 'text/html' }), false);
});

t.test('siteAllowed: where a request on a workspace host may come from (Fetch Metadata, then Origin)', async (t) => {
  const own = 'https://ws-a.example.com';
  const isOwn = (origin: string, host: string | undefined) => origin === `https://${host}`;
  const nav = (site: string, dest = 'document') => ({ site, mode: 'navigate', dest });
  const rows: Array<[string, string, Partial<RequestSite>, boolean]> = [
    ['its own page, any method', 'POST', { site: 'same-origin', mode: 'cors', dest: 'empty', origin: own }, true],
    ['its own page, a WebSocket-less fetch', 'DELETE', { site: 'same-origin', mode: 'same-origin' }, true],
    ['typed, bookmarked, the sign-in link pasted', 'GET', nav('none'), true],
    ['a link from the platform (another site)', 'GET', nav('cross-site'), true],
    ['a link from the platform on the same site', 'GET', nav('same-site'), true],
    ['a HEAD page load from elsewhere', 'HEAD', nav('cross-site'), true],
    // A page on the same site framing it (a classmate's, and the platform's cannot be told apart): the
    // owner's clicks and keys would land in their own IDE out of sight (clickjacking).
    ['a page on the same site framing the workspace', 'GET', nav('same-site', 'iframe'), false],
    ['a <frame> on the same site', 'GET', nav('same-site', 'frame'), false],
    ['another site framing it', 'GET', nav('cross-site', 'iframe'), false],
    ['a fenced frame', 'GET', nav('same-site', 'fencedframe'), false],
    ['its own page framing it (a VS Code webview)', 'GET', nav('same-origin', 'iframe'), true],
    ['a sibling workspace posting a form', 'POST', { ...nav('same-site'), origin: 'https://ws-b.example.com' }, false],
    ['a sibling\'s fetch with credentials', 'GET', { site: 'same-site', mode: 'cors', dest: 'empty', origin: 'https://ws-b.example.com' }, false],
    ['a sibling\'s <img> or <script>', 'GET', { site: 'same-site', mode: 'no-cors', dest: 'image' }, false],
    ['another site\'s <script>', 'GET', { site: 'cross-site', mode: 'no-cors', dest: 'script' }, false],
    ['a sibling\'s <object>', 'GET', { ...nav('same-site', 'object') }, false],
    ['a sibling\'s <embed>', 'GET', { ...nav('same-site', 'embed') }, false],
    ['a sibling\'s preflight', 'OPTIONS', { site: 'same-site', mode: 'cors', dest: 'empty', origin: 'https://ws-b.example.com' }, false],
    ['two Sec-Fetch-Site fields (joined): not read as same-origin', 'POST', { site: 'same-origin, same-site', mode: 'cors' }, false],
    ['a value no browser sends', 'POST', { site: 'SAME-ORIGIN', mode: 'cors' }, false],
    ['no Fetch Metadata: a program, no Origin', 'POST', {}, true],
    ['no Fetch Metadata: a GET with any Origin', 'GET', { origin: 'https://ws-b.example.com' }, true],
    ['no Fetch Metadata: a POST from its own origin', 'POST', { origin: own }, true],
    ['no Fetch Metadata: a POST from a sibling', 'POST', { origin: 'https://ws-b.example.com' }, false],
    ['no Fetch Metadata: a PUT from a sandboxed page (Origin: null)', 'PUT', { origin: 'null' }, false],
  ];
  for (const [name, method, from, allowed] of rows) {
    t.equal(siteAllowed(method, { site: undefined, mode: undefined, dest: undefined, origin: undefined, ...from }, 'ws-a.example.com', isOwn), allowed, name);
  }
  let asked = 0;
  siteAllowed('GET', { site: 'same-origin', mode: 'cors', dest: 'empty', origin: 'https://x' }, 'h', () => { asked++; return false; });
  siteAllowed('GET', { site: undefined, mode: undefined, dest: undefined, origin: 'https://x' }, 'h', () => { asked++; return false; });
  t.equal(asked, 0, 'Origin is parsed only when it decides');
});
