// Proxied WebSocket pairs (browser socket, upstream socket): counted, watched for a frozen peer,
// closed together, and drained on shutdown. This module also moves the bytes once the forwarder has
// done the handshake: one listener per socket writes each chunk onward, then feeds it to that
// direction's frame-boundary tracker, so its own control frames (ping, close 1001) go between frames
// (issue 8). Not pipe(): its 18 closures and listener arrays were 2 KB of an idle WebSocket's
// 11 KB of heap (bench/, idle memory per WebSocket).
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Clock } from './clock.js';
import type { UpgradeResponse } from './proxy.js';
import { CLOSE, FrameTracker, GOING_AWAY, PING, clientFrame, closePayload, serverFrame } from './ws-frames.js';

export interface WsPair {
  workspaceId: string;
  client: Duplex;
  upstream: Duplex;
  /** Last time any byte came from that side (pongs included: liveness, not activity). */
  lastUpstream: number;
  lastClient: number;
}

export interface WsPairHooks {
  opened(pair: WsPair, req: IncomingMessage, response: UpgradeResponse): void;
  /** Every chunk from the browser, control frames included (the activity tap parses the stream itself). */
  clientData?(pair: WsPair, chunk: Buffer): void;
  closed(pair: WsPair): void;
  /** The workspace side ended without a close frame (process died): its route deserves a re-check. */
  upstreamLost?(pair: WsPair): void;
}

export interface WsPairsOptions {
  clock: Clock;
  /** A side silent this long is pinged; silent twice this long, both sides are closed (issue 8). */
  idleTimeoutMs: number;
  /** How long a peer gets to answer our close frame before its socket is destroyed. */
  closeGraceMs?: number;
  hooks: WsPairHooks;
}

/** One direction: its tracker, and frames waiting for the next frame boundary. */
interface Direction {
  tracker: FrameTracker;
  /** Where this direction's bytes, and injected frames, are written. */
  to: Duplex;
  from: Duplex;
  pending: Array<() => void>;
  pingedAt: number;
  /** False once our close frame was queued: later bytes from `from` are dropped. */
  relaying: boolean;
  /** `from` is paused until `to` drains. */
  waiting: boolean;
}

interface Entry {
  pair: WsPair;
  /** upstream -> client (server frames, unmasked) and client -> upstream (masked). */
  down: Direction;
  up: Direction;
  closing: boolean;
  finish(): void;
}

export function createWsPairs(opts: WsPairsOptions) {
  const { clock, hooks } = opts;
  const closeGraceMs = opts.closeGraceMs ?? 1000;
  const entries = new Set<Entry>();
  let emptyWaiters: Array<() => void> = [];

  /** Runs fn now if this direction is between frames, else once the current frame has been forwarded. */
  function atBoundary(d: Direction, fn: () => void) {
    if (d.tracker.atBoundary()) fn(); else d.pending.push(fn);
  }
  function drainPending(d: Direction) {
    while (d.pending.length && d.tracker.atBoundary()) d.pending.shift()!();
  }
  const write = (s: Duplex, frame: Buffer) => { if (s.writable && !s.destroyed) s.write(frame); };
  /** Writes a chunk onward; a full destination pauses the source until it drains (what pipe() did). */
  function relay(d: Direction, chunk: Buffer) {
    if (!d.relaying || !d.to.writable) return;
    if (d.to.write(chunk) || d.waiting) return;
    d.waiting = true;
    d.from.pause();
    d.to.once('drain', () => { d.waiting = false; d.from.resume(); });
  }
  /** The source ended (FIN): end the destination too, after anything already queued. */
  function relayEnd(d: Direction) {
    if (d.relaying && d.to.writable) d.to.end();
  }

  function track(p: { workspaceId: string; client: Duplex; upstream: Duplex; req: IncomingMessage; response: UpgradeResponse }) {
    // Only the two sockets are kept: the upgrade's request and response objects are free once
    // opened() has read them (bench/: idle memory per WebSocket).
    const { client, upstream } = p;
    const now = clock.now();
    const pair: WsPair = { workspaceId: p.workspaceId, client, upstream, lastUpstream: now, lastClient: now };
    const down: Direction = { tracker: new FrameTracker(), from: upstream, to: client, pending: [], pingedAt: 0, relaying: true, waiting: false };
    const up: Direction = { tracker: new FrameTracker(), from: client, to: upstream, pending: [], pingedAt: 0, relaying: true, waiting: false };
    let done = false;
    const entry: Entry = { pair, down, up, closing: false, finish: () => undefined };
    entries.add(entry);
    hooks.opened(pair, p.req, p.response);

    // This hook runs before the forwarder writes the 101: the bytes start moving on the next tick,
    // after it. Each chunk is written onward first, so a frame injected while observing it follows
    // it on the wire.
    process.nextTick(() => {
      if (done) return;
      upstream.on('data', (chunk: Buffer) => {
        relay(down, chunk);
        pair.lastUpstream = clock.now();
        down.tracker.feed(chunk);
        if (down.pending.length) drainPending(down);
      });
      client.on('data', (chunk: Buffer) => {
        relay(up, chunk);
        pair.lastClient = clock.now();
        up.tracker.feed(chunk);
        // Every byte, control frames included: the activity tap parses the stream itself (and never
        // counts pings, pongs or closes); skipping a chunk would break its framing.
        hooks.clientData?.(pair, chunk);
        if (up.pending.length) drainPending(up);
      });
    });

    let grace: NodeJS.Timeout | undefined;
    const close = () => {
      if (done) return;
      done = true;
      if (grace) clearTimeout(grace);
      entries.delete(entry);
      hooks.closed(pair);
      upstream.destroy();
      // end() flushes the close frame; a browser that does not read is cut after the grace.
      if (!client.destroyed) {
        client.end();
        const cut = setTimeout(() => client.destroy(), closeGraceMs);
        cut.unref();
        client.once('close', () => clearTimeout(cut));
      }
      if (entries.size === 0) { const w = emptyWaiters; emptyWaiters = []; for (const f of w) f(); }
    };
    entry.finish = () => {
      // Both sides get a close frame at their next frame boundary, then FIN; destroyed after the grace.
      if (entry.closing || done) return;
      entry.closing = true;
      atBoundary(down, () => { down.relaying = false; write(client, serverFrame(CLOSE, closePayload(GOING_AWAY))); client.end(); });
      atBoundary(up, () => { up.relaying = false; write(upstream, clientFrame(CLOSE, closePayload(GOING_AWAY))); upstream.end(); });
      grace = setTimeout(() => { client.destroy(); upstream.destroy(); close(); }, closeGraceMs);
      grace.unref();
    };
    // A browser whose upstream died (or ended without a close frame) is told so at once, with a code
    // VS Code reconnects on (issue 8), before its own FIN follows.
    let lost = false;
    const upstreamGone = () => {
      if (entry.closing || down.tracker.closeSeen || lost) return;
      lost = true;
      hooks.upstreamLost?.(pair);
      if (down.tracker.atBoundary()) { entry.closing = true; write(client, serverFrame(CLOSE, closePayload(GOING_AWAY))); }
    };
    // `on`, not `once`: each handler is idempotent, and every once() costs a wrapper object and a
    // bound function for the socket's lifetime (bench/ws-heap.ts: 0.5 KB per idle pair). A socket may
    // also report a second error, and nothing else listens for them.
    const upstreamDown = () => { upstreamGone(); close(); };
    upstream.on('end', () => { upstreamGone(); relayEnd(down); });
    client.on('end', () => relayEnd(up));
    upstream.on('close', upstreamDown);
    client.on('close', close);
    upstream.on('error', upstreamDown);
    client.on('error', close);
  }

  // A frozen peer (SIGSTOP'd workspace, vanished laptop) is pinged once it has been silent for the
  // idle timeout, and the pair is closed once it has been silent for twice that: not the operating
  // system's two hours (issue 8). The resulting pong passes through to the other side as an
  // unsolicited pong, which RFC 6455 5.5.3 allows; it counts as liveness, never as activity.
  const limit = opts.idleTimeoutMs;
  const sweepMs = Math.min(5000, Math.max(25, Math.floor(limit / 4)));
  const sweep = setInterval(() => {
    const now = clock.now();
    for (const entry of entries) {
      if (entry.closing) continue;
      const { pair, down, up } = entry;
      if (now - pair.lastUpstream > 2 * limit || now - pair.lastClient > 2 * limit) { entry.finish(); continue; }
      // Ping the browser: a server frame on the client socket, between upstream frames.
      if (now - pair.lastClient > limit && down.pingedAt <= pair.lastClient) {
        down.pingedAt = now;
        atBoundary(down, () => write(pair.client, serverFrame(PING)));
      }
      // Ping the workspace: a masked client frame on the upstream socket, between browser frames.
      if (now - pair.lastUpstream > limit && up.pingedAt <= pair.lastUpstream) {
        up.pingedAt = now;
        atBoundary(up, () => write(pair.upstream, clientFrame(PING)));
      }
    }
  }, sweepMs);
  sweep.unref();

  function whenEmpty(): Promise<void> {
    if (entries.size === 0) return Promise.resolve();
    return new Promise((resolve) => emptyWaiters.push(resolve));
  }

  return {
    track,
    size: () => entries.size,
    /** Resolves once no pair is open. */
    whenEmpty,
    /**
     * Closes every pair with 1001 (going away) so browsers reconnect to another replica (shutdown),
     * and resolves once all are gone (at most the close grace later).
     */
    closeAll(): Promise<void> {
      for (const entry of entries) entry.finish();
      return whenEmpty();
    },
    close() {
      clearInterval(sweep);
      for (const entry of entries) { entry.pair.client.destroy(); entry.pair.upstream.destroy(); }
    },
  };
}

export type WsPairs = ReturnType<typeof createWsPairs>;
