// Stored final screenshots are bounded per user (the store's part of the memory bound), on both
// backends (PGlite, and Postgres when a server answers): storing one more image drops the user's
// oldest stored images until the total fits, keeps the newest always, and never touches another
// user's images.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Store } from "../../src/store/index.ts";
import {
  manualClock,
  pgliteBackend,
  postgresBackend,
  postgresSkipReason,
  type TestBackend,
} from "../store/store-backends.ts";

const image = (n: number) => ({ bytes: Buffer.alloc(n, 1), contentType: "image/png" });

async function bounded(store: Store, advance: () => void): Promise<void> {
  const alice = await store.users.create({ name: "alice" });
  const bob = await store.users.create({ name: "bob" });
  const bobs = await store.sessions.create({ ownerId: bob.id });
  await store.sessions.setFinalScreenshot(bobs.id, image(900), 1000);
  const sessions: Array<{ id: string }> = [];
  for (let i = 0; i < 4; i++) sessions.push(await store.sessions.create({ ownerId: alice.id }));
  const put = (i: number, size: number) => {
    advance(); // each image one second after the last, so "oldest" is well defined
    return store.sessions.setFinalScreenshot(sessions[i].id, image(size), 1000);
  };
  assert.deepEqual(await put(0, 400), []);
  assert.deepEqual(await put(1, 400), []);
  // 1200 > 1000: the oldest (sessions[0]) goes.
  assert.deepEqual(await put(2, 400), [sessions[0].id]);
  assert.equal(await store.sessions.getFinalScreenshot(sessions[0].id), null);
  assert.equal((await store.sessions.get(sessions[0].id))?.hasFinalScreenshot, false);
  // One image over the whole budget is still kept (it is the newest); every other one goes.
  assert.deepEqual((await put(3, 1500)).sort(), [sessions[1].id, sessions[2].id].sort());
  assert.equal((await store.sessions.getFinalScreenshot(sessions[3].id))?.bytes.length, 1500);
  // Bob's image was never counted against Alice.
  assert.equal((await store.sessions.getFinalScreenshot(bobs.id))?.bytes.length, 900);
}

for (const [name, make] of [
  ["pglite", pgliteBackend],
  ["postgres", postgresBackend],
] as const) {
  describe(`stored final screenshots (${name})`, async () => {
    const skip = name === "postgres" ? await postgresSkipReason() : null;
    it("stay within the per-user total, the oldest dropped first", { skip: skip ?? false }, async () => {
      const backend: TestBackend = await make();
      const { clock, advance } = manualClock();
      const store = await backend.open(clock);
      try {
        await bounded(store, () => advance(1000));
      } finally {
        await store.close();
        await backend.dispose();
      }
    });
  });
}
