'use strict';
// A workspace refuses requests the gateway meant for another workspace (cross-tenant misrouting).
// The gateway names the workspace in x-gateway-workspace on every request it forwards; a route gone
// stale (a dead Fargate task whose private IP AWS gave to another student's task, a freed local port
// taken by another workspace's process) then reaches a workspace that answers
// 421 Misdirected Request (RFC 9110 15.5.20) with the marker field instead of its files and terminal.
//
// Loaded two ways, with nothing but Node's own modules:
// - as a preload, `NODE_OPTIONS=--require=<this file>` with WORKSPACE_ID and WORKSPACE_PORT set
//   (codeserver/entrypoint.sh, the local provisioner): it guards only the HTTP server that listens on
//   WORKSPACE_PORT, so the processes code-server forks (extension host, pty host) are left as they are;
// - as a module, by the demo workspace (provisioner/demo-workspace.ts), for `decide` and `refuse`.
//
// The 421 needs the workspace at the reused address to cooperate; a student's own server there would
// not. So the gateway also asks every new connection to prove it reaches the workspace it means before
// it sends a student's byte: `OPTIONS *` (RFC 9112 3.2.4, the server itself) with CHALLENGE_FIELD, a
// fresh nonce, answered here, before code-server sees it, with 204 and PROOF_FIELD, an HMAC of the
// workspace and the nonce under WORKSPACE_KEY: a key the gateway derived for this start alone
// (gateway/workspace-proof.ts) and gave only to this task.

const WORKSPACE_FIELD = 'x-gateway-workspace';
const MISDIRECTED_FIELD = 'x-gateway-misdirected';
/** The gateway's nonce on a connection's first request, `OPTIONS *`: base64url, 128 bits or more. */
const CHALLENGE_FIELD = 'x-gateway-challenge';
/** The answer: base64url(HMAC-SHA256(WORKSPACE_KEY, "proof\0" + id + "\0" + nonce)). */
const PROOF_FIELD = 'x-gateway-proof';
const NONCE = /^[A-Za-z0-9_-]{22,128}$/;
/** The one path answered without the field: the image's own HEALTHCHECK curls it (codeserver/Dockerfile). */
const HEALTH_PATH = '/healthz';

/**
 * Whether a request may be served here.
 * @param {string | string[] | undefined} claimed the request's x-gateway-workspace (node:http joins repeats with ", ")
 * @param {string} own this workspace's id (WORKSPACE_ID)
 * @param {string | undefined} url the request target
 * @returns {'allow' | 'misdirected'}
 */
function decide(claimed, own, url) {
  if (claimed === undefined) {
    const target = url === undefined ? '' : url;
    const query = target.indexOf('?');
    return (query === -1 ? target : target.slice(0, query)) === HEALTH_PATH ? 'allow' : 'misdirected';
  }
  return typeof claimed === 'string' && own !== '' && claimed === own ? 'allow' : 'misdirected';
}

// Says nothing of which workspace this is: the caller was not meant to reach it.
const BODY = 'Misdirected Request\n';
const REFUSAL_FIELDS = {
  [MISDIRECTED_FIELD]: '1',
  'content-type': 'text/plain; charset=utf-8',
  'content-length': String(Buffer.byteLength(BODY)),
  'cache-control': 'no-store',
  connection: 'close',
};
/** The same answer written on an upgrade's (or CONNECT's) socket, which is then closed. */
const REFUSAL_ON_SOCKET = `HTTP/1.1 421 Misdirected Request\r\n${Object.entries(REFUSAL_FIELDS).map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n${BODY}`;

/**
 * The proof that the holder of `key` (this start's WORKSPACE_KEY) is workspace `id`, bound to the
 * gateway's `nonce`: a proof seen on one connection says nothing on the next.
 * @param {string} key @param {string} id @param {string} nonce
 */
function proof(key, id, nonce) {
  return require('node:crypto').createHmac('sha256', key).update(`proof\0${id}\0${nonce}`).digest('base64url');
}

/**
 * Answers the gateway's challenge, if `req` is one (`OPTIONS *` with CHALLENGE_FIELD): 204 with the
 * proof, the connection kept for the requests that follow; 421 with the marker when it names another
 * workspace; 204 without a proof when this workspace has no key (the gateway takes it as unproven).
 * Returns false for any other request, which goes on as it came.
 * @param {import('node:http').IncomingMessage} req
 * @param {import('node:http').ServerResponse} res
 * @param {string} own @param {string | undefined} key
 */
function answerChallenge(req, res, own, key) {
  if (req.method !== 'OPTIONS' || req.url !== '*' || req.headers[CHALLENGE_FIELD] === undefined) return false;
  const claimed = req.headers[WORKSPACE_FIELD];
  if (typeof claimed !== 'string' || own === '' || claimed !== own) { refuse(res); return true; }
  const nonce = req.headers[CHALLENGE_FIELD];
  /** @type {Record<string, string>} */
  const fields = { 'cache-control': 'no-store' };
  if (key && typeof nonce === 'string' && NONCE.test(nonce)) fields[PROOF_FIELD] = proof(key, own, nonce);
  res.writeHead(204, fields);
  res.end();
  return true;
}

/** @param {import('node:http').ServerResponse} res */
function refuse(res) {
  res.writeHead(421, 'Misdirected Request', REFUSAL_FIELDS);
  res.end(BODY);
}

/** @param {import('node:stream').Duplex} socket */
function refuseSocket(socket) {
  socket.on('error', () => socket.destroy());
  socket.end(REFUSAL_ON_SOCKET, () => socket.destroy());
}

/**
 * Guards `server`: every request and upgrade it receives is checked before its own listeners see it.
 * @param {import('node:http').Server} server
 * @param {string} own
 */
function guard(server, own) {
  server[kOwn] = own;
}

const kOwn = Symbol('workspace-identity own id');

/**
 * The preload: wraps net.Server's emit once, so a server found listening on `port` is guarded from
 * its first request. Other servers (and other processes that inherit NODE_OPTIONS) are untouched.
 * @param {NodeJS.ProcessEnv} env
 */
function install(env) {
  const own = env.WORKSPACE_ID;
  const port = Number(env.WORKSPACE_PORT);
  if (!own || !Number.isInteger(port) || port <= 0) return false;
  // Read now, left in the environment until the guarded server listens (then deleted with the
  // preload, below): code-server's first process forks the one that listens with its own
  // environment (its wrapper, and again on each SIGUSR1 restart), which needs the key too.
  const key = env.WORKSPACE_KEY || undefined;
  // net.Server's, not http.Server's: with --cert code-server's server is httpolyglot's, an
  // https.Server (a tls.Server) that answers plain HTTP too, and it must be guarded all the same.
  const net = require('node:net');
  const emit = net.Server.prototype.emit;
  net.Server.prototype.emit = function guardedEmit(event, a, b) {
    if (this[kOwn] !== undefined) {
      if (event === 'request' || event === 'checkContinue' || event === 'checkExpectation') {
        if (event === 'request' && answerChallenge(a, b, this[kOwn], key)) return true;
        if (decide(a.headers[WORKSPACE_FIELD], this[kOwn], a.url) !== 'allow') { refuse(b); return true; }
        b.writeHead = writeHeadUnmarked;
      } else if (event === 'upgrade' || event === 'connect') {
        if (decide(a.headers[WORKSPACE_FIELD], this[kOwn], a.url) !== 'allow') { refuseSocket(b); return true; }
        b[kWrite] = b.write;
        b.write = firstWriteUnmarked;
      }
    } else if (event === 'listening') {
      const address = this.address();
      if (address !== null && typeof address === 'object' && address.port === port) {
        guard(this, own);
        // What this process starts from now on (extension host, pty host, the student's shells and
        // programs) does not need the preload, nor the key: only this server is the workspace's front
        // door, and a key a terminal could print is one a program of the student's could leak.
        forgetPreload(env);
        delete env.WORKSPACE_KEY;
      }
    }
    return emit.apply(this, arguments);
  };
  return true;
}

// Only this preload's refusal may carry the marker. An answer the guarded server lets through can
// come from a student's own app (code-server's /proxy/<port> passes its fields on): a marked 421
// there would make the gateway re-check the student's own workspace, asking the provisioner (AWS)
// each time, so the marker is dropped from it.
const baseWriteHead = require('node:http').ServerResponse.prototype.writeHead;

/** @param {[string, unknown][] | unknown[] | Record<string, unknown>} fields writeHead's fields, in any form it takes */
function withoutMarker(fields) {
  const other = (name) => String(name).toLowerCase() !== MISDIRECTED_FIELD;
  if (!Array.isArray(fields)) return Object.fromEntries(Object.entries(fields).filter(([name]) => other(name)));
  if (fields.length > 0 && Array.isArray(fields[0])) return fields.filter((pair) => other(pair[0]));
  const kept = [];
  for (let i = 0; i + 1 < fields.length; i += 2) if (other(fields[i])) kept.push(fields[i], fields[i + 1]);
  return kept;
}

/** ServerResponse#writeHead for an allowed request; node calls it for implicit heads too. */
function writeHeadUnmarked(statusCode, reason, fields) {
  const writeHead = baseWriteHead;
  if ((statusCode | 0) !== 421) return writeHead.apply(this, arguments);
  this.removeHeader(MISDIRECTED_FIELD);
  if (typeof reason === 'string' || reason === undefined) {
    return fields !== null && typeof fields === 'object' ? writeHead.call(this, statusCode, reason, withoutMarker(fields)) : writeHead.call(this, statusCode, reason);
  }
  return reason !== null && typeof reason === 'object' ? writeHead.call(this, statusCode, withoutMarker(reason)) : writeHead.apply(this, arguments);
}

const kWrite = Symbol('workspace-identity write');
const MARKER_LINE = new RegExp(`\\r\\n${MISDIRECTED_FIELD}:[^\\r\\n]*`, 'gi');
/**
 * An allowed upgrade's socket, first write only: code-server's proxy writes the head of an app's
 * answer to a refused upgrade in one piece. The socket's own write is back after it.
 */
function firstWriteUnmarked(chunk, ...rest) {
  this.write = this[kWrite];
  const start = typeof chunk === 'string' ? chunk.slice(0, 13) : Buffer.isBuffer(chunk) ? chunk.toString('latin1', 0, 13) : '';
  if (!/^HTTP\/1\.[01] 421 $/.test(start)) return this.write(chunk, ...rest);
  const text = typeof chunk === 'string' ? chunk : chunk.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  const head = end === -1 ? text : text.slice(0, end);
  const kept = head.replace(MARKER_LINE, '') + text.slice(head.length);
  return this.write(typeof chunk === 'string' ? kept : Buffer.from(kept, 'latin1'), ...rest);
}

/** Takes this file's --require out of NODE_OPTIONS, whichever way it was spelled or quoted. */
function forgetPreload(env) {
  const options = env.NODE_OPTIONS;
  if (options === undefined) return;
  const tokens = nodeOptionTokens(options);
  const kept = [];
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i];
    const joined = /^(?:--require|-r)=/.exec(token);
    if (joined !== null && isThisFile(token.slice(joined[0].length))) continue;
    if ((token === '--require' || token === '-r') && i + 1 < tokens.length && isThisFile(tokens[i + 1])) { i++; continue; }
    kept.push(nodeOption(token));
  }
  if (kept.length === 0) delete env.NODE_OPTIONS; else env.NODE_OPTIONS = kept.join(' ');
}

/**
 * One NODE_OPTIONS word as Node reads it back: in double quotes, with `"` and `\` escaped, when it
 * holds white space, a quote or a backslash (a folder named `a b "c"`), else as it is.
 * @param {string} token
 */
function nodeOption(token) {
  return /[\s"\\]/.test(token) ? `"${token.replace(/["\\]/g, '\\$&')}"` : token;
}

/** Whether `path` names this file, as Node loaded it: by its real path (an image may link it in). */
function isThisFile(path) {
  if (path === __filename) return true;
  try { return require('node:fs').realpathSync(path) === __filename; } catch { return false; }
}

/** NODE_OPTIONS split as Node splits it: on white space outside double quotes, backslash escapes inside. */
function nodeOptionTokens(options) {
  const tokens = [];
  let token = '';
  let started = false;
  let quoted = false;
  for (let i = 0; i < options.length; i++) {
    const c = options[i];
    if (quoted && c === '\\' && i + 1 < options.length) { token += options[++i]; continue; }
    if (c === '"') { quoted = !quoted; started = true; continue; }
    if (!quoted && /\s/.test(c)) { if (started) tokens.push(token); token = ''; started = false; continue; }
    token += c;
    started = true;
  }
  if (started) tokens.push(token);
  return tokens;
}

module.exports = { WORKSPACE_FIELD, MISDIRECTED_FIELD, CHALLENGE_FIELD, PROOF_FIELD, decide, proof, answerChallenge, refuse, refuseSocket, guard, install, forgetPreload, nodeOption };

// Preloaded by --require (not imported by a module): guard this process's WORKSPACE_PORT server.
// module.parent is deprecated in documentation only (DEP0144); Node names a preload's parent so.
if (module.parent != null && module.parent.id === 'internal/preload') install(process.env);
