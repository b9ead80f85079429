// The store as the API sees it reports each write of a session or host to the live event feed:
// once it succeeded, and for a transaction once it committed. A rolled-back write, a write that
// changed nothing (a status move from the wrong status, a heartbeat of an unknown host) and every
// read report nothing.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { type ChangeSink, observeStore } from "../../src/api/events/store-observer.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { openStore, type Store } from "../../src/store/index.ts";

describe("the observed store", () => {
  let plain: Store;
  let store: Store;
  let ownerId: string;
  const seen: string[] = [];
  const sink: ChangeSink = {
    sessionChanged: (id) => seen.push(`session ${id}`),
    hostChanged: (id) => seen.push(`host ${id}`),
  };
  const take = () => seen.splice(0);

  before(async () => {
    plain = await openStore({ logger: silentLogger() });
    store = observeStore(plain, sink);
    ownerId = (await store.users.create({ name: "olive" })).id;
  });
  after(() => plain.close());

  it("reports session and host writes that changed something, and no reads", async () => {
    const session = await store.sessions.create({ ownerId, name: "s" });
    assert.deepEqual(take(), [`session ${session.id}`]);
    await store.sessions.get(session.id);
    await store.sessions.list({ ownerId });
    assert.deepEqual(take(), []);
    assert.equal(await store.sessions.setStatus(session.id, "running", ["stopped"]), null);
    assert.deepEqual(take(), [], "a status move from the wrong status changed nothing");
    await store.sessions.setStatus(session.id, "stopped");
    assert.deepEqual(take(), [`session ${session.id}`]);

    assert.equal(await store.wolfInstances.heartbeat("nobody"), false);
    assert.deepEqual(take(), []);
    await store.wolfInstances.create({ id: "h1", name: "h1" });
    await store.wolfInstances.heartbeat("h1");
    assert.deepEqual(take(), ["host h1", "host h1"]);
    const placed = await store.sessions.create({ ownerId });
    take();
    const claim = await store.wolfInstances.claimSlot({ sessionId: placed.id });
    assert.equal(claim?.host.id, "h1");
    assert.deepEqual(take(), [`session ${placed.id}`, "host h1"], "a placement changes the host's load");
  });

  it("reports a transaction's writes after it commits, and none of one rolled back", async () => {
    let during: string[] = [];
    const committed = await store.transaction(async (tx) => {
      const s = await tx.sessions.create({ ownerId });
      during = [...seen];
      return s;
    });
    assert.deepEqual(during, [], "nothing is reported before the commit");
    assert.deepEqual(take(), [`session ${committed.id}`]);

    let rolledBack = "";
    await assert.rejects(
      store.transaction(async (tx) => {
        rolledBack = (await tx.sessions.create({ ownerId })).id;
        throw new Error("no");
      }),
    );
    assert.equal(await plain.sessions.get(rolledBack), null);
    assert.deepEqual(take(), []);
  });
});
