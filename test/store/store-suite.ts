// The store suite, written once and run on every backend (store.test.ts): the same SQL must behave
// the same on PGlite and on a Postgres server.

import assert from "node:assert/strict";
import { after, before, it } from "node:test";
import { hasCode } from "../../src/common/errors.ts";
import { isSessionId, STORE_ERROR_CODES, type Store } from "../../src/store/index.ts";
import { manualClock, type TestBackend } from "./store-backends.ts";

export function defineStoreSuite(makeBackend: () => Promise<TestBackend>): void {
  let backend: TestBackend;
  let store: Store;
  const time = manualClock();

  before(async () => {
    backend = await makeBackend();
    store = await backend.open(time.clock);
  });
  after(async () => {
    await store?.close();
    await backend?.dispose();
  });

  it("creates users and refuses a taken name with a stable code", async () => {
    const alice = await store.users.create({ name: "alice" });
    assert.match(alice.id, /^usr_[0-9a-z]{26}$/);
    assert.equal(alice.admin, false);
    assert.deepEqual(await store.users.get(alice.id), alice);
    assert.equal((await store.users.getByName("alice"))?.id, alice.id);
    await assert.rejects(store.users.create({ name: "alice" }), (err) =>
      hasCode(err, STORE_ERROR_CODES.conflict),
    );
    assert.equal(await store.users.firstAdmin(), null);
    const root = await store.users.create({ name: "root", admin: true });
    assert.equal((await store.users.firstAdmin())?.id, root.id);
  });

  it("stores api keys by hash and finds them with their user", async () => {
    const bob = await store.users.create({ name: "bob" });
    const key = await store.apiKeys.create({
      userId: bob.id,
      keyHash: "a".repeat(64),
      keyPrefix: "rd-abcd",
      scope: "user",
      access: "read",
    });
    assert.equal(key.lastUsedAt, null);
    const found = await store.apiKeys.findByHash("a".repeat(64));
    assert.equal(found?.key.id, key.id);
    assert.equal(found?.user.name, "bob");
    assert.equal(found?.key.access, "read");
    assert.equal(await store.apiKeys.findByHash("b".repeat(64)), null);
    await store.apiKeys.touch(key.id);
    assert.ok((await store.apiKeys.findByHash("a".repeat(64)))?.key.lastUsedAt instanceof Date);
    // A session key must name its session; a user key must not.
    await assert.rejects(
      store.apiKeys.create({
        userId: bob.id,
        keyHash: "c".repeat(64),
        keyPrefix: "rds-x",
        scope: "session",
        access: "write",
      }),
    );
    assert.equal(await store.apiKeys.revoke(key.id), true);
    assert.equal(await store.apiKeys.findByHash("a".repeat(64)), null);
  });

  it("keeps projects and spec tasks, tasks in backlog by default, status moves only from allowed states", async () => {
    const carol = await store.users.create({ name: "carol" });
    const project = await store.projects.create({
      ownerId: carol.id,
      name: "P",
      sampleProjectId: "modern-todo-app",
    });
    const task = await store.specTasks.create({ projectId: project.id, name: "Fix delete bug" });
    assert.equal(task.status, "backlog");
    assert.equal(task.ownerId, carol.id);
    assert.deepEqual(
      (await store.projects.list({ ownerId: carol.id })).map((p) => p.id),
      [project.id],
    );
    assert.deepEqual(
      (await store.specTasks.list({ projectId: project.id })).map((t) => t.id),
      [task.id],
    );
    assert.deepEqual(await store.specTasks.list({ ownerId: "usr_nobody" }), []);
    assert.equal(await store.specTasks.setStatus(task.id, "planning", ["backlog"]), true);
    assert.equal(await store.specTasks.setStatus(task.id, "planning", ["backlog"]), false);
  });

  it("creates sessions with ses_ ids and filters by owner, status and age", async () => {
    const dave = await store.users.create({ name: "dave" });
    const old = await store.sessions.create({ ownerId: dave.id, name: "old" });
    time.advance(3_600_000);
    const fresh = await store.sessions.create({ ownerId: dave.id, name: "fresh" });
    assert.ok(isSessionId(old.id), old.id);
    assert.equal(old.id.length, 4 + 26);
    assert.equal(old.status, "pending");
    const cutoff = new Date(time.clock().getTime() - 1_800_000);
    assert.deepEqual(
      (await store.sessions.list({ ownerId: dave.id, createdBefore: cutoff })).map((s) => s.id),
      [old.id],
    );
    assert.deepEqual(
      (await store.sessions.list({ ownerId: dave.id })).map((s) => s.id),
      [fresh.id, old.id],
    );
    await store.sessions.setStatus(fresh.id, "running");
    assert.deepEqual(
      (await store.sessions.list({ ownerId: dave.id, status: "running" })).map((s) => s.id),
      [fresh.id],
    );
    assert.equal(await store.sessions.setStatus(old.id, "stopped", ["running"]), null);
  });

  it("keeps the final screenshot bytes and content type", async () => {
    const erin = await store.users.create({ name: "erin" });
    const session = await store.sessions.create({ ownerId: erin.id });
    assert.equal(await store.sessions.getFinalScreenshot(session.id), null);
    const bytes = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 1, 2, 255]);
    await store.sessions.setFinalScreenshot(session.id, { bytes, contentType: "image/png" });
    const shot = await store.sessions.getFinalScreenshot(session.id);
    assert.ok(shot && Buffer.isBuffer(shot.bytes));
    assert.deepEqual([...shot.bytes], [...bytes]);
    assert.equal(shot.contentType, "image/png");
    assert.equal((await store.sessions.get(session.id))?.hasFinalScreenshot, true);
  });

  it("keeps interactions in order and appends to them", async () => {
    const fay = await store.users.create({ name: "fay" });
    const session = await store.sessions.create({ ownerId: fay.id });
    const first = await store.interactions.create({ sessionId: session.id, role: "user", content: "hi" });
    const second = await store.interactions.create({ sessionId: session.id, role: "assistant" });
    await store.interactions.update(second.id, { append: "hel" });
    const done = await store.interactions.update(second.id, { append: "lo", state: "complete" });
    assert.equal(done?.content, "hello");
    assert.equal(done?.state, "complete");
    assert.deepEqual(
      (await store.interactions.list(session.id)).map((i) => i.id),
      [first.id, second.id],
    );
  });

  it("rolls a transaction back as a whole", async () => {
    await assert.rejects(
      store.transaction(async (tx) => {
        await tx.users.create({ name: "ghost" });
        throw new Error("boom");
      }),
      /boom/,
    );
    assert.equal(await store.users.getByName("ghost"), null);
    const made = await store.transaction((tx) => tx.users.create({ name: "real" }));
    assert.equal((await store.users.getByName("real"))?.id, made.id);
  });

  it("registers hosts, derives their load from sessions, and marks silent ones offline", async () => {
    const host = await store.wolfInstances.register({
      id: "h1",
      name: "one",
      maxSandboxes: 2,
      labels: { zone: "a" },
    });
    assert.equal(host.status, "online");
    assert.deepEqual(host.labels, { zone: "a" });
    assert.equal(host.connectedSandboxes, 0);
    assert.equal(await store.wolfInstances.heartbeat("nope"), false);
    const user = await store.users.create({ name: "hank" });
    const s = await store.sessions.create({ ownerId: user.id });
    const claim = await store.wolfInstances.claimSlot({ sessionId: s.id, eligibleIds: ["h1"] });
    assert.equal(claim?.host.id, "h1");
    assert.equal(claim?.previousLoad, 0);
    assert.equal((await store.sessions.get(s.id))?.status, "starting");
    assert.equal((await store.wolfInstances.get("h1"))?.connectedSandboxes, 1);
    await store.sessions.setStatus(s.id, "stopped");
    assert.equal((await store.wolfInstances.get("h1"))?.connectedSandboxes, 0);
    time.advance(120_000);
    const stale = await store.wolfInstances.markStaleOffline(new Date(time.clock().getTime() - 90_000));
    assert.ok(stale.includes("h1"));
    assert.equal((await store.wolfInstances.get("h1"))?.status, "offline");
    assert.equal(await store.wolfInstances.heartbeat("h1"), true);
    assert.equal((await store.wolfInstances.get("h1"))?.status, "online");
    assert.equal(await store.wolfInstances.delete("h1"), true);
  });

  it("picks the least-loaded host, ties by fewest sandboxes then id", async () => {
    const user = await store.users.create({ name: "ivy" });
    await store.wolfInstances.register({ id: "pick-b", name: "b", maxSandboxes: 4 });
    await store.wolfInstances.register({ id: "pick-a", name: "a", maxSandboxes: 2 });
    const hosts = ["pick-a", "pick-b"];
    const picks: string[] = [];
    for (let i = 0; i < 6; i++) {
      const s = await store.sessions.create({ ownerId: user.id });
      const claim = await store.wolfInstances.claimSlot({ sessionId: s.id, eligibleIds: hosts });
      picks.push(claim?.host.id ?? "none");
    }
    // 0/2 vs 0/4 tie -> fewest (0 = 0) -> id a; then 1/2 vs 0/4 -> b; 1/2 vs 1/4 -> b; 1/2 vs 2/4 tie,
    // fewer sandboxes a; then a full (2/2), b 2/4 -> b, b, then all full.
    assert.deepEqual(picks, ["pick-a", "pick-b", "pick-b", "pick-a", "pick-b", "pick-b"]);
    const s = await store.sessions.create({ ownerId: user.id });
    assert.equal(await store.wolfInstances.claimSlot({ sessionId: s.id, eligibleIds: hosts }), null);
    assert.equal(await store.wolfInstances.claimSlot({ sessionId: s.id, eligibleIds: [] }), null);
  });

  it("50 concurrent claims on 10 free slots place exactly 10 sessions, none over capacity", async () => {
    const user = await store.users.create({ name: "jack" });
    const hosts = ["race-1", "race-2", "race-3"];
    await store.wolfInstances.register({ id: "race-1", name: "r1", maxSandboxes: 5 });
    await store.wolfInstances.register({ id: "race-2", name: "r2", maxSandboxes: 3 });
    await store.wolfInstances.register({ id: "race-3", name: "r3", maxSandboxes: 2 });
    const sessions = await Promise.all(
      Array.from({ length: 50 }, () => store.sessions.create({ ownerId: user.id })),
    );
    const claims = await Promise.all(
      sessions.map((s) => store.wolfInstances.claimSlot({ sessionId: s.id, eligibleIds: hosts })),
    );
    assert.equal(claims.filter(Boolean).length, 10);
    for (const id of hosts) {
      const h = await store.wolfInstances.get(id);
      assert.equal(h?.connectedSandboxes, h?.maxSandboxes, id);
    }
  });
}
