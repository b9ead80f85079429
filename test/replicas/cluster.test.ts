// Three `revdial server` replicas behind nginx (the configuration of docs/replicas.md), one Postgres
// database of their own, a sandbox host (WolfHost, real agents for its sandboxes) and ad hoc agents,
// all connecting through the load balancer. What a user would notice:
// - every call path works from every replica, with `revdial-replica` naming who answered, and the
//   connection list is the whole cluster's from any replica;
// - the peer endpoint refuses a missing or wrong secret and nothing reaches a sandbox;
// - two agents with one runner id on two replicas: exactly one stays live;
// - kill -9 of a replica under load: its agents are back on the others within 10 s, every call
//   completes (none hangs past its deadline);
// - SIGTERM of a replica under load: its agents move and no call fails;
// - the leader dies and the sweeps go on from another replica.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdir, readFile } from "node:fs/promises";
import net from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import pg from "pg";
import { TargetMap } from "../../src/agent/target-map.ts";
import { AgentClient } from "../../src/agent/tunnel-client.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { WolfHost } from "../../src/host/wolf-host.ts";
import { encodeFrame, encodeHello, FRAME, MUX_VERSION } from "../../src/tunnel/mux-frames.ts";
import { type FakeDesktop, PNG_BYTES, startFakeDesktop } from "../api/control-plane-harness.ts";
import { AgentDriver } from "../api/crash-harness.ts";
import { MAIN } from "../e2e/cli-harness.ts";
import { HAPROXY, startHaproxy } from "../e2e/proxy-process.ts";
import {
  Cluster,
  clusterUnavailable,
  haproxyConfig,
  REPLICAS_DOC,
  type Replica,
  until,
} from "./cluster-harness.ts";

const skip = (await clusterUnavailable()) ?? false;
if (skip) console.log(`# ${skip}`);

interface Conn {
  runner_id: string;
  replica: string;
  protocol: string;
}

describe("three replicas behind a load balancer", { skip }, () => {
  let cluster: Cluster;
  let desktop: FakeDesktop;
  let driver: AgentDriver;
  let host: WolfHost;
  const agents: AgentClient[] = [];
  const LOAD_AGENTS = 12;

  const agent = (
    runnerId: string,
    serverUrl: string,
    protocol: "v2" | "v3" = "v3",
    token = cluster.adminKey,
  ) =>
    new AgentClient({
      serverUrl,
      runnerId,
      protocol,
      token,
      targets: new TargetMap({ desktop: new URL(desktop.url).host }, null),
      logger: silentLogger(),
    });

  const connections = async (base = cluster.lbUrl): Promise<Conn[]> => {
    const res = await cluster.call(base, "GET", "/api/v1/revdial/connections");
    assert.equal(res.status, 200, JSON.stringify(res.body));
    return res.body as Conn[];
  };

  before(async () => {
    desktop = await startFakeDesktop();
    cluster = await new Cluster().start(3);
    const created = await cluster.call(cluster.lbUrl, "POST", "/api/v1/wolf-instances", {
      id: "h",
      max_sandboxes: 8,
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    driver = new AgentDriver(new URL(desktop.url).host);
    host = new WolfHost({
      serverUrl: cluster.lbUrl,
      token: (created.body as { key: string }).key,
      id: "h",
      driver,
      maxSandboxes: 8,
      heartbeatIntervalMs: 500,
      agent: { backoffBaseMs: 50, backoffCapMs: 500 },
      stateDir: `${cluster.dir}/host-h`,
      allowSharedFallback: true,
      logger: silentLogger(),
    });
    await host.start();
    await until(async () => {
      const hosts = await cluster.call(cluster.lbUrl, "GET", "/api/v1/wolf-instances");
      return (hosts.body as { id: string; status: string }[]).some(
        (h) => h.id === "h" && h.status === "online",
      );
    }, "host online");
    for (let i = 0; i < LOAD_AGENTS; i++) {
      const a = agent(`load-${i}`, cluster.lbUrl);
      agents.push(a);
      void a.start();
    }
    await until(
      async () => (await connections()).filter((c) => c.runner_id.startsWith("load-")).length === LOAD_AGENTS,
      "load agents connected",
    );
  });

  after(async () => {
    await Promise.allSettled(agents.map((a) => a.close(500)));
    await host?.close().catch(() => {});
    await driver?.destroy();
    await cluster?.close();
    await desktop?.close();
  });

  const live = () => cluster.replicas.filter((r) => r.child !== null);

  it("every call path works from every replica, and any replica lists the whole cluster", async () => {
    const fork = await cluster.call(cluster.lbUrl, "POST", "/api/v1/sample-projects/simple/fork", {
      sample_project_id: "modern-todo-app",
    });
    assert.equal(fork.status, 201, JSON.stringify(fork.body));
    const tasks = (fork.body as { tasks: { id: string }[] }).tasks.slice(0, 3);
    const sessions: string[] = [];
    // Each start goes through a different replica, and reaches the host's lobby API wherever its
    // tunnel is.
    for (const [i, t] of tasks.entries()) {
      const r = cluster.replicas[i];
      const res = await cluster.call(r.url, "POST", `/api/v1/spec-tasks/${t.id}/start-planning`, {});
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal(res.replica, r.id);
      sessions.push((res.body as { session_id: string }).session_id);
    }
    for (const id of sessions)
      await until(async () => {
        const s = await cluster.call(cluster.lbUrl, "GET", `/api/v1/sessions/${id}`);
        const body = s.body as { status: string; sandbox_connected: boolean };
        return body.status === "running" && body.sandbox_connected;
      }, `session ${id} running`);

    for (const id of sessions) {
      for (const r of cluster.replicas) {
        const shot = await cluster.call(r.url, "GET", `/api/v1/external-agents/${id}/screenshot`);
        assert.equal(shot.status, 200, `screenshot of ${id} from ${r.id}`);
        assert.deepEqual(shot.bytes, PNG_BYTES);
        assert.equal(shot.replica, r.id);
        const text = `clip ${id} via ${r.id}`;
        const set = await cluster.call(r.url, "POST", `/api/v1/external-agents/${id}/clipboard`, {
          type: "text",
          data: text,
        });
        assert.equal(set.status, 204, `clipboard set from ${r.id}: ${set.bytes}`);
        const got = await cluster.call(r.url, "GET", `/api/v1/external-agents/${id}/clipboard`);
        assert.equal(got.status, 200);
        assert.deepEqual(got.body, { type: "text", data: text });
        const proxied = await cluster.call(r.url, "GET", `/api/v1/revdial/sandbox-${id}/proxy/clipboard?x=1`);
        assert.equal(proxied.status, 200);
        assert.deepEqual(proxied.body, { type: "text", data: text });
        assert.equal(proxied.replica, r.id);
      }
    }
    // The proxy with a streamed body, from every replica to every load agent's replica.
    for (const r of cluster.replicas) {
      const payload = JSON.stringify({ type: "text", data: `posted via ${r.id} ${"y".repeat(100_000)}` });
      const res = await fetch(`${r.url}/api/v1/revdial/load-0/proxy/clipboard`, {
        method: "POST",
        headers: { authorization: `Bearer ${cluster.adminKey}`, "content-type": "application/json" },
        body: payload,
      });
      assert.equal(res.status, 200);
      await res.arrayBuffer();
      assert.equal(desktop.seen.at(-1)?.body, payload, "the body arrived whole");
    }

    const lists = await Promise.all(cluster.replicas.map((r) => connections(r.url)));
    const ids = (l: Conn[]) => l.map((c) => `${c.runner_id}@${c.replica}`).sort();
    assert.deepEqual(ids(lists[1]), ids(lists[0]));
    assert.deepEqual(ids(lists[2]), ids(lists[0]));
    for (const c of lists[0]) assert.ok(["r1", "r2", "r3"].includes(c.replica), JSON.stringify(c));
    for (const id of sessions)
      assert.equal(lists[0].filter((c) => c.runner_id === `sandbox-${id}`).length, 1, `one tunnel for ${id}`);
    const out = await Promise.all(
      cluster.replicas.map((r) =>
        cluster.metric(r, 'revdial_cluster_forwarded_calls_total{direction="out"}'),
      ),
    );
    const inn = await Promise.all(
      cluster.replicas.map((r) => cluster.metric(r, 'revdial_cluster_forwarded_calls_total{direction="in"}')),
    );
    const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
    assert.ok(sum(out) > 0, "calls were forwarded");
    assert.equal(sum(inn), sum(out), "every forwarded call was served by a peer");

    // Stops go through another replica than the start, and through the host's lobby API.
    for (const [i, id] of sessions.entries()) {
      const r = cluster.replicas[(i + 1) % 3];
      const res = await cluster.call(r.url, "DELETE", `/api/v1/external-agents/${id}`);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal((res.body as { status: string }).status, "stopped");
    }
    assert.equal(
      driver.list().filter((l) => sessions.includes(l.sessionId)).length,
      0,
      "the host stopped every lobby",
    );
    // A stop answers once the sandbox's tunnel is closed, on whichever replica held it.
    const left = (await connections()).filter((c) => sessions.some((id) => c.runner_id === `sandbox-${id}`));
    assert.deepEqual(left, [], "stopped sandboxes gone from the cluster when the stops answered");
  });

  it("a v2 agent's calls cross the hop too: bodies both ways, errors as the holder gives them", async () => {
    const [r1, r2, r3] = cluster.replicas;
    const v2 = agent("v2-agent", r1.url, "v2");
    agents.push(v2);
    void v2.start();
    await until(
      async () => (await connections(r2.url)).some((c) => c.runner_id === "v2-agent" && c.replica === "r1"),
      "v2-agent on r1",
    );
    for (const r of [r2, r3]) {
      const data = `v2 via ${r.id} ${"z".repeat(200_000)}`;
      const payload = JSON.stringify({ type: "text", data });
      const set = await fetch(`${r.url}/api/v1/revdial/v2-agent/proxy/clipboard`, {
        method: "POST",
        headers: { authorization: `Bearer ${cluster.adminKey}`, "content-type": "application/json" },
        body: payload,
      });
      assert.equal(set.status, 200, await set.clone().text());
      assert.equal(set.headers.get("revdial-replica"), r.id);
      await set.arrayBuffer();
      assert.equal(desktop.seen.at(-1)?.body, payload, "the body arrived whole");
      const got = await cluster.call(r.url, "GET", "/api/v1/revdial/v2-agent/proxy/clipboard");
      assert.equal(got.status, 200);
      assert.equal((got.body as { data: string }).data, data, "a 200 KB answer came back whole");
      const missing = await cluster.call(r.url, "GET", "/api/v1/revdial/v2-agent/proxy/no-such-path");
      assert.equal(missing.status, 404, "the sandbox's own 404 comes back as it is");
    }
    await v2.close();
    await until(
      async () => !(await connections(r2.url)).some((c) => c.runner_id === "v2-agent"),
      "v2-agent gone",
    );
  });

  it("revoking a key on one replica cuts the tunnel it registered on another", async () => {
    const [r1, r2, r3] = cluster.replicas;
    const user = (await cluster.call(r2.url, "POST", "/api/v1/users", { name: "erin" })).body as {
      id: string;
      api_key: string;
    };
    const minted = await cluster.call(r2.url, "POST", `/api/v1/users/${user.id}/keys`, {});
    assert.equal(minted.status, 201, JSON.stringify(minted.body));
    const key = minted.body as { id: string; api_key: string };
    const made = await fetch(`${r2.url}/api/v1/sessions`, {
      method: "POST",
      headers: { authorization: `Bearer ${user.api_key}`, "content-type": "application/json" },
      body: "{}",
    });
    assert.equal(made.status, 201);
    const runner = `sandbox-${((await made.json()) as { id: string }).id}`;
    const a = agent(runner, r1.url, "v3", key.api_key);
    agents.push(a);
    void a.start();
    await until(
      async () => (await connections(r3.url)).some((c) => c.runner_id === runner && c.replica === "r1"),
      `${runner} on r1`,
    );
    const revoked = await cluster.call(r3.url, "DELETE", `/api/v1/users/${user.id}/keys/${key.id}`);
    assert.equal(revoked.status, 200, JSON.stringify(revoked.body));
    // Cut on r1 before the revocation on r3 answered.
    const list = await connections(r1.url);
    assert.ok(!list.some((c) => c.runner_id === runner), "the revoked key's tunnel is gone from the cluster");
    const call = await cluster.call(r2.url, "GET", `/api/v1/revdial/${runner}/proxy/clipboard`);
    assert.equal(call.status, 503);
    await a.close(100);
  });

  it("the peer endpoint refuses a missing or a wrong secret, and nothing reaches a sandbox", async () => {
    const target = cluster.replicas[0];
    // An attacker on the peer port: the handshake, then (without waiting for its answer) a v3
    // session that asks for a call with a body to the sandbox, all in one write.
    const body = JSON.stringify({ type: "text", data: "attacker" });
    const smuggled = Buffer.concat([
      encodeHello({ version: MUX_VERSION, window: 512 * 1024, maxData: 64 * 1024 }),
      encodeFrame(
        FRAME.OPEN,
        0,
        1,
        Buffer.from(JSON.stringify({ op: "call", runner: "load-0", target: "desktop" })),
      ),
      encodeFrame(
        FRAME.DATA,
        0,
        1,
        Buffer.from(
          `POST /clipboard HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`,
        ),
      ),
    ]);
    const ask = (hello: Record<string, unknown> | string) =>
      new Promise<{ answer: Record<string, unknown>; rest: Buffer; closed: boolean }>((resolve, reject) => {
        const socket = net.connect(target.peerPort, "127.0.0.1");
        let buf = Buffer.alloc(0);
        let closed = false;
        const done = () => {
          clearTimeout(timer);
          socket.destroy();
          const nl = buf.indexOf(10);
          const line = buf.subarray(0, nl < 0 ? buf.length : nl).toString();
          assert.match(line, /^REVDIAL-PEER\/2 /, `the peer answered ${JSON.stringify(line)}`);
          resolve({ answer: JSON.parse(line.slice(15)), rest: buf.subarray(nl + 1), closed });
        };
        const timer = setTimeout(done, 1500);
        socket.on("data", (c: Buffer) => {
          buf = Buffer.concat([buf, c]);
        });
        socket.on("error", reject);
        socket.on("close", () => {
          closed = true;
          done();
        });
        const line = typeof hello === "string" ? hello : `REVDIAL-PEER/2 ${JSON.stringify(hello)}`;
        socket.write(Buffer.concat([Buffer.from(`${line}\n`), smuggled]));
      });
    const before = desktop.seen.length;
    const missing = await ask({ replica: "attacker" });
    assert.equal(missing.answer.status, 401);
    assert.equal(missing.answer.code, "RD_ERR_PEER_AUTH_REQUIRED");
    assert.ok(missing.closed, "the peer closed the connection");
    assert.equal(missing.rest.length, 0, "no v3 session started");
    const wrong = await ask({ replica: "attacker", secret: "correct-horse-battery-staple-pee" });
    assert.equal(wrong.answer.status, 403);
    assert.equal(wrong.answer.code, "RD_ERR_PEER_AUTH_FAILED");
    assert.ok(wrong.closed && wrong.rest.length === 0);
    const empty = await ask({ replica: "attacker", secret: "" });
    assert.equal(empty.answer.status, 403);
    const garbage = await ask("GET /peer HTTP/1.1");
    assert.equal(garbage.answer.code, "RD_ERR_PEER_PROTOCOL");
    assert.equal(desktop.seen.length, before, "no refused call reached the sandbox");
    // The same bytes with the secret start a session (the peer's HELLO follows its answer): the
    // refusals above were the secret's doing.
    const right = await ask({ replica: "test", secret: "correct-horse-battery-staple-peer" });
    assert.equal(right.answer.ok, true);
    assert.equal(right.rest[0], FRAME.HELLO, "the peer's v3 HELLO follows");
  });

  it("two agents with one runner id on two replicas: exactly one stays live", async () => {
    const [r1, r2] = cluster.replicas;
    // One after the other: the newer registration wins, the older one is told `replaced`.
    const first = agent("dup-1", r1.url);
    agents.push(first);
    const firstExit = first.start();
    await until(async () => (await connections()).some((c) => c.runner_id === "dup-1"), "dup-1 on r1");
    const second = agent("dup-1", r2.url);
    agents.push(second);
    void second.start();
    assert.equal(await firstExit, "replaced");
    const dup1 = (await connections()).filter((c) => c.runner_id === "dup-1");
    assert.deepEqual(
      dup1.map((c) => c.replica),
      ["r2"],
    );
    // At the same moment: whichever claim is newer wins; the other stops.
    const a = agent("dup-2", r1.url);
    const b = agent("dup-2", r2.url);
    agents.push(a, b);
    const exits = [a.start(), b.start()];
    const firstOut = await Promise.race(exits.map((p, i) => p.then((e) => ({ i, e }))));
    assert.equal(firstOut.e, "replaced");
    const survivor = firstOut.i === 0 ? b : a;
    await until(
      async () => (await connections()).filter((c) => c.runner_id === "dup-2").length === 1,
      "one dup-2",
    );
    const states = [a, b].map((x) => (x === survivor ? "live" : "replaced"));
    assert.deepEqual(states.sort(), ["live", "replaced"]);
    const dup2 = (await connections()).filter((c) => c.runner_id === "dup-2");
    assert.equal(dup2.length, 1);
    assert.equal(dup2[0].replica, firstOut.i === 0 ? "r2" : "r1");
  });

  it("calls waiting in the grace period on two replicas complete when the agent comes back on a third", async () => {
    const [r1, r2, r3] = cluster.replicas;
    const first = agent("grace-1", r1.url);
    void first.start();
    await until(async () => (await connections()).some((c) => c.runner_id === "grace-1"), "grace-1 on r1");
    await first.close();
    await until(async () => !(await connections()).some((c) => c.runner_id === "grace-1"), "grace-1 gone");
    const waitedOn = (r: Replica) =>
      cluster.metric(r, 'revdial_cluster_directory_lookups_total{result="grace"}');
    const before = await Promise.all([waitedOn(r1), waitedOn(r3)]);
    const onR1 = cluster.call(r1.url, "GET", "/api/v1/revdial/grace-1/proxy/clipboard");
    const onR3 = cluster.call(r3.url, "GET", "/api/v1/revdial/grace-1/proxy/clipboard");
    const early: string[] = [];
    for (const [name, p] of [
      ["r1", onR1],
      ["r3", onR3],
    ] as const)
      void p.then((x) => early.push(`${name}: ${x.status} ${x.bytes.toString().slice(0, 120)}`));
    await until(
      async () => (await waitedOn(r1)) > before[0] && (await waitedOn(r3)) > before[1],
      "both calls waiting",
    ).catch(async (err: Error) => {
      const now = await Promise.all([waitedOn(r1), waitedOn(r3)]);
      throw new Error(
        `${err.message}; before ${before}, now ${now}; settled: ${early.join(" | ") || "none"}`,
      );
    });
    const second = agent("grace-1", r2.url);
    agents.push(second);
    void second.start();
    const [a, b] = await Promise.all([onR1, onR3]);
    assert.equal(a.status, 200, a.bytes.toString());
    assert.equal(a.replica, "r1");
    assert.equal(b.status, 200, b.bytes.toString());
    assert.equal(b.replica, "r3");
    const conns = (await connections()).filter((c) => c.runner_id === "grace-1");
    assert.deepEqual(
      conns.map((c) => c.replica),
      ["r2"],
    );
  });

  it("a replica whose LISTEN connection is cut follows the directory again: a replacement still reaches it", async () => {
    const [r1, r2] = cluster.replicas;
    const first = agent("relisten-1", r1.url);
    agents.push(first);
    const firstExit = first.start();
    await until(
      async () => (await connections()).some((c) => c.runner_id === "relisten-1"),
      "relisten-1 on r1",
    );
    const db = new pg.Client({ connectionString: cluster.databaseUrl });
    await db.connect();
    try {
      const listener =
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'revdial-directory-listen r1'";
      const cut = await db.query(`SELECT pg_terminate_backend(pid) FROM (${listener}) l`);
      assert.equal(cut.rowCount, 1, "r1's listening connection was there to cut");
      await until(async () => (await db.query(listener)).rowCount === 1, "r1 listening again");
    } finally {
      await db.end();
    }
    const second = agent("relisten-1", r2.url);
    agents.push(second);
    void second.start();
    assert.equal(await firstExit, "replaced");
    const held = (await connections()).filter((c) => c.runner_id === "relisten-1");
    assert.deepEqual(
      held.map((c) => c.replica),
      ["r2"],
    );
  });

  it("`revdial connections` shows the whole cluster with each tunnel's replica", async () => {
    const run = (args: string[]) =>
      execFileSync(process.execPath, [MAIN, "connections", ...args], {
        env: { ...process.env, REVDIAL_URL: cluster.replicas[2].url, REVDIAL_API_KEY: cluster.adminKey },
        encoding: "utf8",
      });
    const rows = JSON.parse(run(["--json"])) as Conn[];
    const api = await connections(cluster.replicas[0].url);
    assert.deepEqual(
      rows.map((r) => `${r.runner_id}@${r.replica}`).sort(),
      api.map((r) => `${r.runner_id}@${r.replica}`).sort(),
    );
    const table = run([]);
    assert.match(table.split("\n")[0], /RUNNER ID\s+REPLICA\s+PROTOCOL/);
    assert.match(table, /load-0\s+r[123]\s/);
  });

  it("the documented HAProxy configuration carries agents and calls to the replicas too", {
    skip: HAPROXY ? false : "SKIPPED: haproxy is not installed",
  }, async () => {
    const doc = await readFile(REPLICAS_DOC, "utf8");
    const dir = join(cluster.dir, "haproxy");
    await mkdir(dir, { mode: 0o700 });
    const lb = await startHaproxy(dir, (port) =>
      haproxyConfig(
        doc,
        cluster.replicas.map((r) => r.port),
        port,
      ),
    );
    try {
      const url = `http://127.0.0.1:${lb.port}`;
      const via = agent("haproxy-1", url);
      agents.push(via);
      void via.start();
      await until(
        async () => (await connections()).some((c) => c.runner_id === "haproxy-1"),
        "agent via HAProxy",
      );
      const seen = new Set<string>();
      for (let i = 0; i < 6; i++) {
        const res = await cluster.call(url, "GET", "/api/v1/revdial/haproxy-1/proxy/clipboard");
        assert.equal(res.status, 200, await lb.errorLog());
        seen.add(String(res.replica));
      }
      assert.ok(seen.size >= 2, `calls spread over the replicas: ${[...seen]}`);
      await via.close(500);
    } finally {
      await lb.stop();
    }
  });

  /** Calls through the load balancer to random load agents until `stop`, each with a deadline. */
  interface CallResult {
    status: number;
    startedAt: number;
    ms: number;
    error?: string;
  }

  function load(stop: { done: boolean }): Promise<CallResult[]> {
    const results: CallResult[] = [];
    const worker = async () => {
      for (let n = 0; n < 400 && !stop.done; n++) {
        const i = Math.floor(Math.random() * LOAD_AGENTS);
        const started = Date.now();
        try {
          const res = await fetch(`${cluster.lbUrl}/api/v1/revdial/load-${i}/proxy/clipboard`, {
            headers: { authorization: `Bearer ${cluster.adminKey}` },
            signal: AbortSignal.timeout(20_000),
          });
          await res.arrayBuffer();
          results.push({ status: res.status, startedAt: started, ms: Date.now() - started });
        } catch (err) {
          const cause = (err as { cause?: unknown }).cause;
          results.push({
            status: -1,
            startedAt: started,
            ms: Date.now() - started,
            error: String(cause ?? err),
          });
        }
        await new Promise((r) => setTimeout(r, 10));
      }
    };
    return Promise.all(Array.from({ length: 6 }, worker)).then(() => results);
  }

  async function holderOfLoad(): Promise<Replica> {
    const conns = (await connections()).filter((c) => c.runner_id.startsWith("load-"));
    const counts = new Map<string, number>();
    for (const c of conns) counts.set(c.replica, (counts.get(c.replica) ?? 0) + 1);
    const [id] = [...counts.entries()].sort((x, y) => y[1] - x[1])[0];
    return cluster.replicas.find((r) => r.id === id) as Replica;
  }

  const allLoadAgentsOff = async (victim: Replica) => {
    const conns = (await connections()).filter((c) => c.runner_id.startsWith("load-"));
    return conns.length === LOAD_AGENTS && conns.every((c) => c.replica !== victim.id);
  };

  it("kill -9 of a replica under load: its agents are back on the others within 10 s, every call made after the kill completes", async () => {
    const victim = await holderOfLoad();
    const stop = { done: false };
    const running = load(stop);
    await new Promise((r) => setTimeout(r, 700));
    const killedAt = Date.now();
    await cluster.stopReplica(victim, "SIGKILL");
    await until(() => allLoadAgentsOff(victim), "every load agent back on another replica", 10_000);
    await new Promise((r) => setTimeout(r, 1000));
    stop.done = true;
    const results = await running;
    assert.ok(results.length > 50, `calls made: ${results.length}`);
    // Calls made after the kill (those that waited out the grace period included) all complete.
    const after = results.filter((r) => r.startedAt >= killedAt);
    assert.ok(after.length > 20, `calls made after the kill: ${after.length}`);
    const failedAfter = after.filter((r) => r.status !== 200);
    assert.deepEqual(
      failedAfter,
      [],
      `${failedAfter.length} of ${after.length} calls made after the kill failed`,
    );
    // A call in flight inside the killed process when it died may be cut (one per load worker at
    // most), never left hanging to its deadline, and never answered wrongly.
    const cut = results.filter((r) => r.startedAt < killedAt && r.status !== 200);
    assert.ok(cut.length <= 6, JSON.stringify(cut));
    for (const r of cut) assert.equal(r.status, -1, `a call in flight at the kill was answered ${r.status}`);
    assert.ok(
      results.every((r) => r.ms < 20_000),
      "no call hung to its deadline",
    );
    await cluster.startReplica(victim);
  });

  it("SIGTERM of a replica under load: its agents move and no call fails", async () => {
    await until(async () => (await connections(cluster.replicas[0].url)).length > 0, "cluster listed");
    const victim = await holderOfLoad();
    const stop = { done: false };
    const running = load(stop);
    await new Promise((r) => setTimeout(r, 700));
    const code = await cluster.stopReplica(victim, "SIGTERM");
    assert.equal(code, 0, victim.log);
    await until(() => allLoadAgentsOff(victim), "every load agent on another replica", 10_000);
    await new Promise((r) => setTimeout(r, 1000));
    stop.done = true;
    const results = await running;
    const failed = results.filter((r) => r.status !== 200);
    assert.ok(results.length > 50, `calls made: ${results.length}`);
    assert.deepEqual(failed, [], `${failed.length} of ${results.length} calls failed`);
    await cluster.startReplica(victim);
  });

  it("the leader dies and the sweeps go on from another replica", async () => {
    const leaderOf = async () => {
      const flags = await Promise.all(
        live().map(async (r) => [r, await cluster.metric(r, "revdial_cluster_leader")] as const),
      );
      return flags.filter(([, v]) => v === 1).map(([r]) => r);
    };
    await until(async () => (await leaderOf()).length === 1, "one leader");
    const [leader] = await leaderOf();
    await cluster.stopReplica(leader, "SIGKILL");
    await until(async () => (await leaderOf()).length === 1, "a new leader", 10_000);
    const [next] = await leaderOf();
    assert.notEqual(next.id, leader.id);
    // A lapsed entry, as a replica killed long ago leaves: the new leader's clean-up removes it.
    const db = new pg.Client({ connectionString: cluster.databaseUrl });
    await db.connect();
    try {
      await db.query(
        `INSERT INTO revdial_tunnels (runner_id, replica_id, generation, state, expires_at)
         VALUES ('ghost-1', 'gone', nextval('revdial_tunnel_generation'), 'live', now() - interval '1 minute')`,
      );
      await until(
        async () =>
          (await db.query("SELECT 1 FROM revdial_tunnels WHERE runner_id = 'ghost-1'")).rowCount === 0,
        "the lapsed entry swept",
        10_000,
      );
    } finally {
      await db.end();
    }
    assert.ok((await cluster.metric(next, "revdial_cluster_directory_sweeps_total")) > 0);
    for (const r of live().filter((r) => r !== next))
      assert.equal(
        await cluster.metric(r, "revdial_cluster_directory_sweeps_total"),
        0,
        `${r.id} never swept`,
      );
  });
});
