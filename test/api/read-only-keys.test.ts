// A read-only key never writes, an admin's included, tried from the attacker's side through a real
// server: tunnel registration, replacement of a live tunnel, a POST through the admin proxy (which
// never reaches the sandbox), every host route, session create, spec task create and start, the
// clipboard, stopping a session, user create and project fork. Each is 403 RD_ERR_AUTH_READ_ONLY
// and leaves nothing changed; the same key still reads.

import assert from "node:assert/strict";
import type { IncomingMessage } from "node:http";
import { after, before, describe, it } from "node:test";
import type { AgentClient } from "../../src/agent/tunnel-client.ts";
import { type Listening, startAgent, startTarget, waitConnected } from "../helpers/tunnel-harness.ts";
import { MemoryDriver, World } from "../host/host-harness.ts";
import { handshake } from "./tunnel-handshake.ts";

interface ErrorBody {
  error: { code: string; message: string };
}

describe("a read-only admin key tries each write", () => {
  let w: World;
  let readOnly: string;
  let target: Listening;
  let agent: AgentClient;
  const seen: string[] = [];
  let alice: { key: string; userId: string; taskIds: string[] };
  let sessionId: string;

  before(async () => {
    w = await new World().start();
    const admin = (await w.server.store.users.firstAdmin())!;
    readOnly = (await w.server.auth.createUserKey(admin.id, { access: "read" })).apiKey;
    target = await startTarget((req: IncomingMessage, res) => {
      seen.push(`${req.method} ${req.url}`);
      req.resume();
      req.on("end", () => res.end("ok"));
    });
    agent = startAgent(w.url, "wolf-live", `127.0.0.1:${target.port}`, { token: w.adminKey });
    await waitConnected(w.server.registry, "wolf-live");
    await w.startHost("slots", { driver: new MemoryDriver() });
    alice = await w.user("alice", 2);
    sessionId = (await w.server.store.sessions.create({ ownerId: alice.userId })).id;
  });
  after(async () => {
    await agent?.close(100);
    await w.close();
    await target?.close();
  });

  const refused = async (what: string, answer: { status: number; body: unknown }) => {
    assert.equal(answer.status, 403, `${what}: ${JSON.stringify(answer.body)}`);
    assert.equal((answer.body as ErrorBody).error.code, "RD_ERR_AUTH_READ_ONLY", what);
  };

  it("the key is an admin's, and it reads", async () => {
    const me = await w.call<{ admin: boolean; access: string }>("GET", "/api/v1/users/me", readOnly);
    assert.deepEqual(me.body, { ...me.body, admin: true, access: "read" });
    assert.equal((await w.call("GET", "/api/v1/wolf-instances", readOnly)).status, 200);
    assert.equal((await w.call("GET", "/api/v1/revdial/connections", readOnly)).status, 200);
  });

  it("no tunnel registration, and no replacement of a live tunnel", async () => {
    const fresh = await handshake(w.url, "wolf-fresh", readOnly);
    await refused("register wolf-fresh", { status: fresh.status, body: fresh.body });
    const sandbox = await handshake(w.url, `sandbox-${sessionId}`, readOnly);
    await refused("register a sandbox", { status: sandbox.status, body: sandbox.body });
    const connectedAt = w.server.registry.get("wolf-live")?.stats().connected_at;
    const replace = await handshake(w.url, "wolf-live", readOnly);
    await refused("replace wolf-live", { status: replace.status, body: replace.body });
    assert.equal(
      w.server.registry.get("wolf-live")?.stats().connected_at,
      connectedAt,
      "the live tunnel stays",
    );
  });

  it("no write through the admin proxy (GET passes); the sandbox never sees the refused calls", async () => {
    const url = `${w.url}/api/v1/revdial/wolf-live/proxy/target`;
    const headers = { authorization: `Bearer ${readOnly}`, accept: "application/json" };
    for (const method of ["POST", "PUT", "PATCH", "DELETE"]) {
      const res = await fetch(url, { method, headers, body: method === "DELETE" ? undefined : "payload" });
      await refused(`proxy ${method}`, { status: res.status, body: await res.json() });
    }
    const get = await fetch(url, { headers });
    assert.equal(get.status, 200);
    await get.arrayBuffer();
    assert.deepEqual(seen, ["GET /target"]);
  });

  it("no host route: create, register, heartbeat, rotate, delete", async () => {
    await refused("create", await w.call("POST", "/api/v1/wolf-instances", readOnly, { id: "ro-host" }));
    await refused(
      "register",
      await w.call("POST", "/api/v1/wolf-instances/register", readOnly, { id: "slots", name: "x" }),
    );
    await refused("heartbeat", await w.call("POST", "/api/v1/wolf-instances/slots/heartbeat", readOnly, {}));
    await refused("rotate", await w.call("POST", "/api/v1/wolf-instances/slots/rotate-key", readOnly, {}));
    await refused("delete", await w.call("DELETE", "/api/v1/wolf-instances/slots", readOnly));
    const host = await w.server.store.wolfInstances.get("slots");
    assert.equal(host?.name, "slots");
    assert.equal(await w.server.store.wolfInstances.get("ro-host"), null);
  });

  it("no session create, spec task create or start, clipboard write, stop, user create, fork", async () => {
    const sessionsBefore = (await w.server.store.sessions.list({})).length;
    await refused("session create", await w.call("POST", "/api/v1/sessions", readOnly, {}));
    await refused(
      "spec task start",
      await w.call("POST", `/api/v1/spec-tasks/${alice.taskIds[0]}/start-planning`, readOnly, {}),
    );
    const project = (await w.server.store.projects.list({ ownerId: alice.userId }))[0];
    await refused(
      "spec task create",
      await w.call("POST", "/api/v1/spec-tasks", readOnly, { project_id: project.id, name: "x" }),
    );
    await refused(
      "clipboard",
      await w.call("POST", `/api/v1/external-agents/${sessionId}/clipboard`, readOnly, {
        type: "text",
        data: "pwned",
      }),
    );
    await refused("stop", await w.call("DELETE", `/api/v1/external-agents/${sessionId}`, readOnly));
    await refused(
      "user create",
      await w.call("POST", "/api/v1/users", readOnly, { name: "eve", admin: true }),
    );
    await refused(
      "fork",
      await w.call("POST", "/api/v1/sample-projects/simple/fork", readOnly, {
        sample_project_id: "modern-todo-app",
        project_name: "x",
      }),
    );
    assert.equal((await w.server.store.sessions.list({})).length, sessionsBefore);
    assert.equal((await w.server.store.specTasks.get(alice.taskIds[0]))?.status, "backlog");
    assert.equal((await w.server.store.sessions.get(sessionId))?.status, "pending");
  });
});
