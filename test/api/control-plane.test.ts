// The control-plane routes through real HTTP: users, sample projects, projects, spec tasks and
// sessions, including what another tenant may NOT see.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { type Harness, startHarness } from "./control-plane-harness.ts";

interface Created {
  id: string;
  name: string;
  admin: boolean;
  api_key: string;
}

describe("control-plane routes", () => {
  let h: Harness;
  let alice: Created;
  let bob: Created;
  let projectId: string;

  before(async () => {
    h = await startHarness();
    alice = (
      await h.call("POST", "/api/v1/users", { key: h.adminKey, body: { name: "alice" } })
    ).json<Created>();
    bob = (await h.call("POST", "/api/v1/users", { key: h.adminKey, body: { name: "bob" } })).json<Created>();
  });
  after(() => h.close());

  describe("users", () => {
    it("an admin creates a user: 201 with the key shown once", async () => {
      const res = await h.call("POST", "/api/v1/users", {
        key: h.adminKey,
        body: { name: "carol", admin: false },
      });
      assert.equal(res.status, 201);
      const body = res.json<Created>();
      assert.deepEqual(Object.keys(body).sort(), ["admin", "api_key", "id", "name"]);
      assert.match(body.api_key, /^rd-[A-Za-z0-9_-]{40}$/);
      assert.equal(body.admin, false);
    });

    it("a non-admin cannot create users; a taken name is 409; no key is 401", async () => {
      assert.equal(
        (await h.call("POST", "/api/v1/users", { key: alice.api_key, body: { name: "mallory" } })).status,
        403,
      );
      const dup = await h.call("POST", "/api/v1/users", { key: h.adminKey, body: { name: "alice" } });
      assert.equal(dup.status, 409);
      assert.equal(dup.json<{ error: { code: string } }>().error.code, "RD_ERR_USER_EXISTS");
      const anon = await h.call("POST", "/api/v1/users", { body: { name: "x" } });
      assert.equal(anon.status, 401);
      assert.equal(anon.json<{ error: { code: string } }>().error.code, "RD_ERR_AUTH_REQUIRED");
      assert.equal(
        (await h.call("POST", "/api/v1/users", { key: h.adminKey, body: { nom: "x" } })).status,
        400,
      );
    });

    it("GET /users/me says who the key belongs to", async () => {
      const me = (await h.call("GET", "/api/v1/users/me", { key: alice.api_key })).json();
      assert.deepEqual(me, {
        id: alice.id,
        name: "alice",
        admin: false,
        scope: "user",
        access: "write",
        session_id: null,
      });
    });
  });

  describe("sample projects, projects, spec tasks", () => {
    it("lists the built-in templates, modern-todo-app with Fix delete bug", async () => {
      const res = await h.call("GET", "/api/v1/sample-projects", { key: alice.api_key });
      assert.equal(res.status, 200);
      const list = res.json<{ id: string; tasks: { name: string }[] }[]>();
      const todo = list.find((p) => p.id === "modern-todo-app");
      assert.ok(todo);
      assert.ok(todo.tasks.some((t) => t.name === "Fix delete bug"));
    });

    it("forks a template: 201 {project_id, tasks_created, message}; 404 for an unknown one", async () => {
      const res = await h.call("POST", "/api/v1/sample-projects/simple/fork", {
        key: alice.api_key,
        body: { sample_project_id: "modern-todo-app", project_name: "RevDial Routing Test" },
      });
      assert.equal(res.status, 201);
      const body = res.json<{ project_id: string; tasks_created: number; message: string }>();
      assert.match(body.project_id, /^prj_/);
      assert.ok(body.tasks_created >= 3);
      assert.equal(typeof body.message, "string");
      projectId = body.project_id;
      const unknown = await h.call("POST", "/api/v1/sample-projects/simple/fork", {
        key: alice.api_key,
        body: { sample_project_id: "nope" },
      });
      assert.equal(unknown.status, 404);
    });

    it("projects: the owner sees the fork, another tenant gets 404 and an empty list", async () => {
      const mine = (await h.call("GET", "/api/v1/projects", { key: alice.api_key })).json<
        { id: string; name: string }[]
      >();
      assert.deepEqual(
        mine.map((p) => [p.id, p.name]),
        [[projectId, "RevDial Routing Test"]],
      );
      assert.equal(
        (await h.call("GET", `/api/v1/projects/${projectId}`, { key: alice.api_key })).status,
        200,
      );
      assert.deepEqual((await h.call("GET", "/api/v1/projects", { key: bob.api_key })).json(), []);
      assert.equal((await h.call("GET", `/api/v1/projects/${projectId}`, { key: bob.api_key })).status, 404);
      const all = (await h.call("GET", "/api/v1/projects", { key: h.adminKey })).json<{ id: string }[]>();
      assert.ok(all.some((p) => p.id === projectId));
    });

    it("spec tasks: listed by project, in backlog, created and shown; foreign ones 404", async () => {
      const tasks = (
        await h.call("GET", `/api/v1/spec-tasks?project_id=${projectId}`, { key: alice.api_key })
      ).json<{ id: string; name: string; status: string; project_id: string }[]>();
      const bug = tasks.find((t) => t.name === "Fix delete bug");
      assert.ok(bug);
      assert.equal(bug.status, "backlog");
      assert.equal(bug.project_id, projectId);
      const created = await h.call("POST", "/api/v1/spec-tasks", {
        key: alice.api_key,
        body: { project_id: projectId, name: "Write docs", description: "all of them" },
      });
      assert.equal(created.status, 201);
      const task = created.json<{ id: string; status: string }>();
      assert.equal(task.status, "backlog");
      assert.equal(
        (await h.call("GET", `/api/v1/spec-tasks/${task.id}`, { key: alice.api_key })).status,
        200,
      );
      assert.equal((await h.call("GET", `/api/v1/spec-tasks/${task.id}`, { key: bob.api_key })).status, 404);
      assert.equal(
        (await h.call("GET", `/api/v1/spec-tasks?project_id=${projectId}`, { key: bob.api_key })).status,
        404,
      );
      assert.deepEqual((await h.call("GET", "/api/v1/spec-tasks", { key: bob.api_key })).json(), []);
      const intoForeign = await h.call("POST", "/api/v1/spec-tasks", {
        key: bob.api_key,
        body: { project_id: projectId, name: "sneaky" },
      });
      assert.equal(intoForeign.status, 404);
    });
  });

  describe("sessions", () => {
    it("creates a session: 201, ses_ + 26 lowercase ULID, every documented field", async () => {
      const res = await h.call("POST", "/api/v1/sessions", { key: alice.api_key, body: { name: "first" } });
      assert.equal(res.status, 201);
      const s = res.json();
      assert.match(String(s.id), /^ses_[0-9a-z]{26}$/);
      assert.deepEqual(Object.keys(s).sort(), [
        "created_at",
        "id",
        "last_activity_at",
        "lobby_id",
        "name",
        "owner",
        "sandbox_connected",
        "spec_task_id",
        "status",
        "updated_at",
        "wolf_instance_id",
      ]);
      assert.equal(s.owner, alice.id);
      assert.equal(s.sandbox_connected, false);
      const empty = await h.call("POST", "/api/v1/sessions", { key: alice.api_key, body: {} });
      assert.equal(empty.status, 201);
    });

    it("creates a session for a spec task of the caller's only", async () => {
      const tasks = (await h.call("GET", "/api/v1/spec-tasks", { key: alice.api_key })).json<
        { id: string }[]
      >();
      const res = await h.call("POST", "/api/v1/sessions", {
        key: alice.api_key,
        body: { spec_task_id: tasks[0].id },
      });
      assert.equal(res.status, 201);
      assert.equal(res.json().spec_task_id, tasks[0].id);
      const foreign = await h.call("POST", "/api/v1/sessions", {
        key: bob.api_key,
        body: { spec_task_id: tasks[0].id },
      });
      assert.equal(foreign.status, 404);
    });

    it("lists only the caller's sessions; an admin sees all; another tenant's session is 404", async () => {
      const bobs = (
        await h.call("POST", "/api/v1/sessions", { key: bob.api_key, body: { name: "bob's" } })
      ).json();
      const aliceList = (await h.call("GET", "/api/v1/sessions", { key: alice.api_key })).json<
        { owner: string; id: string }[]
      >();
      assert.ok(aliceList.length >= 2);
      assert.ok(aliceList.every((s) => s.owner === alice.id));
      const bobList = (await h.call("GET", "/api/v1/sessions", { key: bob.api_key })).json<
        { id: string }[]
      >();
      assert.deepEqual(
        bobList.map((s) => s.id),
        [bobs.id],
      );
      const all = (await h.call("GET", "/api/v1/sessions", { key: h.adminKey })).json<{ id: string }[]>();
      assert.equal(all.length, aliceList.length + 1);
      const mineOnly = (await h.call("GET", "/api/v1/sessions?owner=me", { key: h.adminKey })).json();
      assert.deepEqual(mineOnly, []);
      assert.equal(
        (await h.call("GET", `/api/v1/sessions/${aliceList[0].id}`, { key: bob.api_key })).status,
        404,
      );
      assert.equal(
        (await h.call("GET", `/api/v1/sessions/${aliceList[0].id}`, { key: h.adminKey })).status,
        200,
      );
    });

    it("filters by status and older_than; a bad duration is 400", async () => {
      const s = (await h.call("POST", "/api/v1/sessions", { key: bob.api_key, body: {} })).json<{
        id: string;
      }>();
      await h.store.sessions.setStatus(s.id, "running");
      const running = (await h.call("GET", "/api/v1/sessions?status=running", { key: bob.api_key })).json<
        { id: string }[]
      >();
      assert.deepEqual(
        running.map((x) => x.id),
        [s.id],
      );
      assert.deepEqual(
        (await h.call("GET", "/api/v1/sessions?older_than=1h", { key: bob.api_key })).json(),
        [],
      );
      const recent = (await h.call("GET", "/api/v1/sessions?older_than=0s", { key: bob.api_key })).json<
        unknown[]
      >();
      assert.equal(recent.length, 2);
      assert.equal(
        (await h.call("GET", "/api/v1/sessions?older_than=soon", { key: bob.api_key })).status,
        400,
      );
      assert.equal((await h.call("GET", "/api/v1/sessions?status=weird", { key: bob.api_key })).status, 400);
    });

    it("shows sandbox_connected from the tunnel registry", async () => {
      const s = (await h.call("POST", "/api/v1/sessions", { key: alice.api_key, body: {} })).json<{
        id: string;
      }>();
      h.dialer.connect(`sandbox-${s.id}`, "http://127.0.0.1:1");
      assert.equal(
        (await h.call("GET", `/api/v1/sessions/${s.id}`, { key: alice.api_key })).json().sandbox_connected,
        true,
      );
      h.dialer.disconnect(`sandbox-${s.id}`);
    });

    it("a read-only key reads but cannot create", async () => {
      const { apiKey } = await h.auth.createUserKey(alice.id, { access: "read" });
      assert.equal((await h.call("GET", "/api/v1/sessions", { key: apiKey })).status, 200);
      const res = await h.call("POST", "/api/v1/sessions", { key: apiKey, body: {} });
      assert.equal(res.status, 403);
      assert.equal(res.json<{ error: { code: string } }>().error.code, "RD_ERR_AUTH_READ_ONLY");
    });

    it("a session key reaches only its own session, and no user endpoint", async () => {
      const s = await h.store.sessions.create({ ownerId: alice.id });
      const other = await h.store.sessions.create({ ownerId: alice.id });
      const { apiKey } = await h.auth.createSessionKey(s);
      assert.equal((await h.call("GET", `/api/v1/sessions/${s.id}`, { key: apiKey })).status, 200);
      assert.equal((await h.call("GET", `/api/v1/sessions/${other.id}`, { key: apiKey })).status, 404);
      assert.equal((await h.call("GET", "/api/v1/sessions", { key: apiKey })).status, 403);
      assert.equal((await h.call("GET", "/api/v1/projects", { key: apiKey })).status, 403);
    });
  });
});
