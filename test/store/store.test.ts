// The store suite on both backends, plus what only one of them has: persistence of the embedded
// database across close and reopen, and two processes migrating one Postgres database at once.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { silentLogger } from "../../src/common/logger.ts";
import { openStore } from "../../src/store/index.ts";
import { pgliteBackend, postgresBackend, postgresSkipReason } from "./store-backends.ts";
import { defineStoreSuite } from "./store-suite.ts";

const postgresSkip = await postgresSkipReason();

describe("store on PGlite", () => defineStoreSuite(pgliteBackend));

describe("store on Postgres", { skip: postgresSkip ?? false }, () => defineStoreSuite(postgresBackend));

describe("store lifecycle", () => {
  it("PGlite: data survives close and reopen; close is idempotent", async () => {
    const backend = await pgliteBackend();
    try {
      const first = await backend.open();
      const user = await first.users.create({ name: "persist" });
      await first.close();
      await first.close();
      await assert.rejects(first.users.get(user.id), { code: "RD_ERR_STORE_CLOSED" });
      const second = await backend.open();
      assert.equal((await second.users.get(user.id))?.name, "persist");
      await second.close();
    } finally {
      await backend.dispose();
    }
  });

  it("rejects a wrong option by name", async () => {
    await assert.rejects(openStore({ databaseUrl: "mysql://x", logger: silentLogger() }), /databaseUrl/);
  });

  it("Postgres: two processes opening at once migrate once", { skip: postgresSkip ?? false }, async () => {
    const backend = await postgresBackend();
    try {
      const [a, b] = await Promise.all([backend.open(), backend.open()]);
      await a.users.create({ name: "x" });
      assert.equal((await b.users.getByName("x"))?.name, "x");
      await Promise.all([a.close(), b.close()]);
    } finally {
      await backend.dispose();
    }
  });
});
