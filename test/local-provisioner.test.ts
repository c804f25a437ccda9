// The local provisioner stops a workspace's whole process tree, as stopping a Fargate task does:
// code-server forks an extension host and a pty host, and one of those was seen outliving its server.
// A stand-in for code-server (same command line) forks a helper that ignores SIGTERM.
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { createLocalProvisioner } from '../provisioner/local.js';

const STAND_IN = `#!/usr/bin/env node
const http = require('node:http');
const { spawn } = require('node:child_process');
const { writeFileSync } = require('node:fs');
const bind = process.argv[process.argv.indexOf('--bind-addr') + 1];
const helper = spawn('sh', ['-c', 'trap "" TERM; while :; do sleep 1; done'], { stdio: 'ignore' });
writeFileSync(process.env.HOME + '/helper.pid', String(helper.pid));
http.createServer((req, res) => res.end('ok')).listen(Number(bind.split(':')[1]), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
`;

/** Running, not a zombie waiting for an init that reaps slowly (kill(pid, 0) succeeds on those). */
const alive = (pid: number) => {
  try { return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8')); } catch { return false; }
};

t.test('stopping a workspace ends every process it started, even one ignoring SIGTERM', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'wsgw-local-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bin = join(dir, 'code-server-stand-in.cjs');
  writeFileSync(bin, STAND_IN);
  chmodSync(bin, 0o755);
  const provisioner = createLocalProvisioner({ workspace: 'code-server', dataDir: join(dir, 'data'), codeServerBin: bin, demoReadyDelayMs: 0 });
  t.teardown(() => provisioner.close());
  for (const how of ['stop', 'close'] as const) {
    const id = `tree-${how}`;
    const started = await provisioner.start({ workspaceId: id, generation: 1, signal: new AbortController().signal, onStage: () => undefined });
    const helper = Number(readFileSync(join(dir, 'data', id, 'home', 'helper.pid'), 'utf8'));
    t.ok(alive(helper), `${how}: the helper runs`);
    if (how === 'stop') await provisioner.stop(id, started.handle, 'test'); else await provisioner.close();
    for (let i = 0; i < 40 && alive(helper); i++) await new Promise((r) => setTimeout(r, 25));
    t.notOk(alive(helper), `${how}: the helper is gone too`);
    t.notOk(alive(Number(started.handle)), `${how}: the server is gone`);
  }
});
