// The dashboard's event stream (GET /api/v1/events) is the whole cluster's: two `revdial server`
// replicas on one Postgres database, streams open on r1 (an admin's, two users') and on r2 (an
// admin's), every change made through r2. What a user would notice:
// - a session created and stopped through r2 shows on r1 with its status, once per change;
// - its sandbox's tunnel coming up and going down on r2 shows on r1 (`tunnel` up then down, with
//   its figures, and the session's sandbox_connected flipping), each once, on r1 and on r2 alike;
// - a host created, registering and heartbeating through r2 shows on r1, once per change;
// - a user on r1 sees their own session and tunnel, and nothing of another user's;
// - r1's listening connection cut: it says so, comes back, and streams r2's changes again.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import pg from "pg";
import { TargetMap } from "../../src/agent/target-map.ts";
import { AgentClient } from "../../src/agent/tunnel-client.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { Cluster, clusterUnavailable, type Replica, until } from "./cluster-harness.ts";

const skip = (await clusterUnavailable()) ?? false;
if (skip) console.log(`# ${skip}`);

interface SseEvent {
  type: string;
  data: Record<string, unknown>;
}

interface Stream {
  events: SseEvent[];
  /** Resolves with the first event (from `from` on) that `match` accepts. */
  waitFor(what: string, match: (e: SseEvent) => boolean, from?: number): Promise<SseEvent>;
  close(): void;
}

async function openStream(replica: Replica, key: string): Promise<Stream> {
  const abort = new AbortController();
  const res = await fetch(`${replica.url}/api/v1/events`, {
    headers: { authorization: `Bearer ${key}` },
    signal: abort.signal,
  });
  assert.equal(res.status, 200);
  const events: SseEvent[] = [];
  void (async () => {
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
        buffer += decoder.decode(chunk, { stream: true });
        for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const type = /^event: (.*)$/m.exec(block)?.[1];
          const data = /^data: (.*)$/m.exec(block)?.[1];
          if (type && data) events.push({ type, data: JSON.parse(data) as Record<string, unknown> });
        }
      }
    } catch {
      // aborted by close()
    }
  })();
  const stream: Stream = {
    events,
    close: () => abort.abort(),
    async waitFor(what, match, from = 0) {
      let found: SseEvent | undefined;
      await until(() => {
        found = events.slice(from).find(match);
        return found !== undefined;
      }, what);
      return found as SseEvent;
    },
  };
  await stream.waitFor("the stream's ready event", (e) => e.type === "ready");
  return stream;
}

describe("the event stream of one replica carries the whole cluster's changes", { skip }, () => {
  let cluster: Cluster;
  let r1: Replica;
  let r2: Replica;
  const users: Record<"alice" | "bob", { id: string; key: string }> = {
    alice: { id: "", key: "" },
    bob: { id: "", key: "" },
  };
  const streams: Stream[] = [];
  let agent: AgentClient | null = null;

  before(async () => {
    cluster = await new Cluster([], 1024, { loadBalancer: false }).start(2);
    [r1, r2] = cluster.replicas;
    for (const name of ["alice", "bob"] as const) {
      const res = await cluster.call(r1.url, "POST", "/api/v1/users", { name });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      const body = res.body as { id: string; api_key: string };
      users[name] = { id: body.id, key: body.api_key };
    }
  });

  after(async () => {
    for (const s of streams) s.close();
    await agent?.close(500).catch(() => {});
    await cluster?.close();
  });

  it("shows on r1 the sessions, tunnels and hosts changed through r2, once each, to whom may see them", async () => {
    const open = async (r: Replica, key: string) => {
      const s = await openStream(r, key);
      streams.push(s);
      return s;
    };
    const admin1 = await open(r1, cluster.adminKey);
    const alice1 = await open(r1, users.alice.key);
    const bob1 = await open(r1, users.bob.key);
    const admin2 = await open(r2, cluster.adminKey);

    // A session created through r2.
    const created = await cluster.call(r2.url, "POST", "/api/v1/sessions", { name: "ev" }, users.alice.key);
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const id = (created.body as { id: string }).id;
    const runnerId = `sandbox-${id}`;
    const ofSession = (e: SseEvent) => e.type === "session" && e.data.id === id;
    const ofTunnel = (e: SseEvent) => e.type === "tunnel" && e.data.runner_id === runnerId;
    for (const s of [admin1, alice1])
      await s.waitFor("the new session on r1", (e) => ofSession(e) && e.data.status === "pending");

    // Its sandbox's tunnel comes up on r2, then goes.
    agent = new AgentClient({
      serverUrl: r2.url,
      runnerId,
      token: cluster.adminKey,
      targets: new TargetMap({ desktop: "127.0.0.1:9" }, null),
      logger: silentLogger(),
    });
    void agent.start();
    for (const s of [admin1, alice1]) {
      const up = await s.waitFor("the tunnel up on r1", (e) => ofTunnel(e) && e.data.state === "up");
      assert.equal(up.data.session_id, id);
      assert.equal(up.data.owner, users.alice.id);
      assert.equal(
        (up.data.stats as { runner_id?: string } | undefined)?.runner_id,
        runnerId,
        "with its figures",
      );
      await s.waitFor("sandbox_connected on r1", (e) => ofSession(e) && e.data.sandbox_connected === true);
    }
    await admin2.waitFor("the tunnel up on r2", (e) => ofTunnel(e) && e.data.state === "up");
    await agent.close(500);
    agent = null;
    for (const s of [admin1, alice1]) {
      await s.waitFor("the tunnel down on r1", (e) => ofTunnel(e) && e.data.state === "down");
      const connected = s.events.findIndex((e) => ofSession(e) && e.data.sandbox_connected === true);
      await s.waitFor(
        "sandbox_connected false again on r1",
        (e) => ofSession(e) && e.data.sandbox_connected === false,
        connected + 1,
      );
    }
    await admin2.waitFor("the tunnel down on r2", (e) => ofTunnel(e) && e.data.state === "down");

    // The session stopped through r2.
    const stopped = await cluster.call(
      r2.url,
      "DELETE",
      `/api/v1/external-agents/${id}`,
      undefined,
      users.alice.key,
    );
    assert.equal(stopped.status, 200, JSON.stringify(stopped.body));
    for (const s of [admin1, alice1])
      await s.waitFor("the stopped session on r1", (e) => ofSession(e) && e.data.status === "stopped");

    // A host created, registering and heartbeating through r2.
    const ofHost = (e: SseEvent) => e.type === "host" && e.data.id === "ev-h";
    const host = await cluster.call(r2.url, "POST", "/api/v1/wolf-instances", {
      id: "ev-h",
      max_sandboxes: 4,
    });
    assert.equal(host.status, 201, JSON.stringify(host.body));
    const hostKey = (host.body as { key: string }).key;
    await admin1.waitFor("the new host on r1", ofHost);
    const registered = await cluster.call(
      r2.url,
      "POST",
      "/api/v1/wolf-instances/register",
      { id: "ev-h", name: "events host", max_sandboxes: 2 },
      hostKey,
    );
    assert.equal(registered.status, 200, JSON.stringify(registered.body));
    await admin1.waitFor("the registration on r1", (e) => ofHost(e) && e.data.name === "events host");
    const beatsBefore = admin1.events.filter(ofHost).at(-1)?.data.last_heartbeat;
    // A heartbeat the view can tell from the registration's (its time is to the millisecond).
    await until(
      () => Date.now() > Date.parse(String(beatsBefore)) + 1,
      "a millisecond past the registration",
    );
    const beat = await cluster.call(r2.url, "POST", "/api/v1/wolf-instances/ev-h/heartbeat", {}, hostKey);
    assert.equal(beat.status, 200, JSON.stringify(beat.body));
    await admin1.waitFor(
      "the heartbeat on r1",
      (e) => ofHost(e) && e.data.last_heartbeat !== null && e.data.last_heartbeat !== beatsBefore,
    );

    // Fences: changes told after all of the above; when they have arrived, a late duplicate would have.
    const own = await cluster.call(r2.url, "POST", "/api/v1/sessions", { name: "bob's" }, users.bob.key);
    assert.equal(own.status, 201, JSON.stringify(own.body));
    const bobsId = (own.body as { id: string }).id;
    await bob1.waitFor("bob's own session on r1", (e) => e.type === "session" && e.data.id === bobsId);
    const fence = await cluster.call(r2.url, "POST", "/api/v1/wolf-instances", { id: "ev-fence" });
    assert.equal(fence.status, 201);
    for (const s of [admin1, admin2])
      await s.waitFor("the fence host", (e) => e.type === "host" && e.data.id === "ev-fence");
    const hers = await cluster.call(r2.url, "POST", "/api/v1/sessions", { name: "fence" }, users.alice.key);
    assert.equal(hers.status, 201);
    const fenceId = (hers.body as { id: string }).id;
    await alice1.waitFor("alice's fence", (e) => e.type === "session" && e.data.id === fenceId);

    // Each change once: the tunnel up and down (on r1, and on r2 which holds it), the session's
    // states in order, the host's three writes.
    for (const [name, s] of [
      ["admin on r1", admin1],
      ["alice on r1", alice1],
      ["admin on r2", admin2],
    ] as const)
      assert.deepEqual(
        s.events.filter(ofTunnel).map((e) => e.data.state),
        ["up", "down"],
        `${name}: the tunnel's events`,
      );
    for (const [name, s] of [
      ["admin on r1", admin1],
      ["alice on r1", alice1],
    ] as const)
      assert.deepEqual(
        s.events
          .filter(ofSession)
          .map((e) => `${e.data.status}/${e.data.sandbox_connected}`)
          .filter((x) => !x.startsWith("stopping/")), // the stop's first write may be read as its last
        ["pending/false", "pending/true", "pending/false", "stopped/false"],
        `${name}: the session's events`,
      );
    assert.equal(admin1.events.filter(ofHost).length, 3, "the host's events on r1");
    // Bob sees nothing of Alice's, and no host.
    assert.deepEqual(
      bob1.events.filter((e) => e.type !== "ready").map((e) => `${e.type}:${e.data.id ?? e.data.runner_id}`),
      [`session:${bobsId}`],
    );
    assert.ok(!alice1.events.some((e) => e.data.id === bobsId || e.type === "host"), "alice sees only hers");
  });

  it("keeps streaming other replicas' changes after its listening connection is cut (logged, not doubled)", async () => {
    const admin1 = await openStream(r1, cluster.adminKey);
    streams.push(admin1);
    const db = new pg.Client({ connectionString: cluster.databaseUrl });
    await db.connect();
    try {
      const listener = "SELECT pid FROM pg_stat_activity WHERE application_name = 'revdial-events r1'";
      const cut = await db.query(`SELECT pg_terminate_backend(pid) FROM (${listener}) l`);
      assert.equal(cut.rowCount, 1, "r1's event connection was there to cut");
      await until(() => r1.log.includes("cluster event listener back"), "r1 says its event listener is back");
      assert.match(r1.log, /cluster event listener lost/);
      assert.equal((await db.query(listener)).rowCount, 1, "one event connection, not two");
    } finally {
      await db.end();
    }
    const created = await cluster.call(
      r2.url,
      "POST",
      "/api/v1/sessions",
      { name: "after" },
      users.alice.key,
    );
    assert.equal(created.status, 201);
    const id = (created.body as { id: string }).id;
    await admin1.waitFor(
      "a session created through r2 after the cut",
      (e) => e.type === "session" && e.data.id === id,
    );
    assert.ok(r1.child !== null && r1.child.exitCode === null, "r1 is still running");
  });
});
