// Workspaces prove who they are before the gateway sends them a student's byte. A route can outlive
// its workspace (a dead Fargate task's private IP given to another student's task; locally, a freed
// port taken by another process), and whoever listens there then would be sent the first student's
// requests: their file edits, their terminal keystrokes. The 421 of codeserver/workspace-identity.cjs
// needs that listener to cooperate; a student's own server on WORKSPACE_PORT would not. So every new
// connection to a workspace whose route asks for it first carries `OPTIONS *` (RFC 9112 3.2.4: the
// server, not a resource) with a fresh nonce, and is used only once the answer is an HMAC of the
// workspace and that nonce under the key the gateway gave this start alone (WORKSPACE_KEY). A
// connection cannot move to another container, so a verified kept-alive one is not asked again.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import type { Endpoint } from '../provisioner/contract.js';
import { CHALLENGE_FIELD, MISDIRECTED_FIELD, PROOF_FIELD, WORKSPACE_FIELD, proof } from '../codeserver/workspace-identity.cjs';
import { MISDIRECTED_ERROR } from './http-fields.js';

export { CHALLENGE_FIELD, PROOF_FIELD, proof } from '../codeserver/workspace-identity.cjs';

/**
 * What a connection must prove: that it reaches this workspace's current start. `acceptedKey`: the
 * start's key under GATEWAY_SECRET_ACCEPTED, for a start given its key by a replica that signs with
 * that secret (a rotation, README "Rotating GATEWAY_SECRET").
 */
export interface Claim { readonly workspaceId: string; readonly key: string; readonly acceptedKey?: string }

/** An endpoint as the gateway forwards to it: with a claim when its route requires proof. */
export interface Upstream extends Endpoint { readonly claim?: Claim }

/** Why a workspace's answer was not taken as the workspace's: a marked 421, or no valid proof. */
export type IdentityReason = 'misdirected' | 'unproven';

/**
 * A request failed because another server answers at the route's address (UPSTREAM_UNREACHABLE).
 * `answered`: the server gave a complete answer to the challenge (or a request) that was not a proof,
 * as opposed to a close, reset or timeout before one (code-server restarting, the task dying): only
 * the former says something definite about the server there (gateway/workspaces.ts recheck).
 */
export class IdentityFailure extends Error {
  constructor(readonly reason: IdentityReason, message: string, readonly answered: boolean) {
    super(message);
    this.name = 'IdentityFailure';
  }
}

/** The reason a forwarding failure was an identity failure, if it was one. */
export function identityReason(error: unknown): IdentityReason | undefined {
  return error instanceof IdentityFailure ? error.reason : undefined;
}

/**
 * Whether a forwarding failure was a definitive non-proof: a server that answered the challenge in
 * full, and not with a valid proof nor as another workspace (a marked 421 is someone else's).
 */
export function answeredUnproven(error: unknown): boolean {
  return error instanceof IdentityFailure && error.reason === 'unproven' && error.answered;
}

/**
 * Each start's key, from GATEWAY_SECRET as gateway/auth.ts derives its keys (so every replica derives
 * the same): K = HMAC(secret, "workspace-gateway/workspace-identity"), then per start
 * HMAC(K, "workspace-identity\0" + id + "\0" + generation). A task of generation N-1 (or another
 * workspace) holds a different key, and no key opens another.
 */
export function createIdentityKeys(secret: string): (workspaceId: string, generation: number) => string {
  const base = createHmac('sha256', secret).update('workspace-gateway/workspace-identity').digest();
  return (workspaceId, generation) => createHmac('sha256', base).update(`workspace-identity\0${workspaceId}\0${generation}`).digest('base64url');
}
export type IdentityKeys = ReturnType<typeof createIdentityKeys>;

/**
 * The start keys a gateway or reaper derives from its configuration: GATEWAY_SECRET's, given to starts
 * and asked of them, and GATEWAY_SECRET_ACCEPTED's, if set, whose proofs are accepted and which no
 * start is given (a rotation).
 */
export function identityKeysOf(config: { gatewaySecret: string; gatewaySecretAccepted?: string }): { identityKeys: IdentityKeys; acceptedIdentityKeys?: IdentityKeys } {
  const identityKeys = createIdentityKeys(config.gatewaySecret);
  return config.gatewaySecretAccepted === undefined ? { identityKeys } : { identityKeys, acceptedIdentityKeys: createIdentityKeys(config.gatewaySecretAccepted) };
}

/**
 * What a start's connections are asked, from the keys identityKeysOf gives: its own key, and the
 * accepted secret's too during a rotation (a start launched under that secret proves with it).
 */
export function claimFor(keys: { identityKeys: IdentityKeys; acceptedIdentityKeys?: IdentityKeys }, workspaceId: string, generation: number): Claim {
  const key = keys.identityKeys(workspaceId, generation);
  return keys.acceptedIdentityKeys ? { workspaceId, key, acceptedKey: keys.acceptedIdentityKeys(workspaceId, generation) } : { workspaceId, key };
}

/** 128 bits, fresh per connection: a proof captured on one connection proves nothing on the next. */
export function newNonce(): string { return randomBytes(16).toString('base64url'); }

/** The challenge's bytes: one request, written before anything else on the connection. */
export function challengeHead(host: string, port: number, claim: Claim, nonce: string): string {
  return `OPTIONS * HTTP/1.1\r\nhost: ${host}:${port}\r\n${WORKSPACE_FIELD}: ${claim.workspaceId}\r\n${CHALLENGE_FIELD}: ${nonce}\r\ncontent-length: 0\r\n\r\n`;
}

/** A proof's answer is a short head: anything longer is not one. */
const MAX_ANSWER_BYTES = 4096;

/**
 * The answer to a challenge, as read so far: `more` until its head is complete, then `proven` only for
 * a 204 kept alive whose one proof field is the expected one and that has nothing after it (bytes the
 * workspace sent unasked would be taken for the next request's answer). A marked 421 is `misdirected`;
 * anything else `unproven`.
 */
export function checkAnswer(bytes: Buffer, claim: Claim, nonce: string): 'more' | 'proven' | IdentityReason {
  const end = bytes.indexOf('\r\n\r\n', 0, 'latin1');
  if (end === -1) return bytes.length > MAX_ANSWER_BYTES ? 'unproven' : 'more';
  const lines = bytes.toString('latin1', 0, end).split('\r\n');
  const status = /^HTTP\/1\.1 (\d{3}) /.exec(`${lines[0]} `)?.[1];
  let proofs = 0;
  let given = '';
  let marked = false;
  let closing = false;
  let bodied = false;
  for (let i = 1; i < lines.length; i++) {
    const colon = lines[i].indexOf(':');
    if (colon <= 0) return 'unproven';
    const name = lines[i].slice(0, colon).toLowerCase();
    const value = lines[i].slice(colon + 1).trim();
    if (name === PROOF_FIELD) { proofs++; given = value; }
    else if (name === MISDIRECTED_FIELD) marked = true;
    else if (name === 'connection' && value.toLowerCase().split(',').some((t) => t.trim() === 'close')) closing = true;
    else if ((name === 'content-length' && value !== '0') || name === 'transfer-encoding') bodied = true;
  }
  if (status === '421' && marked) return 'misdirected';
  if (status !== '204' || proofs !== 1 || closing || bodied || end + 4 !== bytes.length) return 'unproven';
  const actual = Buffer.from(given, 'latin1');
  const provenBy = (key: string) => {
    const expected = Buffer.from(proof(key, claim.workspaceId, nonce), 'latin1');
    return actual.length === expected.length && timingSafeEqual(actual, expected);
  };
  return provenBy(claim.key) || (claim.acceptedKey !== undefined && provenBy(claim.acceptedKey)) ? 'proven' : 'unproven';
}

const FAILURE_TEXT: Record<IdentityReason, string> = {
  misdirected: MISDIRECTED_ERROR,
  unproven: 'the server at this address did not prove it is the workspace',
};
/** `answered`: a complete answer that was not a proof; false for a close or timeout before one. */
export function identityFailure(reason: IdentityReason, answered: boolean): IdentityFailure {
  return new IdentityFailure(reason, answered ? FAILURE_TEXT[reason] : `${FAILURE_TEXT[reason]} (no complete answer)`, answered);
}

/**
 * The challenge on a socket of one's own (a WebSocket upgrade's, a readiness probe's), before anything
 * else is written to it: resolves once proven, with the socket kept for the request that follows;
 * rejects with an IdentityFailure (the socket destroyed) on any other answer, a close or `timeoutMs`
 * once connected. A socket that never connects rejects with its own error instead (ECONNREFUSED,
 * ETIMEDOUT past `timeoutMs`): nothing answered there, as a workspace gone.
 */
export function proveSocket(socket: Socket, host: string, port: number, claim: Claim, timeoutMs: number): Promise<void> {
  const nonce = newNonce();
  return new Promise((resolve, reject) => {
    let read: Buffer = Buffer.alloc(0);
    const done = (error?: Error) => {
      clearTimeout(timer);
      socket.off('connect', onConnect);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
      if (error) { socket.destroy(); reject(error); } else resolve();
    };
    const onData = (d: Buffer) => {
      read = read.length === 0 ? d : Buffer.concat([read, d]);
      const verdict = checkAnswer(read, claim, nonce);
      if (verdict === 'more') return;
      done(verdict === 'proven' ? undefined : identityFailure(verdict, true));
    };
    // Whether anything accepted the connection: net clears `connecting` before it reports a refused
    // connect, so that flag alone took a port nobody listens on (a workspace gone) for a server that
    // is not the workspace (counted and logged as an identity failure). As the pool's Conn.connected.
    let connected = !socket.connecting && !socket.destroyed;
    const onConnect = () => { connected = true; };
    // Closed, reset or silent before a complete answer: nothing definite about who listens there.
    const onError = (error: Error) => done(connected ? identityFailure('unproven', false) : error);
    const onClose = () => done(connected ? identityFailure('unproven', false) : new Error('upstream connection closed before it connected'));
    const timer = setTimeout(() => done(connected ? identityFailure('unproven', false) : Object.assign(new Error('upstream connect timeout'), { code: 'ETIMEDOUT' })), timeoutMs);
    socket.once('connect', onConnect);
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.write(challengeHead(host, port, claim, nonce), 'latin1');
  });
}

/** A new connection to a workspace, handed over only once it has proven to be `claim`'s (readiness probes). */
export async function provenConnection(host: string, port: number, claim: Claim, timeoutMs: number): Promise<Socket> {
  const socket = connect({ host, port, noDelay: true });
  await proveSocket(socket, host, port, claim, timeoutMs);
  return socket;
}
