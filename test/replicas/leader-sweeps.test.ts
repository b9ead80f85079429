// The background work follows the leader: after kill -9 of the leader, the replica that takes the
// lock runs the lifecycle sweeper and the hosts' offline check. Crash states made after the kill
// (a host silent for an hour with no tunnel, a task left `planning` with no session) are settled,
// which only a leader's sweeps do. Short intervals: --sweep-interval 300ms --host-offline-after 1s.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import pg from "pg";
import { Cluster, clusterUnavailable, type Replica, until } from "./cluster-harness.ts";

const skip = (await clusterUnavailable()) ?? false;

describe("the sweeps after the leader's death", { skip }, () => {
  let cluster: Cluster;
  let db: pg.Client;

  before(async () => {
    cluster = await new Cluster(["--sweep-interval", "300ms", "--host-offline-after", "1s"], 1024, {
      loadBalancer: false,
    }).start(3);
    db = new pg.Client({ connectionString: cluster.databaseUrl });
    await db.connect();
  });

  after(async () => {
    await db?.end();
    await cluster?.close();
  });

  const leaders = async (): Promise<Replica[]> => {
    const live = cluster.replicas.filter((r) => r.child !== null);
    const flags = await Promise.all(live.map((r) => cluster.metric(r, "revdial_cluster_leader")));
    return live.filter((_, i) => flags[i] === 1);
  };

  it("the new leader marks a silent host offline and gives a task nobody plans back to the backlog", async () => {
    await until(async () => (await leaders()).length === 1, "one leader");
    const [leader] = await leaders();
    const other = cluster.replicas.find((r) => r !== leader) as Replica;
    const fork = await cluster.call(other.url, "POST", "/api/v1/sample-projects/simple/fork", {
      sample_project_id: "modern-todo-app",
    });
    assert.equal(fork.status, 201, JSON.stringify(fork.body));
    const task = (fork.body as { tasks: { id: string }[] }).tasks[0].id;
    const host = await cluster.call(other.url, "POST", "/api/v1/wolf-instances", {
      id: "silent",
      max_sandboxes: 1,
    });
    assert.equal(host.status, 201, JSON.stringify(host.body));

    await cluster.stopReplica(leader, "SIGKILL");
    await until(async () => (await leaders()).length === 1, "a new leader", 10_000);
    const [next] = await leaders();
    assert.notEqual(next.id, leader.id);

    // Crash states, made after the old leader died: only the new leader's sweeps can settle them.
    await db.query(
      "UPDATE wolf_instances SET status = 'online', last_heartbeat = now() - interval '1 hour' WHERE id = 'silent'",
    );
    await db.query(
      "UPDATE spec_tasks SET status = 'planning', updated_at = now() - interval '1 hour' WHERE id = $1",
      [task],
    );
    await until(
      async () => {
        const hosts = await cluster.call(next.url, "GET", "/api/v1/wolf-instances");
        return (hosts.body as { id: string; status: string }[]).some(
          (h) => h.id === "silent" && h.status === "offline",
        );
      },
      "the silent host offline",
      10_000,
    );
    await until(
      async () => {
        const t = await cluster.call(next.url, "GET", `/api/v1/spec-tasks/${task}`);
        return (t.body as { status: string }).status === "backlog";
      },
      "the task back in the backlog",
      10_000,
    );
  });
});
