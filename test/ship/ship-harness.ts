// What the shipping tests share: a server started from a given command (its URL and admin key read
// the way a user reads them), a local HTTP service for agents to expose, and one call through a
// tunnel, retried until the agent has registered (bounded).

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { createInterface } from "node:readline";

export const ROOT = join(import.meta.dirname, "..", "..");

export interface StartedServer {
  child: ChildProcess;
  url: string;
  adminKey: string;
  stop(): Promise<void>;
}

/** Runs `argv` (a `revdial server` command), waits for "listening on URL", reads data/admin.key. */
export async function startServer(
  argv: string[],
  dataDir: string,
  env: NodeJS.ProcessEnv,
  cwd: string,
): Promise<StartedServer> {
  const child = spawn(argv[0], argv.slice(1), { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr!.on("data", (c: Buffer) => {
    stderr += c.toString();
  });
  let url = "";
  for await (const line of createInterface({ input: child.stdout! })) {
    const m = /^listening on (\S+)/.exec(line);
    if (m) {
      url = m[1];
      break;
    }
  }
  assert.ok(url, `the server printed its URL; stderr: ${stderr}`);
  child.stdout!.resume();
  const adminKey = (await readFile(join(dataDir, "admin.key"), "utf8")).trim();
  return { child, url, adminKey, stop: () => stopChild(child) };
}

export async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
  await once(child, "exit");
  clearTimeout(timer);
}

/** A local service that answers every request with its method and path, for an agent to expose. */
export async function startTarget(): Promise<{ port: number; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    res.setHeader("content-type", "text/plain");
    res.end(`served ${req.method} ${req.url}`);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

/**
 * GET `path` through the tunnel of `runnerId`, retried while the agent has not registered yet
 * (the API answers 502/503/504 for a runner it does not know), for at most `timeoutMs`.
 */
export async function callThrough(
  server: { url: string; adminKey: string },
  runnerId: string,
  path: string,
  agent: ChildProcess,
  timeoutMs = 30_000,
): Promise<{ status: number; body: string }> {
  const deadline = Date.now() + timeoutMs;
  let last = { status: 0, body: "" };
  for (let wait = 50; Date.now() < deadline; wait = Math.min(wait * 2, 500)) {
    assert.equal(agent.exitCode, null, "the agent is still running");
    const res = await fetch(`${server.url}/api/v1/revdial/${runnerId}/proxy${path}`, {
      headers: { authorization: `Bearer ${server.adminKey}` },
    });
    last = { status: res.status, body: await res.text() };
    if (res.status === 200) return last;
    await new Promise((r) => setTimeout(r, wait));
  }
  return last;
}
