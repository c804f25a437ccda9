// The gateway's wiring of the activity signal across a reconnection (gateway/app.ts): VS Code sends its
// window-active flag only on change, so a reconnected socket must start from the previous socket's flag,
// also when that socket is still open at the gateway (a dropped network: the browser reconnects before
// the old connection is cut by the ping timeout or the load balancer).
import t from 'tap';
import { createManualClock } from '../gateway/clock.js';
import { CALLS } from '../gateway/activity/vscode.js';
import { callBody, vsMsg } from './fixtures/activity/build.js';
import { NAVIGATE, request, startTestGateway, waitRunning } from './helpers/gateway.js';
import { closed, connected, nextMessage, openWs } from './helpers/ws.js';
import type WebSocket from 'ws';

async function send(ws: WebSocket, payload: Buffer) {
  const echoed = nextMessage(ws);
  ws.send(payload, { binary: true });
  await echoed;
}

t.test('a reconnection while the old socket is still open inherits its window-active flag', async (t) => {
  const clock = createManualClock(Date.now());
  const gw = await startTestGateway({ clock, env: { ACTIVITY_FLUSH_INTERVAL: '1h' } });
  t.teardown(() => gw.close());
  const host = 'ws-focus.localhost';
  const cookie = await gw.cookie('focus');
  await request(gw.port, { host, headers: { ...NAVIGATE, cookie } });
  await waitRunning(gw.port, cookie, host);
  const open = (reconnection: boolean) => connected(openWs(gw.port, `/echo?reconnectionToken=tok-1&reconnection=${reconnection}`, { cookie, host }));

  const edit = vsMsg(1, callBody('$acceptModelChanged'));
  const first = await open(false);
  await send(first, vsMsg(1, callBody(CALLS.focus, '[false]'))); // the student walked away
  await gw.gateway.activity.flush();
  const before = await gw.store.getActivity('focus');
  clock.advance(60_000);
  await send(first, edit); // a file rewritten under the open editor: nobody there
  await gw.gateway.activity.flush();
  t.equal(await gw.store.getActivity('focus'), before, 'an inactive window: not activity');

  // The network drops; the browser reconnects at once, the old socket not yet cut at the gateway.
  const second = await open(true);
  clock.advance(60_000);
  await send(second, edit);
  await gw.gateway.activity.flush();
  t.equal(await gw.store.getActivity('focus'), before, 'after the reconnection: still not activity');

  first.terminate();
  clock.advance(60_000);
  // The old socket closing late does not overwrite the newer socket's flag for the next reconnection.
  await send(second, vsMsg(1, callBody(CALLS.focus, '[true]')));
  await closed(first);
  await new Promise((r) => setTimeout(r, 50));
  second.terminate();
  await closed(second);
  const third = await open(true);
  clock.advance(60_000);
  await send(third, edit);
  await gw.gateway.activity.flush();
  t.equal(await gw.store.getActivity('focus'), clock.now(), 'the window active again: an edit is activity');
  third.close();
  await closed(third);
});

t.test("a socket of another workspace with the same reconnection token inherits nothing (a shared or forged token)", async (t) => {
  const clock = createManualClock(Date.now());
  const gw = await startTestGateway({ clock, env: { ACTIVITY_FLUSH_INTERVAL: '1h' } });
  t.teardown(() => gw.close());
  const ids = ['focus-a', 'focus-b'];
  const cookies: Record<string, string> = {};
  for (const id of ids) {
    cookies[id] = await gw.cookie(id);
    await request(gw.port, { host: `ws-${id}.localhost`, headers: { ...NAVIGATE, cookie: cookies[id] } });
    await waitRunning(gw.port, cookies[id], `ws-${id}.localhost`);
  }
  const open = (id: string, reconnection: boolean) => connected(openWs(gw.port, `/echo?reconnectionToken=shared&reconnection=${reconnection}`, { cookie: cookies[id], host: `ws-${id}.localhost` }));
  const edit = vsMsg(1, callBody('$acceptModelChanged'));
  /** Whether an edit on `ws` now counts as activity of `id`. */
  const editCounts = async (ws: WebSocket, id: string) => {
    clock.advance(60_000);
    await send(ws, edit);
    await gw.gateway.activity.flush();
    return (await gw.store.getActivity(id)) === clock.now();
  };

  // Workspace a's window goes inactive, its socket still open.
  const a = await open('focus-a', false);
  await send(a, vsMsg(1, callBody(CALLS.focus, '[false]')));
  t.equal(await editCounts(a, 'focus-a'), false, "a's inactive window: not activity");

  // b's client comes with the same token, as a reconnection: its window was never reported inactive.
  const b = await open('focus-b', true);
  t.equal(await editCounts(b, 'focus-b'), true, "b does not take a's open socket's flag");

  // a's socket closes with its flag; b's next socket with that token must not take it either.
  a.terminate();
  await closed(a);
  b.terminate();
  await closed(b);
  await new Promise((r) => setTimeout(r, 50));
  const b2 = await open('focus-b', true);
  t.equal(await editCounts(b2, 'focus-b'), true, "nor a's closed socket's flag");
  b2.close();
  await closed(b2);

  // And b's flag, set last under the shared token, does not reach a's reconnection.
  const b3 = await open('focus-b', false);
  await send(b3, vsMsg(1, callBody(CALLS.focus, '[true]')));
  b3.terminate();
  await closed(b3);
  await new Promise((r) => setTimeout(r, 50));
  const a2 = await open('focus-a', true);
  t.equal(await editCounts(a2, 'focus-a'), false, "a's reconnection keeps its own inactive flag, not b's active one");
  a2.close();
  await closed(a2);
});
