// Auth: keys from headers, the 401 shape through real HTTP, remembered keys (no promise, one store
// lookup for calls in flight), who may register which runner id (from the attacker's side),
// session visibility, and the first admin key.

import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, stat, unlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import Fastify from "fastify";
import {
  type Auth,
  adminKeyPath,
  createAuth,
  ensureAdminKey,
  hashKey,
  type Principal,
  principalOf,
} from "../../src/api/auth.ts";
import { installErrorHandlers } from "../../src/api/error-handler.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { openStore, type Session, type Store } from "../../src/store/index.ts";

const RUNNER_TOKEN = "runner-secret-for-tests";

describe("auth", () => {
  let store: Store;
  let auth: Auth;
  let now = Date.parse("2025-01-01T00:00:00Z");
  let alice: { id: string; key: string };
  let bob: { id: string; key: string };
  let adminKey: string;
  let aliceSession: Session;
  let bobSession: Session;

  before(async () => {
    store = await openStore({ logger: silentLogger() });
    auth = createAuth({ store, runnerToken: RUNNER_TOKEN, logger: silentLogger(), now: () => now });
    const a = await auth.createUser({ name: "alice" });
    const b = await auth.createUser({ name: "bob" });
    const root = await auth.createUser({ name: "root", admin: true });
    alice = { id: a.user.id, key: a.apiKey };
    bob = { id: b.user.id, key: b.apiKey };
    adminKey = root.apiKey;
    aliceSession = await store.sessions.create({ ownerId: alice.id });
    bobSession = await store.sessions.create({ ownerId: bob.id });
  });
  after(() => store.close());

  const bearer = (key: string) => ({ authorization: `Bearer ${key}` });
  const must = async (headers: Record<string, string>): Promise<Principal> => {
    const p = await auth.authenticate(headers);
    assert.ok(p, "expected a principal");
    return p;
  };

  it("reads Authorization: Bearer and X-API-Key; keys are rd- plus 40 URL-safe characters", async () => {
    assert.match(alice.key, /^rd-[A-Za-z0-9_-]{40}$/);
    const viaBearer = await must(bearer(alice.key));
    const viaHeader = await must({ "x-api-key": alice.key });
    assert.deepEqual(viaBearer, viaHeader);
    assert.deepEqual(
      { userId: viaBearer.userId, scope: viaBearer.scope, access: viaBearer.access, admin: viaBearer.admin },
      { userId: alice.id, scope: "user", access: "write", admin: false },
    );
    assert.equal((await must(bearer(adminKey))).scope, "admin");
    assert.equal(await auth.authenticate({}), null);
    assert.equal(await auth.authenticate(bearer(`rd-${"x".repeat(40)}`)), null);
    assert.equal(await auth.authenticate({ authorization: `Basic ${alice.key}` }), null);
  });

  it("stores only the hash of a key", async () => {
    const found = await store.apiKeys.findByHash(hashKey(alice.key));
    assert.equal(found?.user.id, alice.id);
    assert.ok(!JSON.stringify(found).includes(alice.key.slice(3)));
  });

  it("the runner token gives scope runner; a near miss gives nothing", async () => {
    const p = await must(bearer(RUNNER_TOKEN));
    assert.equal(p.scope, "runner");
    assert.equal(p.userId, null);
    assert.equal(await auth.authenticate(bearer(`${RUNNER_TOKEN}x`)), null);
  });

  it("an expired key is refused", async () => {
    const { apiKey } = await auth.createUserKey(alice.id, { expiresAt: new Date(now + 1000) });
    assert.ok(await auth.authenticate(bearer(apiKey)));
    now += 2000;
    assert.equal(await auth.authenticate(bearer(apiKey)), null);
  });

  it("writes last_used_at at most once per interval", async () => {
    const { apiKey, keyId } = await auth.createUserKey(alice.id);
    const lastUsed = async () =>
      (await store.apiKeys.listForUser(alice.id)).find((k) => k.id === keyId)?.lastUsedAt;
    const settle = () => new Promise((r) => setImmediate(r));
    await auth.authenticate(bearer(apiKey));
    await settle();
    const first = await lastUsed();
    assert.ok(first instanceof Date);
    now += 1000;
    await auth.authenticate(bearer(apiKey));
    await settle();
    assert.equal((await lastUsed())?.getTime(), first.getTime());
    now += 60_000;
    await auth.authenticate(bearer(apiKey));
    await settle();
    assert.ok(((await lastUsed())?.getTime() ?? 0) > first.getTime());
  });

  it("a remembered key answers without a promise; calls in flight share one store lookup", async () => {
    const { apiKey } = await auth.createUserKey(alice.id);
    const keys = store.apiKeys;
    const findByHash = keys.findByHash.bind(keys);
    let lookups = 0;
    keys.findByHash = (hash: string) => {
      lookups++;
      return findByHash(hash);
    };
    try {
      assert.equal(auth.authenticateKnown(bearer(apiKey)), undefined, "not yet looked up");
      assert.equal(auth.authenticateKnown({}), null);
      assert.equal(auth.authenticateKnown(bearer(RUNNER_TOKEN))?.scope, "runner");
      const all = await Promise.all(Array.from({ length: 20 }, () => auth.authenticate(bearer(apiKey))));
      assert.equal(lookups, 1, "20 calls in flight, one lookup");
      assert.ok(all.every((p) => p?.userId === alice.id));
      assert.equal(auth.authenticateKnown(bearer(apiKey))?.userId, alice.id, "remembered");
      now += 10_000;
      // A revocation while a lookup runs: calls after it do not share that lookup, and its answer
      // is not remembered.
      const early = auth.authenticate(bearer(apiKey));
      auth.forgetSession("ses_any");
      const late = auth.authenticate(bearer(apiKey));
      assert.ok((await early) && (await late));
      assert.equal(lookups, 3, "the call after the revocation asked the store itself");
      now += 10_000;
      const spanning = auth.authenticate(bearer(apiKey));
      auth.forgetHost("any-host");
      assert.ok(await spanning);
      assert.equal(
        auth.authenticateKnown(bearer(apiKey)),
        undefined,
        "a lookup across a revocation is not kept",
      );
    } finally {
      keys.findByHash = findByHash;
    }
  });

  describe("authorizeRunner, from the attacker's side", () => {
    const rejects = async (p: Promise<unknown>, status: number, message: RegExp) =>
      assert.rejects(p, (err: { statusCode?: number; message: string }) => {
        assert.equal(err.statusCode, status);
        assert.match(err.message, message);
        return true;
      });

    it("a user key registers its own sandbox", async () => {
      const grant = await auth.authorizeRunner(await must(bearer(alice.key)), `sandbox-${aliceSession.id}`);
      assert.deepEqual(grant, {
        runnerId: `sandbox-${aliceSession.id}`,
        kind: "sandbox",
        sessionId: aliceSession.id,
        ownerId: alice.id,
      });
    });

    it("user B cannot register sandbox-{A's session}: 403", async () => {
      const b = await must(bearer(bob.key));
      await rejects(
        auth.authorizeRunner(b, `sandbox-${aliceSession.id}`),
        403,
        /^unauthorized: session not owned by user$/,
      );
      // An unknown session looks the same as someone else's.
      await rejects(
        auth.authorizeRunner(b, `sandbox-ses_${"0".repeat(26)}`),
        403,
        /session not owned by user/,
      );
    });

    it("a user key cannot register wolf-* or any other shape: 400", async () => {
      const a = await must(bearer(alice.key));
      for (const id of ["wolf-1", "sandbox-nope", "something", `sandbox-${aliceSession.id}x`]) {
        await rejects(auth.authorizeRunner(a, id), 400, /^invalid runner ID format$/);
      }
    });

    it("a read-only user key cannot register even its own sandbox", async () => {
      const { apiKey } = await auth.createUserKey(alice.id, { access: "read" });
      await rejects(
        auth.authorizeRunner(await must(bearer(apiKey)), `sandbox-${aliceSession.id}`),
        403,
        /read access/,
      );
    });

    it("a session key registers only its own sandbox", async () => {
      const { apiKey } = await auth.createSessionKey(aliceSession);
      assert.match(apiKey, /^rds-[A-Za-z0-9_-]{40}$/);
      const s = await must(bearer(apiKey));
      assert.equal(s.scope, "session");
      assert.equal(s.sessionId, aliceSession.id);
      assert.equal((await auth.authorizeRunner(s, `sandbox-${aliceSession.id}`)).sessionId, aliceSession.id);
      await rejects(auth.authorizeRunner(s, `sandbox-${bobSession.id}`), 403, /only its own sandbox/);
      const other = await store.sessions.create({ ownerId: alice.id });
      await rejects(auth.authorizeRunner(s, `sandbox-${other.id}`), 403, /only its own sandbox/);
      await rejects(auth.authorizeRunner(s, "wolf-1"), 400, /invalid runner ID format/);
    });

    it("the runner token registers wolf-{id} of hosts an admin created, and nothing else", async () => {
      const r = await must(bearer(RUNNER_TOKEN));
      await assert.rejects(auth.authorizeRunner(r, "wolf-local"), {
        statusCode: 403,
        code: "RD_ERR_WOLF_NOT_CREATED",
      });
      await store.wolfInstances.create({ id: "local", name: "local" });
      assert.equal((await auth.authorizeRunner(r, "wolf-local")).kind, "wolf");
      await rejects(auth.authorizeRunner(r, `sandbox-${aliceSession.id}`), 403, /wolf-\*/);
      await rejects(auth.authorizeRunner(r, "wolf-"), 403, /wolf-\*/);
    });

    it("a host key (rdh-) registers its own wolf-{id} and nothing else", async () => {
      await store.wolfInstances.create({ id: "h1", name: "h1" });
      await store.wolfInstances.create({ id: "h2", name: "h2" });
      const { apiKey } = await auth.createHostKey("h1", alice.id);
      assert.match(apiKey, /^rdh-[A-Za-z0-9_-]{40}$/);
      const h = await must(bearer(apiKey));
      assert.deepEqual(
        { scope: h.scope, hostId: h.hostId, userId: h.userId, admin: h.admin },
        { scope: "host", hostId: "h1", userId: null, admin: false },
      );
      assert.equal((await auth.authorizeRunner(h, "wolf-h1")).kind, "wolf");
      for (const id of ["wolf-h2", "wolf-h1x", `sandbox-${aliceSession.id}`, "custom"]) {
        await rejects(auth.authorizeRunner(h, id), 403, /only its own runner id wolf-h1/);
      }
      await assert.rejects(auth.loadOwnedSession(h, aliceSession.id), { statusCode: 404 });
      // Rotation revokes it at once (the principal cache is dropped too).
      await auth.createHostKey("h1", alice.id, { replace: true });
      assert.equal(await auth.authenticate(bearer(apiKey)), null);
    });

    it("a read-only key registers nothing, an admin's included", async () => {
      const root = await must(bearer(adminKey));
      const { apiKey } = await auth.createUserKey(root.userId as string, { access: "read" });
      const readOnly = await must(bearer(apiKey));
      assert.equal(readOnly.admin, true);
      for (const id of ["wolf-a", `sandbox-${bobSession.id}`, "custom-runner"]) {
        await assert.rejects(auth.authorizeRunner(readOnly, id), {
          statusCode: 403,
          code: "RD_ERR_AUTH_READ_ONLY",
        });
      }
    });

    it("an admin key registers anything well-formed", async () => {
      const root = await must(bearer(adminKey));
      assert.equal((await auth.authorizeRunner(root, "wolf-a")).kind, "wolf");
      assert.equal((await auth.authorizeRunner(root, `sandbox-${bobSession.id}`)).ownerId, bob.id);
      assert.equal((await auth.authorizeRunner(root, "custom-runner")).kind, "other");
      await rejects(auth.authorizeRunner(root, "bad id with spaces"), 400, /invalid runner ID format/);
    });
  });

  it("loadOwnedSession: 404 for someone else's session, for a session key's other sessions", async () => {
    const a = await must(bearer(alice.key));
    const b = await must(bearer(bob.key));
    assert.equal((await auth.loadOwnedSession(a, aliceSession.id)).id, aliceSession.id);
    await assert.rejects(auth.loadOwnedSession(b, aliceSession.id), {
      statusCode: 404,
      code: "RD_ERR_SESSION_NOT_FOUND",
    });
    await assert.rejects(auth.loadOwnedSession(b, "not-a-session"), { statusCode: 404 });
    assert.equal(
      (await auth.loadOwnedSession(await must(bearer(adminKey)), aliceSession.id)).id,
      aliceSession.id,
    );
    const { apiKey } = await auth.createSessionKey(bobSession);
    const s = await must(bearer(apiKey));
    assert.equal((await auth.loadOwnedSession(s, bobSession.id)).id, bobSession.id);
    const bobOther = await store.sessions.create({ ownerId: bob.id });
    await assert.rejects(auth.loadOwnedSession(s, bobOther.id), { statusCode: 404 });
    await assert.rejects(auth.loadOwnedSession(await must(bearer(RUNNER_TOKEN)), bobSession.id), {
      statusCode: 404,
    });
  });

  it("the preHandler answers 401 in the one error shape through real HTTP", async () => {
    const app = Fastify();
    installErrorHandlers(app);
    app.decorateRequest("principal", null);
    app.get("/who", { preHandler: auth.preHandler }, async (request) => principalOf(request));
    await app.listen({ port: 0, host: "127.0.0.1" });
    try {
      const { port } = app.server.address() as { port: number };
      const url = `http://127.0.0.1:${port}/who`;
      const missing = await fetch(url);
      assert.equal(missing.status, 401);
      const body = (await missing.json()) as { error: { code: string; message: string } };
      assert.equal(body.error.code, "RD_ERR_AUTH_REQUIRED");
      const bad = await fetch(url, { headers: bearer(`rd-${"y".repeat(40)}`) });
      assert.equal(bad.status, 401);
      assert.match(((await bad.json()) as { error: { message: string } }).error.message, /invalid/);
      const ok = await fetch(url, { headers: { "x-api-key": alice.key } });
      assert.equal(ok.status, 200);
      assert.equal(((await ok.json()) as Principal).userId, alice.id);
    } finally {
      await app.close();
    }
  });
});

describe("ensureAdminKey", () => {
  it("creates the admin once, writes admin.key 0600, never a second admin", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), "revdial-auth-"));
    const store = await openStore({ dataDir, logger: silentLogger() });
    try {
      const key = await ensureAdminKey({ store, dataDir, logger: silentLogger() });
      assert.match(key ?? "", /^rd-[A-Za-z0-9_-]{40}$/);
      const path = adminKeyPath(dataDir);
      assert.equal((await readFile(path, "utf8")).trim(), key);
      assert.equal((await stat(path)).mode & 0o777, 0o600);
      const found = await store.apiKeys.findByHash(hashKey(key!));
      assert.equal(found?.user.admin, true);
      assert.equal(await ensureAdminKey({ store, dataDir, logger: silentLogger() }), null);
      await unlink(path);
      assert.equal(await ensureAdminKey({ store, dataDir, logger: silentLogger() }), null);
      assert.equal((await store.users.list()).filter((u) => u.admin).length, 1);
    } finally {
      await store.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
