// The lifecycle through a real server and a real host with the process driver (Xvfb + the sandbox
// agent per sandbox): start -> running, screenshot through sandbox-{id}; the API restarts with the
// sandbox running (counts right, tunnels back, screenshot again); stop keeps the final screenshot
// (served with X-Paused-Screenshot) and leaves no process of the sandbox's group; a sandbox that
// dies is reported; a host that lost a lobby while the API was away gets the session stopped.
// From the attacker's side: a user key cannot register wolf-*, a host, or stop another's session.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { TargetMap } from "../../src/agent/target-map.ts";
import { AgentClient } from "../../src/agent/tunnel-client.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { groupAlive } from "../../src/host/process-driver.ts";
import { missingTools } from "../agent/desktop/xvfb.ts";
import { MemoryDriver, World } from "../host/host-harness.ts";

const PNG = Buffer.from([0x89, 0x50, 0x4e, 0x47]);

interface SessionRow {
  status: string;
  sandbox_connected: boolean;
  wolf_instance_id: string;
  lobby_id: string;
}

describe("spectask lifecycle on a real host", { skip: missingTools("Xvfb") }, () => {
  let w: World;
  let alice: { key: string; taskIds: string[] };
  let bob: { key: string; taskIds: string[] };
  let sessionId: string;

  before(async () => {
    w = await new World().start();
    await w.startHost("proc", { maxSandboxes: 3, stopTimeoutMs: 3_000 });
    alice = await w.user("alice", 3);
    bob = await w.user("bob", 1);
  });
  after(async () => {
    await w.close();
  });

  const session = (id: string, key = alice.key) => w.call<SessionRow>("GET", `/api/v1/sessions/${id}`, key);
  const pidOf = (id: string) =>
    w.hosts
      .get("proc")!
      .driver.list()
      .find((l) => l.sessionId === id)?.pid ?? null;

  it("start: the session is placed, the sandbox dials in, status running, screenshot works", async () => {
    const res = await w.startPlanning(alice.key, alice.taskIds[0]);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    sessionId = res.body.session_id;
    await w.until(async () => (await session(sessionId)).body.sandbox_connected, "sandbox connected");
    const s = (await session(sessionId)).body;
    assert.equal(s.status, "running");
    assert.equal(s.wolf_instance_id, "proc");
    assert.ok(s.lobby_id);
    const shot = await w.call("GET", `/api/v1/external-agents/${sessionId}/screenshot`, alice.key);
    assert.equal(shot.status, 200);
    assert.deepEqual(shot.bytes.subarray(0, 4), PNG);
  });

  it("the API restarts with the sandbox running: counts right, tunnels back, screenshot again", async () => {
    await w.server.close();
    await w.startServer();
    const hosts = await w.call<{ id: string; connected_sandboxes: number }[]>(
      "GET",
      "/api/v1/wolf-instances",
      w.adminKey,
    );
    assert.equal(hosts.body.find((h) => h.id === "proc")?.connected_sandboxes, 1);
    await w.until(() => w.server.registry.isConnected("wolf-proc"), "host tunnel back", 40_000);
    await w.until(() => w.server.registry.isConnected(`sandbox-${sessionId}`), "sandbox tunnel back", 40_000);
    const shot = await w.call("GET", `/api/v1/external-agents/${sessionId}/screenshot`, alice.key);
    assert.equal(shot.status, 200);
    assert.equal((await session(sessionId)).body.status, "running", "the host still has the lobby");
  });

  it("another user cannot stop the session (404), a user key cannot register a host or wolf-*", async () => {
    const res = await w.call("DELETE", `/api/v1/external-agents/${sessionId}`, bob.key);
    assert.equal(res.status, 404);
    assert.equal((await session(sessionId)).body.status, "running");
    const reg = await w.call("POST", "/api/v1/wolf-instances/register", bob.key, { name: "evil" });
    assert.equal(reg.status, 403);
    const hb = await w.call("POST", "/api/v1/wolf-instances/proc/heartbeat", bob.key, {});
    assert.equal(hb.status, 403);
    const del = await w.call("DELETE", "/api/v1/wolf-instances/proc", bob.key);
    assert.equal(del.status, 403);
    const agent = new AgentClient({
      serverUrl: w.url,
      runnerId: "wolf-proc",
      token: bob.key,
      targets: new TargetMap({}, "127.0.0.1:9"),
      logger: silentLogger(),
      backoffBaseMs: 10_000,
    });
    const refused = new Promise<Error>((resolve) => agent.once("connect-error", resolve));
    void agent.start();
    const err = (await refused) as Error & { status?: number };
    await agent.close();
    assert.equal(err.status, 400);
    assert.ok(w.server.registry.isConnected("wolf-proc"), "the real host keeps its tunnel");
  });

  it("heartbeat for an unknown host is 404", async () => {
    const res = await w.call("POST", "/api/v1/wolf-instances/nosuch/heartbeat", w.adminKey, {});
    assert.equal(res.status, 404);
  });

  it("stop: final screenshot stored and served with X-Paused-Screenshot, no process left", async () => {
    const pgid = pidOf(sessionId);
    assert.ok(pgid && groupAlive(pgid));
    const res = await w.call<{ message: string; session_id: string }>(
      "DELETE",
      `/api/v1/external-agents/${sessionId}`,
      alice.key,
    );
    assert.equal(res.status, 200);
    assert.equal(res.body.session_id, sessionId);
    assert.equal(groupAlive(pgid), false, "every process of the sandbox's group is gone");
    assert.equal((await session(sessionId)).body.status, "stopped");
    const shot = await w.call("GET", `/api/v1/external-agents/${sessionId}/screenshot`, alice.key);
    assert.equal(shot.status, 200);
    assert.equal(shot.headers.get("x-paused-screenshot"), "true");
    assert.deepEqual(shot.bytes.subarray(0, 4), PNG);
    const hosts = await w.call<{ id: string; connected_sandboxes: number }[]>(
      "GET",
      "/api/v1/wolf-instances",
      w.adminKey,
    );
    assert.equal(hosts.body.find((h) => h.id === "proc")?.connected_sandboxes, 0);
  });

  it("a sandbox that dies is reported: the session fails and frees its slot", async () => {
    const res = await w.startPlanning(alice.key, alice.taskIds[1]);
    assert.equal(res.status, 200);
    const id = res.body.session_id;
    await w.until(async () => (await session(id)).body.sandbox_connected, "sandbox connected");
    const pgid = pidOf(id)!;
    process.kill(-pgid, "SIGKILL");
    await w.until(async () => (await session(id)).body.status === "failed", "session failed");
    await w.until(() => !groupAlive(pgid), "group gone");
  });
});

describe("host reconnect: lobbies gone while the API was away", () => {
  let w: World;
  after(async () => {
    await w.close();
  });

  it("sessions whose lobby the host no longer has are stopped", async () => {
    w = await new World().start();
    const driver = new MemoryDriver();
    await w.startHost("mem", { driver, maxSandboxes: 5 });
    const u = await w.user("carol", 2);
    const kept = (await w.startPlanning(u.key, u.taskIds[0])).body.session_id;
    const lost = (await w.startPlanning(u.key, u.taskIds[1])).body.session_id;
    await w.server.close();
    const lostLobby = driver.list().find((l) => l.sessionId === lost)!;
    driver.lobbies.delete(lostLobby.lobbyId);
    await w.startServer();
    const status = async (id: string) =>
      (await w.call<{ status: string }>("GET", `/api/v1/sessions/${id}`, u.key)).body.status;
    await w.until(async () => (await status(lost)) === "stopped", "lost session stopped", 40_000);
    assert.equal(await status(kept), "starting");
  });
});
