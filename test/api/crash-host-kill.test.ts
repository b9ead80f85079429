// kill -9 of a sandbox host (`revdial wolf run`, a real process, process driver, real Xvfb
// sandbox) with a running session, then the user's `spectask stop`: the API records it (202,
// `stopping`; the CLI says so) and cuts the sandbox's tunnel at once; a restarted `wolf run` with
// the same id is reconciled: the session is `stopped`, its screenshot is never a live screen (the
// sandbox died with its host, so there is no final image), and the host's count equals what it
// runs. Whatever the dead host left behind is killed by the test at the end (killing leftovers is
// the restarted host's job, tested with the host).

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import type { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { readBounded } from "../../src/api/routes/sandbox-call.ts";
import { groupAlive } from "../../src/host/process-driver.ts";
import { missingTools } from "../agent/desktop/xvfb.ts";
import { MAIN, revdial } from "../e2e/cli-harness.ts";
import { World } from "../host/host-harness.ts";

describe("kill -9 of a host with a running sandbox, then stop", { skip: missingTools("Xvfb") }, () => {
  let w: World;
  let host: ChildProcess | null = null;
  const leftovers: number[] = [];

  before(async () => {
    w = await new World({ lifecycle: { intervalMs: 200, startingTimeoutMs: 30_000 } }).start();
  });
  after(async () => {
    if (host && host.exitCode === null && host.signalCode === null) {
      host.kill("SIGTERM");
      await once(host, "exit");
    }
    for (const pgid of leftovers) if (groupAlive(pgid)) process.kill(-pgid, "SIGKILL");
    await w.close();
  });

  /** `revdial wolf run --id killme`; resolves once it says it runs. */
  async function startHostProcess(): Promise<ChildProcess> {
    const child = spawn(
      process.execPath,
      [
        MAIN,
        "wolf",
        "run",
        "--id",
        "killme",
        "--max-sandboxes",
        "2",
        "--heartbeat",
        "200ms",
        "--log-level",
        "warn",
      ],
      {
        env: { ...process.env, REVDIAL_URL: w.url, REVDIAL_TOKEN: await w.hostKey("killme", 2) },
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    for await (const line of createInterface({ input: child.stdout! }))
      if (line.startsWith("Wolf instance killme running")) break;
    await w.until(() => w.server.registry.isConnected("wolf-killme"), "wolf-killme connected");
    return child;
  }

  async function lobbyPgids(): Promise<number[]> {
    const res = await w.server.registry.request("wolf-killme", {
      target: "lobbies",
      method: "GET",
      path: "/lobbies",
    });
    const lobbies = JSON.parse((await readBounded(res.body as Readable, 1 << 20, 5_000)).toString()) as {
      pid: number | null;
    }[];
    return lobbies.map((l) => l.pid).filter((p): p is number => typeof p === "number");
  }

  const hostOf = async () =>
    (
      await w.call<{ id: string; status: string; connected_sandboxes: number }[]>(
        "GET",
        "/api/v1/wolf-instances",
        w.adminKey,
      )
    ).body.find((h) => h.id === "killme")!;

  it("stop is recorded while the host is dead and carried out when it returns; the tunnel is cut", async () => {
    host = await startHostProcess();
    const u = await w.user("kim", 1);
    const start = await w.startPlanning(u.key, u.taskIds[0]);
    assert.equal(start.status, 200, JSON.stringify(start.body));
    const id = start.body.session_id;
    const session = async () =>
      (await w.call<{ status: string }>("GET", `/api/v1/sessions/${id}`, u.key)).body.status;
    await w.until(() => w.server.registry.isConnected(`sandbox-${id}`), "sandbox connected", 60_000);
    leftovers.push(...(await lobbyPgids()));
    assert.equal(leftovers.length, 1);

    host.kill("SIGKILL");
    await once(host, "exit");
    await w.until(async () => (await hostOf()).status === "offline", "host offline");

    // The user's stop, through the CLI: it says the stop is recorded, not that it is done.
    const stop = await revdial(["spectask", "stop", id], { REVDIAL_URL: w.url, REVDIAL_API_KEY: u.key });
    assert.equal(stop.code, 0, stop.stderr);
    assert.match(stop.stdout, new RegExp(`^Session stopping: ${id}$`, "m"));
    assert.match(stop.stdout, /host killme is unreachable; its sandbox is stopped when it returns/);
    assert.doesNotMatch(stop.stdout, /Session stopped/);
    assert.equal(await session(), "stopping");
    assert.equal(w.server.registry.isConnected(`sandbox-${id}`), false, "tunnel cut when the stop answers");
    const task = await w.call<{ status: string }>("GET", `/api/v1/spec-tasks/${u.taskIds[0]}`, u.key);
    assert.equal(task.body.status, "backlog");

    host = await startHostProcess();
    await w.until(async () => (await session()) === "stopped", "session stopped when the host returns");
    assert.equal((await hostOf()).connected_sandboxes, (await lobbyPgids()).length, "count = what it runs");
    assert.equal(w.server.registry.isConnected(`sandbox-${id}`), false);
    // The sandbox died with its host (no orphans), so no final image could be taken: the stopped
    // session answers that its sandbox is gone, never with a live screen.
    const shot = await w.call<{ error: { code: string } }>(
      "GET",
      `/api/v1/external-agents/${id}/screenshot`,
      u.key,
    );
    assert.equal(shot.status, 503, shot.bytes.toString());
    assert.equal(shot.headers.get("x-paused-screenshot"), null);
  });
});
