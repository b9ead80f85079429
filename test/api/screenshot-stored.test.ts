// Stored final screenshots are bounded per user (the store's part of the memory bound): storing one
// more image drops the user's oldest stored images until the total fits, keeps the newest always,
// and never touches another user's images. Runs on the real embedded store.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { silentLogger } from "../../src/common/logger.ts";
import { openStore, type Store } from "../../src/store/index.ts";

let store: Store;
let now = Date.parse("2026-01-01T00:00:00Z");

before(async () => {
  // Each write one second after the last, so "oldest" is well defined.
  const clock = () => {
    now += 1000;
    return new Date(now);
  };
  store = await openStore({ logger: silentLogger(), clock });
});

after(async () => {
  await store.close();
});

const image = (n: number) => ({ bytes: Buffer.alloc(n, 1), contentType: "image/png" });

test("a user's stored screenshots stay within the per-user total, the oldest dropped first", async () => {
  const alice = await store.users.create({ name: "alice" });
  const bob = await store.users.create({ name: "bob" });
  const bobs = await store.sessions.create({ ownerId: bob.id });
  await store.sessions.setFinalScreenshot(bobs.id, image(900), 1000);
  const sessions = [];
  for (let i = 0; i < 4; i++) sessions.push(await store.sessions.create({ ownerId: alice.id }));
  assert.deepEqual(await store.sessions.setFinalScreenshot(sessions[0].id, image(400), 1000), []);
  assert.deepEqual(await store.sessions.setFinalScreenshot(sessions[1].id, image(400), 1000), []);
  // 1200 > 1000: the oldest (sessions[0]) goes.
  assert.deepEqual(await store.sessions.setFinalScreenshot(sessions[2].id, image(400), 1000), [
    sessions[0].id,
  ]);
  assert.equal(await store.sessions.getFinalScreenshot(sessions[0].id), null);
  assert.equal((await store.sessions.get(sessions[0].id))?.hasFinalScreenshot, false);
  // One image over the whole budget is still kept (it is the newest); every other one goes.
  assert.deepEqual(
    (await store.sessions.setFinalScreenshot(sessions[3].id, image(1500), 1000)).sort(),
    [sessions[1].id, sessions[2].id].sort(),
  );
  assert.equal((await store.sessions.getFinalScreenshot(sessions[3].id))?.bytes.length, 1500);
  // Bob's image was never counted against Alice.
  assert.equal((await store.sessions.getFinalScreenshot(bobs.id))?.bytes.length, 900);
});
