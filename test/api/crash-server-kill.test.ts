// A real kill -9 of the API (`revdial server`, a process) while start-planning calls are in flight,
// with a real `revdial wolf run` host and real Xvfb sandboxes. The moment of the kill is not
// controlled (crash-start-planning.test.ts pins each step precisely); whatever it cut, the server
// restarted on the same data dir and port settles every state within the sweeper's DEFAULT bound
// (45 s starting + 15 s interval): no task in `planning` without a running session, no session
// `starting`, every running session's lobby listed by its host, and the host's count equal to the
// lobbies it runs.

import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import type { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { missingTools } from "../agent/desktop/xvfb.ts";
import { MAIN } from "../e2e/cli-harness.ts";

const SETTLE_MS = 75_000;

interface Proc {
  child: ChildProcess;
  url: string;
}

function spawnRevdial(args: string[], env: Record<string, string>, ready: RegExp): Promise<Proc> {
  const child = spawn(process.execPath, [MAIN, ...args], {
    env: { ...process.env, REVDIAL_LOG_LEVEL: "warn", ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  return (async () => {
    let url = "";
    for await (const line of createInterface({ input: child.stdout as Readable })) {
      url ||= /^listening on (\S+)/.exec(line)?.[1] ?? "";
      if (ready.test(line)) break;
    }
    return { child, url };
  })();
}

/** Sandboxes a host process runs: its lobby-launcher children. */
function launchersOf(pid: number): number {
  let out = "";
  try {
    out = execFileSync("ps", ["-o", "args=", "--ppid", String(pid)], { encoding: "utf8" });
  } catch {
    // ps exits 1 when the host has no child.
  }
  return out.split("\n").filter((l) => l.includes("lobby-launcher")).length;
}

async function stop(p: Proc | null, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (!p || p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill(signal);
  await once(p.child, "exit");
}

describe("kill -9 of the API during start-planning", { skip: missingTools("Xvfb") }, () => {
  let dir: string;
  let api: Proc | null = null;
  let host: Proc | null = null;
  let url = "";
  let admin = "";

  const call = async <T>(
    method: string,
    path: string,
    body?: unknown,
  ): Promise<{ status: number; body: T }> => {
    const res = await fetch(url + path, {
      method,
      headers: { authorization: `Bearer ${admin}`, ...(body ? { "content-type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    return { status: res.status, body: (await res.json().catch(() => null)) as T };
  };

  async function until(check: () => Promise<boolean>, what: string, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (let wait = 50; !(await check().catch(() => false)); wait = Math.min(wait * 2, 1_000)) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, wait));
    }
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "revdial-apikill-"));
  });
  after(async () => {
    await stop(host);
    await stop(api);
    await rm(dir, { recursive: true, force: true });
  });

  const startApi = (listen: string) =>
    spawnRevdial(["server", "--listen", listen, "--data-dir", join(dir, "data")], {}, /^listening on /);

  it("whatever the kill cut, the restarted API settles every state within its bound", async () => {
    api = await startApi("127.0.0.1:0");
    url = api.url;
    admin = (await readFile(join(dir, "data", "admin.key"), "utf8")).trim();
    const created = await call<{ key: string }>("POST", "/api/v1/wolf-instances", {
      id: "h",
      max_sandboxes: 4,
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    host = await spawnRevdial(
      ["wolf", "run", "--id", "h", "--max-sandboxes", "4", "--heartbeat", "500ms"],
      { REVDIAL_URL: url, REVDIAL_TOKEN: created.body.key },
      /^Wolf instance h running/,
    );
    const fork = await call<{ tasks: { id: string }[] }>("POST", "/api/v1/sample-projects/simple/fork", {
      sample_project_id: "modern-todo-app",
    });
    assert.equal(fork.status, 201, JSON.stringify(fork.body));
    const taskIds = fork.body.tasks.slice(0, 3).map((t) => t.id);
    await until(
      async () => (await call<unknown[]>("GET", "/api/v1/wolf-instances")).body.length === 1,
      "host",
      20_000,
    );
    // Three starts in flight, and the API killed while they run.
    const inFlight = taskIds.map((t) =>
      call("POST", `/api/v1/spec-tasks/${t}/start-planning`, {}).catch(() => null),
    );
    await new Promise((r) => setTimeout(r, 300));
    await stop(api, "SIGKILL");
    await Promise.all(inFlight);

    api = await startApi(new URL(url).host);
    const settled = async () => {
      const tasks = (await call<{ id: string; status: string }[]>("GET", "/api/v1/spec-tasks")).body;
      const sessions = (
        await call<{ id: string; status: string; spec_task_id: string | null }[]>("GET", "/api/v1/sessions")
      ).body;
      if (sessions.some((s) => s.status === "starting" || s.status === "stopping")) return false;
      for (const t of tasks.filter((t) => taskIds.includes(t.id))) {
        const live = sessions.filter((s) => s.spec_task_id === t.id && s.status === "running");
        if (t.status === "planning" ? live.length !== 1 : live.length !== 0) return false;
      }
      const [wolf] = (
        await call<{ connected_sandboxes: number; tunnel_connected: boolean }[]>(
          "GET",
          "/api/v1/wolf-instances",
        )
      ).body;
      const running = sessions.filter((s) => s.status === "running").length;
      return wolf.tunnel_connected && wolf.connected_sandboxes === running;
    };
    await until(settled, "every state settled", SETTLE_MS);
    // The host agrees: the sandboxes it runs (its lobby-launcher children) are the running sessions.
    const running = (await call<{ status: string }[]>("GET", "/api/v1/sessions")).body.filter(
      (s) => s.status === "running",
    ).length;
    await until(async () => launchersOf(host!.child.pid!) === running, "host runs exactly those", 20_000);
  });
});
