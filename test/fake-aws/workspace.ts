// The workspace a fake ECS task "runs": a real HTTP server on the task's private address, so a
// provisioner's health probe and a gateway's proxy reach something real. Pluggable: gateway tests
// pass a factory that starts the demo workspace instead.
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { startDemoWorkspace } from '../../provisioner/demo-workspace.js';
import { answerChallenge } from '../../codeserver/workspace-identity.cjs';

export interface WorkspaceTaskInfo {
  taskArn: string;
  /** From the task's `workspace-id` / `generation` tags, when the caller set them. */
  workspaceId?: string;
  generation?: number;
  /** The task's private IPv4 (a distinct 127.x.y.z loopback address) and the port to listen on. */
  host: string;
  port: number;
  /** Container environment after RunTask overrides (base definition + overrides). */
  environment: Record<string, string>;
}

export interface WorkspaceInstance {
  close(): Promise<void>;
}

/** Starts whatever answers at host:port for one task; a rejection makes the task's container exit. */
export type WorkspaceFactory = (info: WorkspaceTaskInfo) => Promise<WorkspaceInstance>;

export function listen(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

export function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

/**
 * A tiny stand-in for code-server: `/healthz` like code-server's, `/` names the workspace; the
 * gateway's challenge answered with the task's WORKSPACE_KEY, as the image's preload does.
 */
export const tinyWorkspace: WorkspaceFactory = async (info) => {
  const server = createServer((req, res) => {
    if (answerChallenge(req, res, info.workspaceId ?? '', info.environment.WORKSPACE_KEY)) return;
    if (req.url === '/healthz') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ status: 'alive', lastHeartbeat: Date.now() }));
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(`<!doctype html><title>workspace ${info.workspaceId ?? ''}</title><p>workspace ${info.workspaceId ?? ''} generation ${info.generation ?? ''} task ${info.taskArn}</p>`);
  });
  await listen(server, info.host, info.port);
  return { close: () => closeServer(server) };
};

/** Each task runs the real demo workspace on its private address, its files under `dir`. */
export const demoTasks = (dir: string): WorkspaceFactory => async (info) => {
  const demo = startDemoWorkspace({ host: info.host, port: info.port, dataDir: join(dir, info.workspaceId ?? 'x'), id: info.workspaceId ?? 'x', readyDelayMs: 0, key: info.environment.WORKSPACE_KEY });
  await demo.listen();
  return { close: () => demo.close() };
};
