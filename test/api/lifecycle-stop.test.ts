// Stopping cuts the sandbox off at once, and stop works on a host that is offline. Real server,
// real hosts (WolfHost) and real sandbox agents (crash-harness.ts) that outlive their lobby the way
// an orphan does when its host dies with kill -9:
// - a stopped session's live tunnel is evicted when the stop answers, its key is revoked so the
//   orphan's reconnects are refused (401), screenshots serve the paused final image, clipboard
//   writes fail;
// - a host dies: a stop is recorded (202, `stopping`, task back in backlog, tunnel cut at once);
//   a session whose sandbox died with the host becomes `stopping` by itself; when the host returns
//   with its leftover lobbies, both are stopped on it and the sessions are `stopped`.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { World } from "../host/host-harness.ts";
import { type FakeDesktop, PNG_BYTES, startFakeDesktop } from "./control-plane-harness.ts";
import { AgentDriver } from "./crash-harness.ts";
import { handshake } from "./tunnel-handshake.ts";

interface SessionRow {
  status: string;
  sandbox_connected: boolean;
}

describe("stop cuts the sandbox off; stop on an offline host", () => {
  let w: World;
  let desktop: FakeDesktop;
  let driver: AgentDriver;
  let u: { key: string; taskIds: string[] };

  before(async () => {
    desktop = await startFakeDesktop();
    w = await new World({
      lifecycle: { intervalMs: 100, startingTimeoutMs: 5_000, hostCallTimeoutMs: 2_000 },
    }).start();
    driver = new AgentDriver(new URL(desktop.url).host);
    await w.startHost("h1", { driver, maxSandboxes: 5 });
    u = await w.user("erin", 4);
  });
  after(async () => {
    await driver.destroy();
    await w.close();
    await desktop.close();
  });

  const session = async (id: string) =>
    (await w.call<SessionRow>("GET", `/api/v1/sessions/${id}`, u.key)).body;
  const task = async (id: string) =>
    (await w.call<{ status: string }>("GET", `/api/v1/spec-tasks/${id}`, u.key)).body.status;
  const connected = (id: string) => w.server.registry.isConnected(`sandbox-${id}`);
  const hostCount = async () =>
    (
      await w.call<{ id: string; connected_sandboxes: number }[]>("GET", "/api/v1/wolf-instances", w.adminKey)
    ).body.find((h) => h.id === "h1")?.connected_sandboxes;

  async function running(taskId: string): Promise<string> {
    const res = await w.startPlanning(u.key, taskId);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const id = res.body.session_id;
    await w.until(async () => (await session(id)).status === "running" && connected(id), "sandbox running");
    return id;
  }

  it("a stopped session's tunnel is cut when the stop answers; its orphan cannot come back", async () => {
    const id = await running(u.taskIds[0]);
    driver.leak = true; // the host "stops" the lobby but its agent lives on
    const res = await w.call<{ status: string; session_id: string }>(
      "DELETE",
      `/api/v1/external-agents/${id}`,
      u.key,
    );
    driver.leak = false;
    assert.equal(res.status, 200);
    assert.equal(res.body.status, "stopped");
    assert.equal(connected(id), false, "the live tunnel is gone when the stop answers");
    // The orphan was evicted (it waits out the eviction's retry-after hint); its key is revoked, so
    // its next handshake is refused whenever it comes, and no retry of it ever got in.
    const again = await handshake(w.url, `sandbox-${id}`, driver.keys.get(id)!);
    assert.equal(again.status, 401, JSON.stringify(again.body));
    assert.ok(
      (driver.refusals.get(id) ?? []).every((s) => s === 401),
      JSON.stringify(driver.refusals.get(id)),
    );
    assert.equal(connected(id), false);
    const shot = await w.call("GET", `/api/v1/external-agents/${id}/screenshot`, u.key);
    assert.equal(shot.status, 200);
    assert.equal(shot.headers.get("x-paused-screenshot"), "true", "the final screenshot, not a live one");
    assert.deepEqual(shot.bytes, PNG_BYTES);
    const clip = await w.call("POST", `/api/v1/external-agents/${id}/clipboard`, u.key, {
      type: "text",
      data: "x",
    });
    assert.ok(clip.status >= 400, `clipboard write on a stopped session: ${clip.status}`);
    assert.equal(await task(u.taskIds[0]), "backlog", "the task can start again");
    await driver.destroy();
  });

  it("host dies: stop is recorded (202); the host returns with leftovers; both sessions end stopped", async () => {
    const stoppedByUser = await running(u.taskIds[1]);
    const diedWithHost = await running(u.taskIds[2]);
    const lobbyOf = (id: string) => driver.list().find((l) => l.sessionId === id)!.lobbyId;
    // kill -9 of the host: its tunnel and heartbeats stop, its lobbies are not stopped; one sandbox
    // dies with it, the other lives on (an orphan with its tunnel).
    driver.leak = true;
    await w.closeHost("h1");
    driver.leak = false;
    const deadLobby = lobbyOf(diedWithHost);
    await driver.agents.get(deadLobby)!.close();
    await w.until(async () => {
      const hosts = await w.call<{ id: string; status: string }[]>(
        "GET",
        "/api/v1/wolf-instances",
        w.adminKey,
      );
      return hosts.body.find((h) => h.id === "h1")?.status === "offline";
    }, "host offline");

    const res = await w.call<{ status: string; message: string }>(
      "DELETE",
      `/api/v1/external-agents/${stoppedByUser}`,
      u.key,
    );
    assert.equal(res.status, 202, JSON.stringify(res.body));
    assert.equal(res.body.status, "stopping");
    assert.match(res.body.message, /unreachable/);
    assert.equal((await session(stoppedByUser)).status, "stopping");
    assert.equal(connected(stoppedByUser), false, "the orphan's tunnel is cut at once");
    assert.equal(await task(u.taskIds[1]), "backlog");
    // The session whose sandbox died with its host is marked for stopping by the sweeper.
    await w.until(async () => (await session(diedWithHost)).status === "stopping", "dead sandbox: stopping");
    assert.equal(await task(u.taskIds[2]), "backlog");
    assert.equal(driver.list().length, 2, "both lobbies still on the (dead) host");

    await w.startHost("h1", { driver, maxSandboxes: 5 });
    await w.until(async () => (await session(stoppedByUser)).status === "stopped", "stopped on return");
    await w.until(async () => (await session(diedWithHost)).status === "stopped", "stopped on return");
    assert.equal(driver.list().length, 0, "the host stopped its leftover lobbies");
    assert.equal(await hostCount(), 0);
    assert.equal(connected(stoppedByUser), false);
    const shot = await w.call("GET", `/api/v1/external-agents/${stoppedByUser}/screenshot`, u.key);
    assert.equal(shot.headers.get("x-paused-screenshot"), "true", "paused, not a live screen");
  });

  it("a restarted host that kills a leftover and reports its exit ends a requested stop as stopped", async () => {
    await w.until(async () => (await hostCount()) === 0, "previous test settled");
    const id = await running(u.taskIds[3]);
    const lobbyId = driver.list().find((l) => l.sessionId === id)!.lobbyId;
    driver.leak = true;
    await w.closeHost("h1");
    driver.leak = false;
    await w.until(async () => {
      const hosts = await w.call<{ id: string; status: string }[]>(
        "GET",
        "/api/v1/wolf-instances",
        w.adminKey,
      );
      return hosts.body.find((h) => h.id === "h1")?.status === "offline";
    }, "host offline");
    const stop = await w.call("DELETE", `/api/v1/external-agents/${id}`, u.key);
    assert.equal(stop.status, 202);
    // What a restarted host does with what it finds: kill it, report the exit.
    await driver.kill(lobbyId);
    const report = await w.call<{ status: string }>(
      "POST",
      `/api/v1/wolf-instances/h1/lobbies/${lobbyId}/exited`,
      await w.hostKey("h1"),
      { session_id: id, exit_code: null, signal: "SIGKILL" },
    );
    assert.equal(report.status, 200, JSON.stringify(report.body));
    assert.equal(report.body.status, "stopped", "the stop the user asked for is done: stopped, not failed");
    assert.equal((await session(id)).status, "stopped");
    await w.startHost("h1", { driver, maxSandboxes: 5 });
  });
});
