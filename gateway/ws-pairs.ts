// Proxied WebSocket pairs (browser socket, upstream socket): counted, watched for a frozen peer,
// closed together, and drained on shutdown. This module also moves the bytes once the forwarder has
// done the handshake: one listener per socket writes each chunk onward, then feeds it to that
// direction's frame-boundary tracker, so its own control frames (ping, close 1001) go between frames
// (issue 8). Not pipe(): its 18 closures and listener arrays were 2 KB of an idle WebSocket's
// 11 KB of heap (bench/, idle memory per WebSocket).
import type { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { READ_BUFFER_BYTES, copyOut, readIntoBuffer } from './socket-reads.js';
import type { Clock } from './clock.js';
import { revokedBy } from './revocations.js';
import type { UpgradeResponse } from './proxy.js';
import { CLOSE, FrameTracker, GOING_AWAY, PING, POLICY_VIOLATION, clientFrame, closePayload, serverFrame } from './ws-frames.js';

/** Sees every chunk from the browser, control frames included (the activity tap parses the stream itself). */
export interface ClientObserver { write(chunk: Buffer): void }

export interface WsPair<O extends ClientObserver = ClientObserver> {
  workspaceId: string;
  /** The revocation epoch the session that opened it was signed under: a revocation closes the pairs it voids. */
  sessionEpoch: number;
  client: Duplex;
  upstream: Duplex;
  /** Last time any byte came from that side (pongs included: liveness, not activity). */
  lastUpstream: number;
  lastClient: number;
  /**
   * Set by the opened hook, read back by the closed hook: a field, not a WeakMap entry and a holder
   * object per pair (bench/, idle memory per WebSocket).
   */
  observer: O | undefined;
}

export interface WsPairHooks<O extends ClientObserver = ClientObserver> {
  opened(pair: WsPair<O>, req: IncomingMessage, response: UpgradeResponse): void;
  closed(pair: WsPair<O>): void;
  /** The workspace side ended without a close frame (process died): its route deserves a re-check. */
  upstreamLost?(pair: WsPair<O>): void;
}

export interface WsPairsOptions<O extends ClientObserver = ClientObserver> {
  clock: Clock;
  /** A side silent this long is pinged; silent twice this long, both sides are closed (issue 8). */
  idleTimeoutMs: number;
  /** How long a peer gets to answer our close frame before its socket is destroyed. */
  closeGraceMs?: number;
  hooks: WsPairHooks<O>;
}

/**
 * One direction: where a frame ends (the tracker it is), where its bytes go, and frames of ours
 * waiting for the next frame boundary.
 */
class Direction extends FrameTracker {
  pending: Array<() => void> | undefined;
  pingedAt = 0;
  /** False once our close frame was queued: later bytes from `from` are dropped. */
  relaying = true;
  /** `from` is paused until `to` drains. */
  waiting = false;
  constructor(readonly from: Duplex, readonly to: Duplex) { super(); }

  /** Writes a chunk onward; a full destination pauses the source until it drains (what pipe() did). */
  relay(chunk: Buffer) {
    if (!this.relaying || !this.to.writable) return;
    if (this.to.write(chunk) || this.waiting) return;
    this.waiting = true;
    this.from.pause();
    this.to.once('drain', () => { this.waiting = false; this.from.resume(); });
  }
  /** The source ended (FIN): end the destination too, after anything already queued. */
  relayEnd() {
    if (this.relaying && this.to.writable) this.to.end();
  }
  /** Runs fn now if this direction is between frames, else once the current frame has been forwarded. */
  atNextBoundary(fn: () => void) {
    if (this.atBoundary()) fn(); else (this.pending ??= []).push(fn);
  }
  drainPending() {
    const pending = this.pending;
    while (pending?.length && this.atBoundary()) pending.shift()!();
  }
}

const write = (s: Duplex, frame: Buffer) => { if (s.writable && !s.destroyed) s.write(frame); };

/** What the pairs share: options, hooks and the set of open pairs. */
interface Owner {
  clock: Clock;
  hooks: WsPairHooks;
  closeGraceMs: number;
  pairs: Set<Pair>;
  /** Reads of both sides land here where Node allows (socket-reads.ts); each is copied out before it is used. */
  readBuffer: Buffer;
  emptied(): void;
}

/**
 * A proxied pair. Its sockets' listeners are module-level functions that find the pair through a
 * symbol on the socket: closures per pair (two data listeners, the close and end handlers, and
 * their shared scope) were 1 KB of an idle WebSocket's heap (bench/ws-heap.ts).
 */
class Pair implements WsPair {
  observer: ClientObserver | undefined = undefined;
  lastUpstream: number;
  lastClient: number;
  /** upstream -> client (server frames, unmasked) and client -> upstream (masked). */
  readonly down: Direction;
  readonly up: Direction;
  closing = false;
  done = false;
  lost = false;
  grace: NodeJS.Timeout | undefined;

  constructor(readonly owner: Owner, readonly workspaceId: string, readonly sessionEpoch: number, readonly client: Duplex, readonly upstream: Duplex) {
    this.lastUpstream = this.lastClient = owner.clock.now();
    this.down = new Direction(upstream, client);
    this.up = new Direction(client, upstream);
  }

  // Each chunk is written onward first, so a frame injected while observing it follows it on the wire.
  fromUpstream(chunk: Buffer) {
    this.lastUpstream = this.owner.clock.now();
    this.forward(this.down, chunk, undefined);
  }
  fromClient(chunk: Buffer) {
    this.lastClient = this.owner.clock.now();
    // Every byte, control frames included: the activity tap parses the stream itself (and never
    // counts pings, pongs or closes); skipping a chunk would break its framing.
    this.forward(this.up, chunk, this.observer);
  }

  /**
   * Relays a chunk. Frames of ours waiting for a boundary go at the first frame end inside it: with
   * frames back to back a read seldom ends between two, and a ping or close frame that waited for
   * one could wait for ever (issue 8). What is no longer relayed (after our close frame) is not
   * observed either: the workspace never got it, so it is not activity (issue 5).
   */
  private forward(d: Direction, chunk: Buffer, observer: ClientObserver | undefined) {
    let at = 0;
    while (d.pending?.length && at < chunk.length) {
      const end = d.feedToBoundary(chunk, at);
      const piece = at === 0 && end === chunk.length ? chunk : chunk.subarray(at, end);
      if (d.relaying) { d.relay(piece); observer?.write(piece); }
      at = end;
      d.drainPending();
    }
    if (at === chunk.length) return;
    const rest = at === 0 ? chunk : chunk.subarray(at);
    if (!d.relaying) { d.feed(rest); return; }
    d.relay(rest);
    d.feed(rest);
    observer?.write(rest);
    if (d.pending?.length) d.drainPending();
  }

  /**
   * A browser whose upstream died (or ended without a close frame) is told so at once, with a code
   * VS Code reconnects on (issue 8), before its own FIN follows.
   */
  upstreamGone() {
    if (this.closing || this.down.closeSeen || this.lost) return;
    this.lost = true;
    this.owner.hooks.upstreamLost?.(this);
    if (this.down.atBoundary()) { this.closing = true; write(this.client, serverFrame(CLOSE, closePayload(GOING_AWAY))); }
  }

  close() {
    if (this.done) return;
    this.done = true;
    const { owner, client } = this;
    if (this.grace) clearTimeout(this.grace);
    owner.pairs.delete(this);
    owner.hooks.closed(this);
    this.upstream.destroy();
    // end() flushes the close frame; a browser that does not read is cut after the grace.
    if (!client.destroyed) {
      client.end();
      const cut = setTimeout(() => client.destroy(), owner.closeGraceMs);
      cut.unref();
      client.once('close', () => clearTimeout(cut));
    }
    if (owner.pairs.size === 0) owner.emptied();
  }

  /** Both sides get a close frame at their next frame boundary, then FIN; destroyed after the grace. */
  finish(code = GOING_AWAY) {
    if (this.closing || this.done) return;
    this.closing = true;
    const { client, upstream, down, up } = this;
    down.atNextBoundary(() => { down.relaying = false; write(client, serverFrame(CLOSE, closePayload(code))); client.end(); });
    up.atNextBoundary(() => { up.relaying = false; write(upstream, clientFrame(CLOSE, closePayload(code))); upstream.end(); });
    this.grace = setTimeout(() => { client.destroy(); upstream.destroy(); this.close(); }, this.owner.closeGraceMs);
    this.grace.unref();
  }
}

const kPair = Symbol('ws pair');
type Relayed = Duplex & { [kPair]?: Pair };

// `on`, not `once`: each handler is idempotent, and every once() costs a wrapper object and a bound
// function for the socket's lifetime (bench/ws-heap.ts). A socket may also report a second error,
// and nothing else listens for them.
function onUpstreamData(this: Relayed, chunk: Buffer) { this[kPair]?.fromUpstream(chunk); }
function onClientData(this: Relayed, chunk: Buffer) { this[kPair]?.fromClient(chunk); }
// Reads into the pairs' buffer: a copy of its own for each chunk, which a write may keep queued.
// Backpressure is the Direction's pause(), which stops such a socket's reads at once.
function onUpstreamRead(this: Relayed, bytes: number, buffer: Buffer): boolean { this[kPair]?.fromUpstream(copyOut(bytes, buffer)); return true; }
function onClientRead(this: Relayed, bytes: number, buffer: Buffer): boolean { this[kPair]?.fromClient(copyOut(bytes, buffer)); return true; }

/**
 * A side's bytes go to its pair straight from its reads where Node allows it (socket-reads.ts: no
 * ArrayBuffer per read, no Readable stream in between), else as 'data' events. What its readable
 * side already holds (read before the relay started) goes first.
 */
function relayFrom(socket: Relayed, buffer: Buffer, onRead: (this: Relayed, bytes: number, buffer: Buffer) => boolean, onData: (this: Relayed, chunk: Buffer) => void) {
  if (socket instanceof Socket && readIntoBuffer(socket, buffer, onRead)) {
    const held = socket.readableLength > 0 ? socket.read() as Buffer | null : null;
    if (held) onData.call(socket, held);
    return;
  }
  socket.on('data', onData);
}
function onUpstreamEnd(this: Relayed) { const p = this[kPair]; if (p) { p.upstreamGone(); p.down.relayEnd(); } }
function onClientEnd(this: Relayed) { this[kPair]?.up.relayEnd(); }
function onUpstreamDown(this: Relayed) { const p = this[kPair]; if (p) { p.upstreamGone(); p.close(); } }
function onClientDown(this: Relayed) { this[kPair]?.close(); }
/** The hook runs before the forwarder writes the 101: the bytes start moving on the next tick, after it. */
function startRelay(p: Pair) {
  if (p.done) return;
  relayFrom(p.upstream, p.owner.readBuffer, onUpstreamRead, onUpstreamData);
  relayFrom(p.client, p.owner.readBuffer, onClientRead, onClientData);
}

export function createWsPairs<O extends ClientObserver = ClientObserver>(opts: WsPairsOptions<O>) {
  const { clock } = opts;
  // The pairs call their hooks with themselves; the observer they carry is the one opened() set.
  const hooks = opts.hooks as unknown as WsPairHooks;
  const pairs = new Set<Pair>();
  let emptyWaiters: Array<() => void> = [];
  const owner: Owner = {
    clock, hooks, closeGraceMs: opts.closeGraceMs ?? 1000, pairs, readBuffer: Buffer.allocUnsafe(READ_BUFFER_BYTES),
    emptied() { const w = emptyWaiters; emptyWaiters = []; for (const f of w) f(); },
  };

  function track(p: { workspaceId: string; sessionEpoch: number; client: Duplex; upstream: Duplex; req: IncomingMessage; response: UpgradeResponse }) {
    // Only the two sockets are kept: the upgrade's request and response objects are free once
    // opened() has read them (bench/: idle memory per WebSocket).
    const client = p.client as Relayed;
    const upstream = p.upstream as Relayed;
    const pair = new Pair(owner, p.workspaceId, p.sessionEpoch, client, upstream);
    pairs.add(pair);
    client[kPair] = pair;
    upstream[kPair] = pair;
    hooks.opened(pair, p.req, p.response);
    process.nextTick(startRelay, pair);
    upstream.on('end', onUpstreamEnd);
    client.on('end', onClientEnd);
    upstream.on('close', onUpstreamDown);
    client.on('close', onClientDown);
    upstream.on('error', onUpstreamDown);
    client.on('error', onClientDown);
    // A tab closed while the workspace was answering the upgrade: its FIN (or its close) came
    // before these listeners and is not emitted again, so the pair held a workspace connection
    // until the ping sweep (issue 8). Act on what already happened.
    if (upstream.destroyed) onUpstreamDown.call(upstream);
    if (client.destroyed) onClientDown.call(client);
    if (pair.done) return;
    if (upstream.readableEnded) onUpstreamEnd.call(upstream);
    if (client.readableEnded) onClientEnd.call(client);
  }

  // A frozen peer (SIGSTOP'd workspace, vanished laptop) is pinged once it has been silent for the
  // idle timeout, and the pair is closed once it has been silent for twice that: not the operating
  // system's two hours (issue 8). The resulting pong passes through to the other side as an
  // unsolicited pong, which RFC 6455 5.5.3 allows; it counts as liveness, never as activity.
  const limit = opts.idleTimeoutMs;
  const sweepMs = Math.min(5000, Math.max(25, Math.floor(limit / 4)));
  const sweep = setInterval(() => {
    const now = clock.now();
    for (const pair of pairs) {
      if (pair.closing) continue;
      const { down, up } = pair;
      if (now - pair.lastUpstream > 2 * limit || now - pair.lastClient > 2 * limit) { pair.finish(); continue; }
      // Ping the browser: a server frame on the client socket, between upstream frames.
      if (now - pair.lastClient > limit && down.pingedAt <= pair.lastClient) {
        down.pingedAt = now;
        down.atNextBoundary(() => write(pair.client, serverFrame(PING)));
      }
      // Ping the workspace: a masked client frame on the upstream socket, between browser frames.
      if (now - pair.lastUpstream > limit && up.pingedAt <= pair.lastUpstream) {
        up.pingedAt = now;
        up.atNextBoundary(() => write(pair.upstream, clientFrame(PING)));
      }
    }
  }, sweepMs);
  sweep.unref();

  function whenEmpty(): Promise<void> {
    if (pairs.size === 0) return Promise.resolve();
    return new Promise((resolve) => emptyWaiters.push(resolve));
  }

  return {
    track,
    size: () => pairs.size,
    /** Resolves once no pair is open. */
    whenEmpty,
    /**
     * Closes every pair with 1001 (going away) so browsers reconnect to another replica (shutdown),
     * and resolves once all are gone (at most the close grace later).
     */
    closeAll(): Promise<void> {
      for (const pair of pairs) pair.finish();
      return whenEmpty();
    },
    /**
     * Closes, with 1008, the workspace's pairs opened under sessions the revocation epoch voids
     * (revokedBy): the browser's reconnect then meets the refusal. Pairs of newer sessions stay.
     */
    closeRevoked(workspaceId: string, epoch: number): number {
      let n = 0;
      for (const pair of pairs) if (pair.workspaceId === workspaceId && revokedBy(pair.sessionEpoch, epoch) && !pair.closing) { pair.finish(POLICY_VIOLATION); n++; }
      return n;
    },
    close() {
      clearInterval(sweep);
      for (const pair of pairs) { pair.client.destroy(); pair.upstream.destroy(); }
    },
  };
}

export type WsPairs = ReturnType<typeof createWsPairs>;
