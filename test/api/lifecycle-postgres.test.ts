// The lifecycle on Postgres, where transactions really run in parallel (PGlite has one
// connection): 30 concurrent start-planning calls for ONE task make exactly one session and take
// one host slot (the task row is locked first, so later calls resume the session the first made);
// 30 concurrent starts of 30 tasks on 6 free slots place exactly 6 and leave the other 24 tasks in
// backlog (the claim and the task's status commit or roll back together); a crash state left in
// the store (a task in planning with no session) is settled by the sweeper. Skips, saying why,
// when no Postgres server answers.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { MemoryDriver, World } from "../host/host-harness.ts";
import { postgresBackend, postgresSkipReason, type TestBackend } from "../store/store-backends.ts";

/** Same session, same lobby: what the process driver does for a repeated create. */
class DedupDriver extends MemoryDriver {
  override async create(spec: Parameters<MemoryDriver["create"]>[0]) {
    return this.list().find((l) => l.sessionId === spec.sessionId) ?? super.create(spec);
  }
}

const skip = await postgresSkipReason();

describe("start-planning on Postgres under concurrency", { skip: skip ?? false }, () => {
  let backend: TestBackend & { databaseUrl: string };
  let w: World;
  let driver: DedupDriver;

  before(async () => {
    backend = await postgresBackend();
    w = await new World({
      databaseUrl: backend.databaseUrl,
      lifecycle: { intervalMs: 100, startingTimeoutMs: 60_000 },
    }).start();
    driver = new DedupDriver();
    await w.startHost("pg1", { driver, maxSandboxes: 6 });
  });
  after(async () => {
    await w?.close();
    await backend?.dispose();
  });

  const load = async () =>
    (
      await w.call<{ id: string; connected_sandboxes: number }[]>("GET", "/api/v1/wolf-instances", w.adminKey)
    ).body.find((h) => h.id === "pg1")?.connected_sandboxes;

  it("30 concurrent starts of one task: one session, one slot, one lobby", async () => {
    const u = await w.user("paula", 1);
    const answers = await Promise.all(Array.from({ length: 30 }, () => w.startPlanning(u.key, u.taskIds[0])));
    for (const a of answers) assert.equal(a.status, 200, JSON.stringify(a.body));
    assert.equal(new Set(answers.map((a) => a.body.session_id)).size, 1, "every call got the same session");
    assert.equal((await w.server.store.sessions.list({ specTaskId: u.taskIds[0] })).length, 1);
    assert.equal(await load(), 1);
    assert.equal(driver.list().length, 1);
  });

  it("30 concurrent starts of 30 tasks on 5 free slots: 5 placed, 25 tasks still in backlog", async () => {
    const u = await w.user("quinn", 30);
    const answers = await Promise.all(u.taskIds.map((t) => w.startPlanning(u.key, t)));
    assert.equal(answers.filter((a) => a.status === 200).length, 5);
    assert.equal(answers.filter((a) => a.status === 503).length, 25);
    assert.equal(await load(), 6);
    const tasks = await w.server.store.specTasks.list();
    const mine = tasks.filter((t) => u.taskIds.includes(t.id));
    assert.equal(mine.filter((t) => t.status === "planning").length, 5);
    assert.equal(mine.filter((t) => t.status === "backlog").length, 25, "a refused start leaves no trace");
    assert.equal(
      (await w.server.store.sessions.list({ ownerId: undefined })).length,
      6,
      "no failed sessions",
    );
  });

  it("a task left in planning with no session goes back to backlog", async () => {
    const u = await w.user("rosa", 1);
    assert.ok(await w.server.store.specTasks.setStatus(u.taskIds[0], "planning", ["backlog"]));
    await w.until(
      async () => (await w.server.store.specTasks.get(u.taskIds[0]))?.status === "backlog",
      "task released",
    );
  });
});
