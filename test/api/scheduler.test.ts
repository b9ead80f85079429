// Scheduling through a real server and real Wolf hosts (tunnels, registration, heartbeats) with an
// in-memory driver: spread by load, never above capacity, no overshoot under 50 concurrent starts,
// and a host that goes away is offline and skipped.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { NO_WOLF_AVAILABLE_MESSAGE } from "../../src/api/scheduler.ts";
import { MemoryDriver, World } from "../host/host-harness.ts";

interface WolfRow {
  id: string;
  status: string;
  connected_sandboxes: number;
  max_sandboxes: number;
}

describe("scheduler: least-loaded host, atomic claim", () => {
  let w: World;
  before(async () => {
    w = await new World().start();
  });
  after(async () => {
    await w.close();
  });

  async function loads(): Promise<Record<string, number>> {
    const res = await w.call<WolfRow[]>("GET", "/api/v1/wolf-instances", w.adminKey);
    return Object.fromEntries(res.body.map((h) => [h.id, h.connected_sandboxes]));
  }

  it("two hosts, twelve starts: spread by load, never above capacity, then 503", async () => {
    await w.startHost("alpha", { maxSandboxes: 4, driver: new MemoryDriver() });
    await w.startHost("beta", { maxSandboxes: 8, driver: new MemoryDriver() });
    const u = await w.user("spread", 13);
    const placed: string[] = [];
    let firstSession = "";
    for (const taskId of u.taskIds.slice(0, 12)) {
      const res = await w.startPlanning(u.key, taskId);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.match(res.body.session_id, /^ses_[0-9a-z]{26}$/);
      firstSession ||= res.body.session_id;
      assert.equal(res.body.task.status, "planning");
      const session = await w.call<{ wolf_instance_id: string; lobby_id: string; status: string }>(
        "GET",
        `/api/v1/sessions/${res.body.session_id}`,
        u.key,
      );
      assert.ok(session.body.lobby_id);
      assert.equal(session.body.status, "starting");
      placed.push(session.body.wolf_instance_id);
      const l = await loads();
      assert.ok(l.alpha <= 4 && l.beta <= 8, JSON.stringify(l));
      // Ratios stay within one slot of each other: the lower one is always chosen.
      assert.ok(Math.abs(l.alpha / 4 - l.beta / 8) <= 1 / 4 + 1e-9, JSON.stringify(l));
    }
    assert.deepEqual(await loads(), { alpha: 4, beta: 8 });
    // Ties at equal ratio go to the host with fewer sandboxes, then by id: alpha first.
    assert.equal(placed[0], "alpha");
    const full = await w.startPlanning(u.key, u.taskIds[12]);
    assert.equal(full.status, 503);
    assert.equal(
      (full.body as unknown as { error: { message: string } }).error.message,
      NO_WOLF_AVAILABLE_MESSAGE,
    );
    const task = await w.call<{ status: string }>("GET", `/api/v1/spec-tasks/${u.taskIds[12]}`, u.key);
    assert.equal(task.body.status, "backlog", "a refused start leaves the task in backlog");
    const again = await w.startPlanning(u.key, u.taskIds[0]);
    assert.equal(again.status, 200, "start-planning is idempotent: a task whose session is starting");
    assert.equal(again.body.session_id, firstSession, "...gets that session back, not a second one");
    assert.deepEqual(await loads(), { alpha: 4, beta: 8 }, "and takes no second slot");
  });

  it("50 concurrent starts on 10 free slots: exactly 10 start, 40 get 503", async () => {
    await w.closeHost("alpha");
    await w.closeHost("beta");
    await w.server.store.transaction(async (tx) => {
      for (const s of await tx.sessions.list({ status: "starting" }))
        await tx.sessions.setStatus(s.id, "stopped");
    });
    await w.startHost("gamma", { maxSandboxes: 4, driver: new MemoryDriver() });
    await w.startHost("delta", { maxSandboxes: 6, driver: new MemoryDriver() });
    const u = await w.user("burst", 50);
    const answers = await Promise.all(u.taskIds.map((t) => w.startPlanning(u.key, t)));
    const ok = answers.filter((a) => a.status === 200);
    const refused = answers.filter((a) => a.status === 503);
    assert.equal(ok.length, 10);
    assert.equal(refused.length, 40);
    for (const r of refused)
      assert.equal(
        (r.body as unknown as { error: { message: string } }).error.message,
        NO_WOLF_AVAILABLE_MESSAGE,
      );
    const l = await loads();
    assert.equal(l.gamma, 4);
    assert.equal(l.delta, 6);
  });

  it("a host that disconnects goes offline and the next start picks another", async () => {
    await w.server.store.transaction(async (tx) => {
      for (const s of await tx.sessions.list({ status: "starting" }))
        await tx.sessions.setStatus(s.id, "stopped");
    });
    const u = await w.user("failover", 2);
    await w.closeHost("delta");
    await w.until(async () => {
      const res = await w.call<WolfRow[]>("GET", "/api/v1/wolf-instances", w.adminKey);
      return res.body.find((h) => h.id === "delta")?.status === "offline";
    }, "delta offline");
    const res = await w.startPlanning(u.key, u.taskIds[0]);
    assert.equal(res.status, 200);
    const session = await w.call<{ wolf_instance_id: string }>(
      "GET",
      `/api/v1/sessions/${res.body.session_id}`,
      u.key,
    );
    assert.equal(session.body.wolf_instance_id, "gamma");
    await w.closeHost("gamma");
    const none = await w.startPlanning(u.key, u.taskIds[1]);
    assert.equal(none.status, 503, "no host with a live tunnel: refused at once");
  });
});
