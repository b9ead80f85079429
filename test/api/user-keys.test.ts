// The users and keys routes the dashboard's users page uses, from both sides: an admin lists
// users, mints a read-only key for one (shown once, never listed) and revokes it, after which the
// key is refused at once (its remembered lookup is forgotten); a user key, a read-only admin key and
// another user's key id get 403/403/404, and listing never shows a key itself.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { type Harness, startHarness } from "./control-plane-harness.ts";

describe("users and their keys (admin)", () => {
  let h: Harness;
  let carol: { id: string; api_key: string };
  let dave: { id: string; api_key: string };

  before(async () => {
    h = await startHarness();
    carol = (await h.call("POST", "/api/v1/users", { key: h.adminKey, body: { name: "carol" } })).json();
    dave = (await h.call("POST", "/api/v1/users", { key: h.adminKey, body: { name: "dave" } })).json();
  });
  after(() => h.close());

  it("lists users and keys, mints a read-only key shown once, revokes it: refused at once", async () => {
    const users = (await h.call("GET", "/api/v1/users", { key: h.adminKey })).json<{ name: string }[]>();
    assert.deepEqual(users.map((u) => u.name).sort(), ["carol", "dave", "root"]);
    const made = await h.call("POST", `/api/v1/users/${carol.id}/keys`, {
      key: h.adminKey,
      body: { access: "read", name: "dashboard" },
    });
    assert.equal(made.status, 201);
    const key = made.json<{ id: string; api_key: string; access: string; prefix: string }>();
    assert.equal(key.access, "read");
    assert.ok(key.api_key.startsWith(key.prefix));
    // The new key works, read-only, and is remembered by the auth cache from here on.
    assert.equal((await h.call("GET", "/api/v1/sessions", { key: key.api_key })).status, 200);
    const write = await h.call("POST", "/api/v1/sessions", { key: key.api_key, body: {} });
    assert.equal(write.status, 403);
    const listed = await h.call("GET", `/api/v1/users/${carol.id}/keys`, { key: h.adminKey });
    assert.equal(listed.status, 200);
    assert.deepEqual(
      listed.json<{ id: string; access: string }[]>().map((k) => k.access),
      ["write", "read"],
    );
    assert.ok(!listed.body.toString().includes(key.api_key), "a listing never shows a key");
    assert.ok(!listed.body.toString().includes(carol.api_key), "a listing never shows a key");

    const revoked = await h.call("DELETE", `/api/v1/users/${carol.id}/keys/${key.id}`, { key: h.adminKey });
    assert.equal(revoked.status, 200);
    assert.deepEqual(revoked.json(), { message: "key revoked", id: key.id });
    assert.equal((await h.call("GET", "/api/v1/users/me", { key: key.api_key })).status, 401);
    assert.equal((await h.call("GET", "/api/v1/users/me", { key: carol.api_key })).status, 200);
    const again = await h.call("DELETE", `/api/v1/users/${carol.id}/keys/${key.id}`, { key: h.adminKey });
    assert.equal(again.status, 404);
  });

  it("refuses a user key, a read-only admin key, and a key id of another user", async () => {
    for (const [method, path] of [
      ["GET", "/api/v1/users"],
      ["GET", `/api/v1/users/${dave.id}/keys`],
      ["POST", `/api/v1/users/${dave.id}/keys`],
    ] as const) {
      const res = await h.call(method, path, {
        key: carol.api_key,
        body: method === "POST" ? {} : undefined,
      });
      assert.equal(res.status, 403, `${method} ${path}`);
      assert.equal(res.json<{ error: { code: string } }>().error.code, "RD_ERR_AUTH_FORBIDDEN");
    }
    const root = (await h.call("GET", "/api/v1/users/me", { key: h.adminKey })).json<{ id: string }>();
    const readAdmin = (
      await h.call("POST", `/api/v1/users/${root.id}/keys`, { key: h.adminKey, body: { access: "read" } })
    ).json<{ api_key: string }>().api_key;
    assert.equal((await h.call("GET", "/api/v1/users", { key: readAdmin })).status, 200);
    const minted = await h.call("POST", `/api/v1/users/${dave.id}/keys`, { key: readAdmin, body: {} });
    assert.equal(minted.status, 403);
    assert.equal(minted.json<{ error: { code: string } }>().error.code, "RD_ERR_AUTH_READ_ONLY");

    const carolsKeys = (await h.call("GET", `/api/v1/users/${carol.id}/keys`, { key: h.adminKey })).json<
      { id: string }[]
    >();
    const cross = await h.call("DELETE", `/api/v1/users/${dave.id}/keys/${carolsKeys[0].id}`, {
      key: h.adminKey,
    });
    assert.equal(cross.status, 404);
    assert.equal(cross.json<{ error: { code: string } }>().error.code, "RD_ERR_KEY_NOT_FOUND");
    assert.equal(
      (await h.call("GET", "/api/v1/users/me", { key: carol.api_key })).status,
      200,
      "still valid",
    );
    const unknown = await h.call("GET", "/api/v1/users/usr_nobody/keys", { key: h.adminKey });
    assert.equal(unknown.status, 404);
  });
});
