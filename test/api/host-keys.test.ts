// Host credentials from the attacker's side, through a real server: a host's key (from the admin's
// `POST /api/v1/wolf-instances`) registers its own host and `wolf-{id}` tunnel and nothing else;
// it cannot create, delete or raise the capacity of hosts, see other hosts, or report exits of
// sessions placed elsewhere. The seed's runner token is refused unless the operator configured it,
// and then registers only ids an admin created. Rotation and deletion revoke a key at once.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { TargetMap } from "../../src/agent/target-map.ts";
import { AgentClient } from "../../src/agent/tunnel-client.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { MemoryDriver, World } from "../host/host-harness.ts";
import { handshake } from "./tunnel-handshake.ts";

const RUNNER_TOKEN = "legacy-runner-token-for-host-key-tests";

interface ErrorBody {
  error: { code: string; message: string };
}

describe("host keys, from a host that wants more than its own id", () => {
  let w: World;
  let keyA: string;

  before(async () => {
    w = await new World({ runnerToken: RUNNER_TOKEN }).start();
    keyA = await w.hostKey("host-a", 4);
    await w.hostKey("host-b", 4);
  });
  after(() => w.close());

  it("the admin's create answers 201 with an rdh- key shown once; the same id again is 409", async () => {
    const res = await w.call<{ id: string; key: string; max_sandboxes: number; status: string }>(
      "POST",
      "/api/v1/wolf-instances",
      w.adminKey,
      { id: "host-c", max_sandboxes: 3 },
    );
    assert.equal(res.status, 201);
    assert.match(res.body.key, /^rdh-[A-Za-z0-9_-]{40}$/);
    assert.equal(res.body.max_sandboxes, 3);
    assert.equal(res.body.status, "offline", "not online before it registers");
    const list = await w.call<Record<string, unknown>[]>("GET", "/api/v1/wolf-instances", w.adminKey);
    assert.ok(!JSON.stringify(list.body).includes(res.body.key), "the key is never shown again");
    const again = await w.call<ErrorBody>("POST", "/api/v1/wolf-instances", w.adminKey, { id: "host-c" });
    assert.equal(again.status, 409);
    assert.equal(again.body.error.code, "RD_ERR_WOLF_EXISTS");
  });

  it("registers its own id; another id, by route or by tunnel, is refused", async () => {
    const own = await w.call("POST", "/api/v1/wolf-instances/register", keyA, { id: "host-a", name: "A" });
    assert.equal(own.status, 200);
    const other = await w.call<ErrorBody>("POST", "/api/v1/wolf-instances/register", keyA, {
      id: "host-b",
      name: "hijacked",
    });
    assert.equal(other.status, 403);
    assert.equal(other.body.error.code, "RD_ERR_AUTH_FORBIDDEN");
    const rogue = await w.call("POST", "/api/v1/wolf-instances/register", keyA, { id: "rogue", name: "r" });
    assert.equal(rogue.status, 403);
    const b = await w.server.store.wolfInstances.get("host-b");
    assert.notEqual(b?.name, "hijacked");
    assert.equal(await w.server.store.wolfInstances.get("rogue"), null, "a host key never mints a host");

    for (const runnerId of ["wolf-host-b", "wolf-rogue", "sandbox-ses_00000000000000000000000000", "other"]) {
      const res = await handshake(w.url, runnerId, keyA);
      assert.equal(res.status, 403, runnerId);
      assert.equal(res.body?.error.code, "RD_ERR_AUTH_FORBIDDEN");
    }
    assert.equal((await handshake(w.url, "wolf-host-a", keyA)).status, 101);
  });

  it("cannot raise its capacity past the admin's: the scheduler never gives it more", async () => {
    const res = await w.call<{ max_sandboxes: number }>("POST", "/api/v1/wolf-instances/register", keyA, {
      id: "host-a",
      name: "A",
      max_sandboxes: 10_000,
    });
    assert.equal(res.status, 200);
    assert.equal(res.body.max_sandboxes, 4);
    const lower = await w.call<{ max_sandboxes: number }>("POST", "/api/v1/wolf-instances/register", keyA, {
      id: "host-a",
      name: "A",
      max_sandboxes: 2,
    });
    assert.equal(lower.body.max_sandboxes, 2, "lowering is its own business");
    const back = await w.call<{ max_sandboxes: number }>("POST", "/api/v1/wolf-instances/register", keyA, {
      id: "host-a",
      name: "A",
      max_sandboxes: 4,
    });
    assert.equal(back.body.max_sandboxes, 4, "and it may come back up to the limit");
  });

  it("cannot create, delete, rotate, or heartbeat for another host; sees only its own record", async () => {
    const create = await w.call("POST", "/api/v1/wolf-instances", keyA, { id: "mine-now" });
    assert.equal(create.status, 403);
    for (const id of ["host-b", "host-a"]) {
      const del = await w.call("DELETE", `/api/v1/wolf-instances/${id}`, keyA);
      assert.equal(del.status, 403, `delete ${id}`);
      const rotate = await w.call("POST", `/api/v1/wolf-instances/${id}/rotate-key`, keyA, {});
      assert.equal(rotate.status, 403, `rotate ${id}`);
    }
    assert.ok(await w.server.store.wolfInstances.get("host-b"));
    const hb = await w.call("POST", "/api/v1/wolf-instances/host-b/heartbeat", keyA, {});
    assert.equal(hb.status, 403);
    assert.equal((await w.call("POST", "/api/v1/wolf-instances/host-a/heartbeat", keyA, {})).status, 200);
    const list = await w.call<{ id: string }[]>("GET", "/api/v1/wolf-instances", keyA);
    assert.deepEqual(
      list.body.map((h) => h.id),
      ["host-a"],
    );
    // A host key is no user: it sees no session, project or task.
    assert.equal((await w.call("GET", "/api/v1/sessions", keyA)).status, 403);
    assert.equal((await w.call("POST", "/api/v1/sessions", keyA, {})).status, 403);
  });

  it("reports an exit only for sessions placed on its own host", async () => {
    await w.startHost("host-b", { driver: new MemoryDriver() });
    const alice = await w.user("alice", 1);
    const start = await w.startPlanning(alice.key, alice.taskIds[0]);
    assert.equal(start.status, 200, JSON.stringify(start.body));
    const session = (await w.server.store.sessions.get(start.body.session_id))!;
    assert.equal(session.wolfInstanceId, "host-b");
    const exit = { session_id: session.id, exit_code: 1 };
    // Host A names host B's id: refused for the id.
    const asB = await w.call(
      "POST",
      `/api/v1/wolf-instances/host-b/lobbies/${session.lobbyId}/exited`,
      keyA,
      exit,
    );
    assert.equal(asB.status, 403);
    // Host A names its own id and B's session: the session is not its to see.
    const asA = await w.call<ErrorBody>(
      "POST",
      `/api/v1/wolf-instances/host-a/lobbies/${session.lobbyId}/exited`,
      keyA,
      exit,
    );
    assert.equal(asA.status, 404);
    assert.equal(asA.body.error.code, "RD_ERR_SESSION_NOT_FOUND");
    assert.equal((await w.server.store.sessions.get(session.id))?.status, "starting", "the session lives on");
    // Host B's own report is taken.
    const own = await w.call<{ status: string }>(
      "POST",
      `/api/v1/wolf-instances/host-b/lobbies/${session.lobbyId}/exited`,
      w.hostKeys.get("host-b")!,
      exit,
    );
    assert.equal(own.status, 200);
    assert.equal(own.body.status, "failed");
  });

  it("rotate-key revokes the old key at once; delete revokes every key of the host", async () => {
    const rotated = await w.call<{ key: string }>(
      "POST",
      "/api/v1/wolf-instances/host-c/rotate-key",
      w.adminKey,
      {},
    );
    assert.equal(rotated.status, 200);
    assert.match(rotated.body.key, /^rdh-/);
    const hb = (key: string) => w.call("POST", "/api/v1/wolf-instances/host-c/heartbeat", key, {});
    assert.equal((await hb(rotated.body.key)).status, 200);
    const again = await w.call<{ key: string }>(
      "POST",
      "/api/v1/wolf-instances/host-c/rotate-key",
      w.adminKey,
      {},
    );
    assert.equal((await hb(rotated.body.key)).status, 401, "the rotated-out key is dead");
    assert.equal((await hb(again.body.key)).status, 200);
    assert.equal((await w.call("DELETE", "/api/v1/wolf-instances/host-c", w.adminKey)).status, 200);
    assert.equal((await hb(again.body.key)).status, 401, "a deleted host's key is dead");
    assert.equal((await handshake(w.url, "wolf-host-c", again.body.key)).status, 401);
  });

  it("the runner token (configured by the operator) registers only hosts an admin created", async () => {
    const unknown = await w.call<ErrorBody>("POST", "/api/v1/wolf-instances/register", RUNNER_TOKEN, {
      id: "rogue",
      name: "rogue",
      max_sandboxes: 10_000,
    });
    assert.equal(unknown.status, 403);
    assert.equal(unknown.body.error.code, "RD_ERR_WOLF_NOT_CREATED");
    assert.equal(await w.server.store.wolfInstances.get("rogue"), null);
    const tunnel = await handshake(w.url, "wolf-rogue", RUNNER_TOKEN);
    assert.equal(tunnel.status, 403);
    assert.equal(tunnel.body?.error.code, "RD_ERR_WOLF_NOT_CREATED");
    // An admin-created host: the token registers it, capped at the admin's capacity.
    await w.hostKey("legacy", 2);
    const known = await w.call<{ max_sandboxes: number }>(
      "POST",
      "/api/v1/wolf-instances/register",
      RUNNER_TOKEN,
      {
        id: "legacy",
        name: "legacy",
        max_sandboxes: 10_000,
      },
    );
    assert.equal(known.status, 200);
    assert.equal(known.body.max_sandboxes, 2);
    assert.equal((await handshake(w.url, "wolf-legacy", RUNNER_TOKEN)).status, 101);
    // It still cannot delete hosts or register sandboxes.
    assert.equal((await w.call("DELETE", "/api/v1/wolf-instances/host-b", RUNNER_TOKEN)).status, 403);
    assert.equal((await w.call("POST", "/api/v1/wolf-instances", RUNNER_TOKEN, { id: "x" })).status, 403);
    assert.equal(
      (await handshake(w.url, "sandbox-ses_00000000000000000000000000", RUNNER_TOKEN)).status,
      403,
    );
  });
});

describe("the runner token without the operator's flag", () => {
  let w: World;
  before(async () => {
    w = await new World().start();
    await w.hostKey("known");
  });
  after(() => w.close());

  it("is no credential at all: 401 on the routes and the tunnel, and no runner.token file is made", async () => {
    assert.equal(w.server.runnerToken, null);
    const reg = await w.call("POST", "/api/v1/wolf-instances/register", RUNNER_TOKEN, {
      id: "known",
      name: "k",
    });
    assert.equal(reg.status, 401);
    assert.equal((await handshake(w.url, "wolf-known", RUNNER_TOKEN)).status, 401);
    const { readdir } = await import("node:fs/promises");
    assert.ok(!(await readdir(w.dataDir)).includes("runner.token"));
  });

  it("a host runs with its key, dials in as its own wolf-{id}, and a second host with that key is refused another id", async () => {
    const host = await w.startHost("known", { driver: new MemoryDriver() });
    assert.ok(w.server.registry.isConnected("wolf-known"));
    const impostor = new AgentClient({
      serverUrl: w.url,
      runnerId: "wolf-other",
      token: w.hostKeys.get("known")!,
      targets: new TargetMap({}, "127.0.0.1:9"),
      logger: silentLogger(),
      backoffBaseMs: 10_000,
    });
    const refused = new Promise<Error>((resolve) => impostor.once("connect-error", resolve));
    void impostor.start();
    const err = (await refused) as Error & { status?: number };
    await impostor.close();
    assert.equal(err.status, 403);
    assert.equal(w.server.registry.isConnected("wolf-other"), false);
    assert.ok(host);
  });
});
