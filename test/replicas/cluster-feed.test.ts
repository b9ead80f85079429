// The cluster feed (src/api/events/cluster-feed.ts) on a real Postgres database of its own, two
// feeds standing for two replicas: what one's store writes touched in one turn reaches the other
// whole, however many ids (past the 8000 bytes one NOTIFY may carry), never back to itself; a
// tunnel's figures cross too.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import pg from "pg";
import { ClusterFeed, type RemoteChanges } from "../../src/api/events/cluster-feed.ts";
import { silentLogger } from "../../src/common/logger.ts";
import type { TunnelStats } from "../../src/tunnel/types.ts";
import { POSTGRES_ADMIN_URL, until } from "./cluster-harness.ts";

async function postgresUnavailable(): Promise<string | false> {
  const client = new pg.Client({ connectionString: POSTGRES_ADMIN_URL, connectionTimeoutMillis: 2000 });
  try {
    await client.connect();
    return false;
  } catch (err) {
    return `SKIPPED: no Postgres server answers at ${POSTGRES_ADMIN_URL} (${(err as Error).message})`;
  } finally {
    await client.end().catch(() => {});
  }
}

const skip = await postgresUnavailable();
if (skip) console.log(`# ${skip}`);

class Received implements RemoteChanges {
  sessions: string[] = [];
  hosts: string[] = [];
  tunnels: { replicaId: string; runnerId: string; stats: TunnelStats }[] = [];
  sessionChanged(id: string): void {
    this.sessions.push(id);
  }
  hostChanged(id: string): void {
    this.hosts.push(id);
  }
  tunnelStats(replicaId: string, runnerId: string, stats: TunnelStats): void {
    this.tunnels.push({ replicaId, runnerId, stats });
  }
}

describe("the cluster feed between two replicas", { skip }, () => {
  let database = "";
  let databaseUrl = "";
  const got = { a: new Received(), b: new Received() };
  let a: ClusterFeed;
  let b: ClusterFeed;

  before(async () => {
    database = `revdial_feed_${process.pid}_${Math.random().toString(36).slice(2, 8)}`;
    const admin = new pg.Client({ connectionString: POSTGRES_ADMIN_URL });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${database}`);
    await admin.end();
    const u = new URL(POSTGRES_ADMIN_URL);
    u.pathname = `/${database}`;
    databaseUrl = u.toString();
    a = new ClusterFeed({ databaseUrl, replicaId: "a", logger: silentLogger(), remote: got.a });
    b = new ClusterFeed({ databaseUrl, replicaId: "b", logger: silentLogger(), remote: got.b });
    await a.start();
    await b.start();
  });

  after(async () => {
    await a?.close();
    await b?.close();
    const admin = new pg.Client({ connectionString: POSTGRES_ADMIN_URL });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    await admin.end();
  });

  it("carries thousands of ids changed in one turn whole, to the other replica only", async () => {
    const sessions = Array.from({ length: 3000 }, (_, i) => `ses_${String(i).padStart(20, "0")}`);
    const hosts = Array.from({ length: 500 }, (_, i) => `host-${i}`);
    for (const id of sessions) a.sessionChanged(id);
    for (const id of hosts) a.hostChanged(id);
    const stats: TunnelStats = {
      runner_id: "sandbox-ses_x",
      protocol: "mux",
      transport: "ws",
      connected_at: new Date().toISOString(),
      remote_address: "127.0.0.1",
      rtt_ms: null,
      active_streams: 0,
      bytes_in: 0,
      bytes_out: 0,
    };
    a.tunnelUp("sandbox-ses_x", stats);
    await until(
      () =>
        got.b.sessions.length >= sessions.length &&
        got.b.hosts.length >= hosts.length &&
        got.b.tunnels.length >= 1,
      "every id on b",
    );
    assert.deepEqual(got.b.sessions, sessions);
    assert.deepEqual(got.b.hosts, hosts);
    assert.deepEqual(got.b.tunnels, [{ replicaId: "a", runnerId: "sandbox-ses_x", stats }]);
    // b's own change, seen by a, is the fence: a's own notices would have come back to it before.
    b.hostChanged("from-b");
    await until(() => got.a.hosts.includes("from-b"), "b's change on a");
    assert.deepEqual(got.a.sessions, [], "a is not told its own changes");
    assert.deepEqual(got.a.hosts, ["from-b"]);
    assert.deepEqual(
      got.b.hosts.filter((h) => h === "from-b"),
      [],
      "nor is b",
    );
  });
});
