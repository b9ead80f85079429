// Quotas per user through a real server (small limits: 2 tunnels, 3 sessions, 2 running, 2 calls):
// each one, when used up, answers 429 with Retry-After and its RD_ERR_QUOTA_* code, keeps other
// users unaffected, and frees up again once the user releases what it held. Host tunnels are not
// counted.

import assert from "node:assert/strict";
import http from "node:http";
import { after, before, describe, it } from "node:test";
import type { AgentClient } from "../../src/agent/tunnel-client.ts";
import {
  type Listening,
  listen,
  pollUntil,
  startAgent,
  startTarget,
  waitConnected,
  waitDisconnected,
} from "../helpers/tunnel-harness.ts";
import { MemoryDriver, World } from "../host/host-harness.ts";
import { handshake } from "./tunnel-handshake.ts";

interface ErrorBody {
  error: { code: string; message: string };
}

const QUOTAS = { tunnels: 2, sessions: 3, running: 2, calls: 2 };

describe("quotas per user", () => {
  let w: World;
  let target: Listening;
  const agents: AgentClient[] = [];

  before(async () => {
    w = await new World({ quotas: QUOTAS }).start();
    target = await startTarget();
    await w.startHost("slots", { driver: new MemoryDriver(), maxSandboxes: 10 });
  });
  after(async () => {
    await Promise.all(agents.map((a) => a.close(100)));
    await w.close();
    await target.close();
  });

  const over = (
    what: string,
    answer: { status: number; retryAfter: string | null; body: unknown },
    code: string,
  ) => {
    assert.equal(answer.status, 429, `${what}: ${JSON.stringify(answer.body)}`);
    assert.match(answer.retryAfter ?? "", /^[1-9]\d*$/, `${what}: Retry-After`);
    assert.equal((answer.body as ErrorBody).error.code, code, what);
  };
  const viaApi = async (method: string, path: string, key: string, body?: unknown) => {
    const res = await w.call(method, path, key, body);
    return { status: res.status, retryAfter: res.headers.get("retry-after"), body: res.body };
  };

  it("tunnels: the third live tunnel is refused; a reconnect of a held id is not; closing one frees a place", async () => {
    const tina = await w.user("tina");
    const ids = await Promise.all(
      [0, 1, 2].map(async () => (await w.server.store.sessions.create({ ownerId: tina.userId })).id),
    );
    const sandbox = (i: number) => `sandbox-${ids[i]}`;
    for (const i of [0, 1]) {
      agents.push(startAgent(w.url, sandbox(i), `127.0.0.1:${target.port}`, { token: tina.key }));
      await waitConnected(w.server.registry, sandbox(i));
    }
    over("third tunnel", await handshake(w.url, sandbox(2), tina.key), "RD_ERR_QUOTA_TUNNELS");
    // Another user, and hosts, are not affected.
    const uma = await w.user("uma");
    const umaSession = await w.server.store.sessions.create({ ownerId: uma.userId });
    assert.equal((await handshake(w.url, `sandbox-${umaSession.id}`, uma.key)).status, 101);
    assert.ok(w.server.registry.isConnected("wolf-slots"));
    // The same id again (a reconnect) is admitted: it replaces, it does not add.
    const again = await handshake(w.url, sandbox(1), tina.key);
    assert.equal(again.status, 101);
    await waitDisconnected(w.server.registry, sandbox(1));
    // sandbox(1) is gone now: a place is free.
    agents.push(startAgent(w.url, sandbox(2), `127.0.0.1:${target.port}`, { token: tina.key }));
    await waitConnected(w.server.registry, sandbox(2));
    over("again over", await handshake(w.url, sandbox(1), tina.key), "RD_ERR_QUOTA_TUNNELS");
  });

  it("sessions: the fourth unended session is refused until one is stopped", async () => {
    const sam = await w.user("sam");
    const created: string[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await w.call<{ id: string }>("POST", "/api/v1/sessions", sam.key, {});
      assert.equal(res.status, 201);
      created.push(res.body.id);
    }
    over("fourth session", await viaApi("POST", "/api/v1/sessions", sam.key, {}), "RD_ERR_QUOTA_SESSIONS");
    assert.equal((await w.call("DELETE", `/api/v1/external-agents/${created[0]}`, sam.key)).status, 200);
    assert.equal((await w.call("POST", "/api/v1/sessions", sam.key, {})).status, 201);
  });

  it("running: the third start is refused until a running session stops", async () => {
    const rita = await w.user("rita", 3);
    const started: string[] = [];
    for (const taskId of rita.taskIds.slice(0, 2)) {
      const res = await w.startPlanning(rita.key, taskId);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      started.push(res.body.session_id);
    }
    const third = await viaApi("POST", `/api/v1/spec-tasks/${rita.taskIds[2]}/start-planning`, rita.key, {});
    over("third start", third, "RD_ERR_QUOTA_RUNNING");
    assert.equal((await w.server.store.specTasks.get(rita.taskIds[2]))?.status, "backlog");
    assert.equal((await w.call("DELETE", `/api/v1/external-agents/${started[0]}`, rita.key)).status, 200);
    const now = await w.startPlanning(rita.key, rita.taskIds[2]);
    assert.equal(now.status, 200, JSON.stringify(now.body));
  });

  it("calls: the third call in flight is refused (screenshots and the admin proxy); answers free the slots", async () => {
    const held: http.ServerResponse[] = [];
    let holding = true;
    const slow = await listen(
      http.createServer((req, res) => {
        req.resume();
        if (holding) held.push(res);
        else res.writeHead(200, { "content-type": "image/png" }).end(Buffer.from([0x89, 0x50, 0x4e, 0x47]));
      }),
    );
    try {
      const cleo = await w.user("cleo");
      const session = await w.server.store.sessions.create({ ownerId: cleo.userId });
      const runner = `sandbox-${session.id}`;
      agents.push(startAgent(w.url, runner, `127.0.0.1:${slow.port}`, { token: cleo.key }));
      await waitConnected(w.server.registry, runner);
      const shot = () => viaApi("GET", `/api/v1/external-agents/${session.id}/screenshot`, cleo.key);
      const first = [shot(), shot()];
      await pollUntil(() => held.length === 2, "two calls held by the sandbox");
      over("third call", await shot(), "RD_ERR_QUOTA_CALLS");
      // The admin's proxy calls count against the admin (quotas apply to admins too), not cleo.
      const proxy = () =>
        fetch(`${w.url}/api/v1/revdial/${runner}/proxy/x`, {
          headers: { authorization: `Bearer ${w.adminKey}`, accept: "application/json" },
        });
      const proxied = [proxy(), proxy()];
      await pollUntil(() => held.length === 4, "the admin's two calls held");
      const third = await proxy();
      over(
        "the admin's third proxy call",
        {
          status: third.status,
          retryAfter: third.headers.get("retry-after"),
          body: await third.json(),
        },
        "RD_ERR_QUOTA_CALLS",
      );
      holding = false;
      for (const res of held)
        res.writeHead(200, { "content-type": "image/png" }).end(Buffer.from([0x89, 0x50, 0x4e, 0x47]));
      for (const answer of await Promise.all(first)) assert.equal(answer.status, 200);
      for (const answer of await Promise.all(proxied)) assert.equal(answer.status, 200);
      assert.equal((await shot()).status, 200, "the slots are free again");
    } finally {
      await slow.close();
    }
  });
});
