// Host records and host keys in the store, on PGlite and on Postgres (migration 002): an admin's
// create (offline until it registers, a second create conflicts), a host's own registration that
// refreshes a known host only and never raises its capacity past the admin's limit, host keys
// bound to their host and deleted with it or by rotation, and the schema refusing a host key
// without a host. A host made before migration 002 keeps its capacity as its limit.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { hashKey } from "../../src/api/auth.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { openStore, type Store } from "../../src/store/index.ts";
import { migrate } from "../../src/store/migrate.ts";
import { migration001 } from "../../src/store/migrations/001-initial-schema.ts";
import { openPGlite } from "../../src/store/pglite-driver.ts";
import { pgliteBackend, postgresBackend, postgresSkipReason, type TestBackend } from "./store-backends.ts";

const postgresSkip = await postgresSkipReason();

function suite(make: () => Promise<TestBackend>) {
  const withStore = async (fn: (store: Store) => Promise<void>) => {
    const backend = await make();
    const store = await backend.open();
    try {
      await fn(store);
    } finally {
      await store.close();
      await backend.dispose();
    }
  };

  it("create, registerKnown with a capped capacity, keys bound and revoked", () =>
    withStore(async (store) => {
      const admin = await store.users.create({ name: "root", admin: true });
      const host = await store.wolfInstances.create({ id: "h1", name: "h1", maxSandboxes: 4 });
      assert.deepEqual([host.status, host.maxSandboxes, host.maxSandboxesLimit], ["offline", 4, 4]);
      await assert.rejects(store.wolfInstances.create({ id: "h1", name: "again" }), {
        code: "RD_ERR_STORE_CONFLICT",
      });
      assert.equal(
        await store.wolfInstances.registerKnown({ id: "nobody", name: "n", maxSandboxes: 9 }),
        null,
      );
      assert.equal(await store.wolfInstances.get("nobody"), null, "a host never creates itself");
      const raised = await store.wolfInstances.registerKnown({ id: "h1", name: "H", maxSandboxes: 10_000 });
      assert.deepEqual([raised?.status, raised?.name, raised?.maxSandboxes], ["online", "H", 4]);
      const lowered = await store.wolfInstances.registerKnown({ id: "h1", name: "H", maxSandboxes: 2 });
      assert.equal(lowered?.maxSandboxes, 2);
      const unsaid = await store.wolfInstances.registerKnown({ id: "h1", name: "H" });
      assert.equal(unsaid?.maxSandboxes, 4, "no capacity given: the admin's");

      const key = (n: number) => ({
        userId: admin.id,
        keyHash: hashKey(`rdh-${n}`),
        keyPrefix: "rdh-",
        scope: "host" as const,
        access: "write" as const,
        hostId: "h1",
      });
      await store.apiKeys.create(key(1));
      await store.apiKeys.create(key(2));
      assert.equal((await store.apiKeys.findByHash(hashKey("rdh-1")))?.key.hostId, "h1");
      assert.equal(await store.apiKeys.revokeForHost("h1"), 2);
      await store.apiKeys.create(key(3));
      assert.equal(await store.wolfInstances.delete("h1"), true);
      assert.equal(await store.apiKeys.findByHash(hashKey("rdh-3")), null, "deleted with its host");
      await assert.rejects(store.apiKeys.create({ ...key(4), hostId: null }), /check|constraint/i);
      await assert.rejects(store.apiKeys.create({ ...key(5), hostId: "gone" }), {
        code: "RD_ERR_STORE_FOREIGN_KEY",
      });
    }));

  it("an admin's register still creates or refreshes a host, setting its limit", () =>
    withStore(async (store) => {
      const host = await store.wolfInstances.register({ id: "h2", name: "h2", maxSandboxes: 6 });
      assert.deepEqual([host.status, host.maxSandboxes, host.maxSandboxesLimit], ["online", 6, 6]);
      const capped = await store.wolfInstances.registerKnown({ id: "h2", name: "h2", maxSandboxes: 7 });
      assert.equal(capped?.maxSandboxes, 6);
    }));
}

describe("host records on PGlite", () => suite(pgliteBackend));
describe("host records on Postgres", { skip: postgresSkip ?? false }, () => suite(postgresBackend));

describe("migration 002 on a database made before it", () => {
  it("a host that existed keeps its capacity as its limit, and its keys can be minted", async () => {
    const backend = await pgliteBackend();
    try {
      const old = await openPGlite(`${backend.dataDir}/pg`);
      await migrate(old, silentLogger(), [migration001]);
      await old.query(
        `INSERT INTO wolf_instances (id, name, max_sandboxes, created_at, updated_at)
         VALUES ('veteran', 'veteran', 7, now(), now())`,
      );
      await old.close();
      const store = await openStore({ dataDir: backend.dataDir, logger: silentLogger() });
      try {
        const host = await store.wolfInstances.get("veteran");
        assert.deepEqual([host?.maxSandboxes, host?.maxSandboxesLimit], [7, 7]);
        const raised = await store.wolfInstances.registerKnown({
          id: "veteran",
          name: "v",
          maxSandboxes: 50,
        });
        assert.equal(raised?.maxSandboxes, 7);
      } finally {
        await store.close();
      }
    } finally {
      await backend.dispose();
    }
  });
});
