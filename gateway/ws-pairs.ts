// Proxied WebSocket pairs (browser socket, upstream socket): counted, watched for a frozen peer,
// closed together, and drained on shutdown. The bytes themselves flow through http-proxy-3's pipes;
// this module only observes them.
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Clock } from './clock.js';

export interface WsPair {
  workspaceId: string;
  client: Duplex;
  upstream: Duplex;
  lastUpstream: number;
  lastClient: number;
}

export interface WsPairHooks {
  opened(pair: WsPair, req: IncomingMessage, response: IncomingMessage): void;
  /** Each chunk the browser sends (client to server), for the activity signal. */
  clientData?(pair: WsPair, chunk: Buffer): void;
  closed(pair: WsPair): void;
}

export interface WsPairsOptions {
  clock: Clock;
  /** No traffic either way for twice this long: both sides are closed (issue 8). */
  idleTimeoutMs: number;
  hooks: WsPairHooks;
}

export function createWsPairs(opts: WsPairsOptions) {
  const { clock, hooks } = opts;
  const pairs = new Set<WsPair>();

  function track(p: { workspaceId: string; client: Duplex; upstream: Duplex; req: IncomingMessage; response: IncomingMessage }) {
    const pair: WsPair = { workspaceId: p.workspaceId, client: p.client, upstream: p.upstream, lastUpstream: clock.now(), lastClient: clock.now() };
    pairs.add(pair);
    hooks.opened(pair, p.req, p.response);
    p.upstream.on('data', () => { pair.lastUpstream = clock.now(); });
    p.client.on('data', (chunk: Buffer) => { pair.lastClient = clock.now(); hooks.clientData?.(pair, chunk); });
    let done = false;
    const close = () => {
      if (done) return;
      done = true;
      pairs.delete(pair);
      hooks.closed(pair);
      // An upstream that died must not leave the browser waiting: close its socket promptly (issue 8).
      p.client.destroy();
      p.upstream.destroy();
    };
    p.upstream.once('close', close);
    p.client.once('close', close);
    p.upstream.once('error', close);
    p.client.once('error', close);
  }

  // A frozen peer (SIGSTOP'd workspace, vanished laptop) is cut after the no-traffic limit, not the
  // operating system's two hours (issue 8).
  const sweep = setInterval(() => {
    const now = clock.now();
    const limit = opts.idleTimeoutMs * 2;
    for (const pair of pairs) {
      if (now - pair.lastUpstream > limit && now - pair.lastClient > limit) { pair.client.destroy(); pair.upstream.destroy(); }
    }
  }, Math.max(1000, Math.floor(opts.idleTimeoutMs / 2)));
  sweep.unref();

  return {
    track,
    size: () => pairs.size,
    /** Closes every pair (shutdown after the drain period). */
    closeAll() { for (const pair of pairs) { pair.client.destroy(); pair.upstream.destroy(); } },
    close() { clearInterval(sweep); },
  };
}

export type WsPairs = ReturnType<typeof createWsPairs>;
