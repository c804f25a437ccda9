// Reads of an accepted socket into a buffer of ours (gateway/socket-reads.ts): the bytes, the
// backpressure (pause, resume, a callback's false) and the end of input, as net.Socket gives them
// for a socket made with `onread`; and the copies pushed once a stream reader takes over.
import net, { type AddressInfo, type Socket } from 'node:net';
import t from 'tap';
import { pushCopy, readIntoBuffer } from '../gateway/socket-reads.js';
import { until } from './helpers/gateway.js';

/** A listening server whose accepted sockets `accept` sets up, and a client connected to it. */
async function pair(t: { teardown(fn: () => unknown): void }, accept: (s: Socket) => void) {
  let accepted: Socket | undefined;
  const server = net.createServer((s) => { accepted = s; s.on('error', () => undefined); accept(s); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const client = net.connect((server.address() as AddressInfo).port, '127.0.0.1');
  client.on('error', () => undefined);
  t.teardown(() => { client.destroy(); accepted?.destroy(); server.close(); });
  await until(() => accepted !== undefined, 2000);
  return { client, server: accepted! };
}

t.test('reads land in the buffer given and reach the callback, not data events', async (t) => {
  const buffer = Buffer.alloc(1024);
  const got: string[] = [];
  let dataEvents = 0;
  let ended = false;
  let switched = false;
  const { client } = await pair(t, (s) => {
    switched = readIntoBuffer(s, buffer, function (bytes, buf) { t.equal(this, s, 'called on the socket'); t.equal(buf, buffer); got.push(buf.toString('latin1', 0, bytes)); return true; });
    s.on('data', () => { dataEvents++; });
    s.on('end', () => { ended = true; });
  });
  t.ok(switched, 'this Node has what the switch needs');
  client.write('first');
  await until(() => got.join('') === 'first', 2000);
  client.end('second');
  await until(() => ended, 2000);
  t.equal(got.join(''), 'firstsecond', 'every byte, in order');
  t.equal(dataEvents, 0, 'no data events');
});

t.test('pause() stops reading until resume(); so does a callback answering false', async (t) => {
  const got: string[] = [];
  let answer = true;
  const { client, server } = await pair(t, (s) => {
    readIntoBuffer(s, Buffer.alloc(1024), (bytes, buf) => { got.push(buf.toString('latin1', 0, bytes)); return answer; });
  });
  server.pause();
  client.write('while paused');
  await new Promise((r) => setTimeout(r, 100));
  t.same(got, [], 'nothing read while paused');
  server.resume();
  await until(() => got.length === 1, 2000);
  t.same(got, ['while paused'], 'read once resumed');
  answer = false;
  client.write('stops here');
  await until(() => got.length === 2, 2000);
  client.write('after the stop');
  await new Promise((r) => setTimeout(r, 100));
  t.equal(got.length, 2, 'nothing more after the callback said false');
  answer = true;
  server.resume();
  await until(() => got.length === 3, 2000);
  t.equal(got[2], 'after the stop', 'read again after resume()');
});

t.test('pushCopy hands a stream reader bytes of its own, with backpressure', async (t) => {
  const buffer = Buffer.alloc(64 * 1024);
  const chunks: Buffer[] = [];
  const { client, server } = await pair(t, (s) => { readIntoBuffer(s, buffer, function (bytes, buf) { return pushCopy(this, bytes, buf); }); });
  server.on('data', (d: Buffer) => chunks.push(d));
  client.write('abc');
  await until(() => chunks.length === 1, 2000);
  buffer.fill(0);
  t.equal(chunks[0].toString(), 'abc', 'the chunk is a copy: overwriting the read buffer leaves it as read');
  // A reader that stops: the socket stops reading once its readable side is full.
  server.pause();
  const big = Buffer.alloc(8 << 20, 7);
  let flushed = false;
  client.write(big, () => { flushed = true; });
  await new Promise((r) => setTimeout(r, 300));
  t.ok(server.readableLength < 1 << 20, `little held by the paused reader (${server.readableLength} bytes)`);
  t.notOk(flushed, 'the client cannot write everything');
  let total = 0;
  server.removeAllListeners('data');
  server.on('data', (d: Buffer) => { total += d.length; });
  server.resume();
  await until(() => total === big.length, 5000);
  t.equal(total, big.length, 'every byte once the reader reads again');
});

t.test('a socket with no handle to switch: false, and the socket is left as it was', async (t) => {
  const socket = new net.Socket();
  t.teardown(() => socket.destroy());
  let called = false;
  t.equal(readIntoBuffer(socket, Buffer.alloc(16), () => { called = true; return true; }), false, 'not switched');
  const fields = Object.getOwnPropertySymbols(socket).filter((s) => s.description === 'kBuffer' || s.description === 'kBufferCb');
  t.ok(fields.length > 0 && fields.every((s) => (socket as unknown as Record<symbol, unknown>)[s] === null), 'its user-buffer fields untouched');
  t.notOk(called);
});
