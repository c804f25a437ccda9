// Reads of an accepted socket into a buffer of ours (issue 7). net.connect() takes `onread` for this
// and the upstream pool uses it; an accepted socket has no such option, so the switch net.Socket makes
// for `onread` is made here on a socket already open: its user-buffer fields and its handle's
// useUserBuffer(). Each read then reaches the callback in the buffer given, with no ArrayBuffer
// allocated per read and no Readable stream in between (a warm request read that way costs
// about 5 k instructions less: bench/instructions.ts).
import net, { type Socket } from 'node:net';

/**
 * The size of a buffer reads land in: what libuv offers Node for each read of a stream socket, so a
 * read into a buffer of ours is never smaller than a 'data' event would have been.
 */
export const READ_BUFFER_BYTES = 64 * 1024;

/** Called with the socket as `this`: the bytes read are `buffer[0, bytes)`, valid for this call only. false stops reading. */
export type ReadCallback = (this: Socket, bytes: number, buffer: Buffer) => boolean;

interface UserBufferFields { buffer: symbol; callback: symbol; generator: symbol }

/** net.Socket's own keys for `onread`, found by name on a socket made with it; undefined where this Node has none. */
function userBufferFields(): UserBufferFields | undefined {
  // @types/node lists `onread` for connect() only; net.Socket's constructor is where it is read.
  const probe = new net.Socket({ onread: { buffer: Buffer.alloc(1), callback: () => true } } as net.SocketConstructorOpts);
  const named = (name: string) => Object.getOwnPropertySymbols(probe).find((s) => s.description === name);
  const buffer = named('kBuffer');
  const callback = named('kBufferCb');
  const generator = named('kBufferGen');
  return buffer && callback && generator ? { buffer, callback, generator } : undefined;
}
const fields = userBufferFields();

type Handle = { useUserBuffer?(buffer: Buffer): void };

/**
 * From now on the socket's reads land in `buffer` and go to `callback`; no 'data' events. pause() and
 * resume() still stop and start reading (net.Socket does so for onread sockets), and the end of input
 * still ends the readable side ('end'). A socket that already reads into a buffer keeps that one and
 * only its callback changes. false, and nothing changed, where this Node cannot.
 */
export function readIntoBuffer(socket: Socket, buffer: Buffer, callback: ReadCallback): boolean {
  const handle = (socket as unknown as { _handle?: Handle })._handle;
  if (!fields || typeof handle?.useUserBuffer !== 'function') return false;
  const s = socket as unknown as Record<symbol, unknown>;
  if (s[fields.buffer]) { s[fields.callback] = callback; return true; }
  s[fields.buffer] = buffer;
  s[fields.callback] = callback;
  s[fields.generator] = null;
  handle.useUserBuffer(buffer);
  return true;
}

/**
 * For a socket reading into a buffer whose bytes are now a stream's reader's ('data' listeners, a
 * pipe): the bytes are copied out of the shared buffer and pushed to the socket's readable side, as
 * net.Socket would. Its answer is push()'s: false stops reading until the reader wants more.
 */
export function pushCopy(socket: Socket, bytes: number, buffer: Buffer): boolean {
  return socket.push(copyOut(bytes, buffer));
}

/** A read's bytes, `buffer[0, bytes)`, in a Buffer of their own: for anything that outlives the read. */
export function copyOut(bytes: number, buffer: Buffer): Buffer {
  const copy = Buffer.allocUnsafe(bytes);
  buffer.copy(copy, 0, 0, bytes);
  return copy;
}
