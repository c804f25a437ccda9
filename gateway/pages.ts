// The gateway's own pages: self-contained HTML (no external assets: the workspace host serves
// nothing else of ours), small, and safe to show before the workspace exists.

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

const STYLE = `body{font:16px/1.5 system-ui,sans-serif;margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;background:#1e1e1e;color:#ddd}
main{max-width:34rem;padding:2rem}h1{font-size:1.4rem;font-weight:600;color:#fff}.code{color:#888;font-size:.8rem}
.bar{height:4px;background:#333;border-radius:2px;overflow:hidden;margin:1rem 0}.bar i{display:block;height:100%;width:0;background:#3794ff;transition:width .4s}
button{font:inherit;padding:.4rem 1rem;border:0;border-radius:4px;background:#3794ff;color:#fff;cursor:pointer}.err{color:#f48771}`;

export function page(title: string, body: string, script = ''): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">`
    + `<meta name="robots" content="noindex"><title>${escapeHtml(title)}</title><style>${STYLE}</style></head>`
    + `<body><main>${body}</main>${script ? `<script>${script}</script>` : ''}</body></html>`;
}

export interface StatusView {
  state: string;
  generation: number;
  stage?: string;
  queuePosition?: number;
  /** ms since the start was requested. */
  elapsedMs?: number;
  reasonCode?: string;
  reason?: string;
  /** Why the previous generation stopped (shown while starting again: "stopped after being idle"). */
  previousStop?: string;
}

const STAGE_TEXT: Record<string, string> = {
  queued: 'Waiting for a free slot',
  provisioning: 'Reserving a machine',
  pending: 'Downloading your workspace',
  running: 'Booting your workspace',
  probing: 'Waiting for the editor to answer',
  ready: 'Ready',
};

/**
 * The starting page. It answers at once (the load balancer's idle timeout is far shorter than a
 * Fargate start), long-polls /__gateway/status on this host, and reloads the address the student
 * asked for once the workspace is ready. A failed start waits for a click; it never loops by itself.
 * A workspace that is stopped (a stop under way when the page was loaded has ended) is reloaded a
 * second later, as the page load that starts it: the status poll never starts anything, and it
 * answers a stopped workspace at once, so polling again was a loop with no end.
 */
export function startingPage(view: StatusView, nonce: string): { html: string; csp: string } {
  const initial = JSON.stringify(view).replace(/</g, '\\u003c');
  const stages = JSON.stringify(STAGE_TEXT);
  const body = `<h1 id="t">Starting your workspace</h1><p id="s">…</p><div class="bar"><i id="b"></i></div>`
    + `<p class="code" id="e"></p><p id="n"></p><p id="f" class="err" hidden></p><p><button id="r" hidden>Try again</button></p>`;
  const script = `(function(){var st=${initial},S=${stages},order=['queued','provisioning','pending','running','probing','ready'],t0=Date.now()-(st.elapsedMs||0),busy=false;
function $(i){return document.getElementById(i)}
function show(v){st=v;var f=v.state==='failed';$('t').textContent=f?'Your workspace could not start':v.state==='running'?'Opening your workspace':'Starting your workspace';
var s=v.stage||(v.state==='stopped'?'queued':'');$('s').textContent=f?'':(S[s]||'Preparing')+(v.stage==='queued'&&v.queuePosition?' (position '+v.queuePosition+' in line)':'');
$('b').style.width=f?'0':(Math.max(5,(order.indexOf(s)+1)/order.length*100))+'%';
$('n').textContent=v.previousStop==='idle'?'It was stopped after being idle. Your files are kept.':v.previousStop==='max_session'?'It was stopped after its maximum session length. Your files are kept.':v.previousStop==='unproven'?'It was restarted because it could not prove itself to the gateway (its key was out of date). Your files are kept.':'';
$('f').hidden=!f;$('f').textContent=f?(v.reason||'The start failed.')+(v.reasonCode?' ['+v.reasonCode+']':''):'';$('r').hidden=!f;
if(typeof v.elapsedMs==='number')t0=Date.now()-v.elapsedMs}
function tick(){if(st.state!=='failed')$('e').textContent=Math.round((Date.now()-t0)/1000)+' s'}
function poll(){fetch('/__gateway/status?wait=1&generation='+st.generation+'&stage='+(st.stage||'')+'&state='+st.state,{cache:'no-store',credentials:'same-origin'})
.then(function(r){if(r.status===401){location.reload();throw 0}return r.json()}).then(function(v){show(v);if(v.state==='running'){location.reload();return}if(v.state==='stopped'){setTimeout(function(){location.reload()},1000);return}if(v.state!=='failed')poll()})
.catch(function(e){if(e!==0)setTimeout(poll,2000)})}
$('r').onclick=function(){if(busy)return;busy=true;fetch('/__gateway/start',{method:'POST',credentials:'same-origin',headers:{'x-requested-with':'gateway'}}).then(function(r){return r.json()}).then(function(v){busy=false;show(v);poll()}).catch(function(){busy=false})};
show(st);setInterval(tick,1000);tick();if(st.state==='running')location.reload();else if(st.state!=='failed')poll()})()`;
  const html = page('Starting your workspace', body, script).replace('<script>', `<script nonce="${nonce}">`);
  const csp = `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'`;
  return { html, csp };
}
