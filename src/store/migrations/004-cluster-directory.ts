// Migration 4: the cluster's tunnel directory (src/api/cluster/directory.ts). Two UNLOGGED tables:
// they are leases, rebuilt by the live replicas within seconds, so they skip the WAL (no write
// amplification on every registration and renewal) and are emptied by a crash recovery, which is
// what a lease wants anyway. A single server never writes them.
// - revdial_replicas: one row per replica, its advertise URL and the lease it renews every second.
// - revdial_tunnels: runner id -> the replica holding its live tunnel (or waiting for it in a grace
//   period), with a generation from one sequence: the highest generation is the newest
//   registration, and an older one never overwrites it.

export const migration004 = Object.freeze({
  version: 4,
  name: "cluster-directory",
  sql: `
CREATE UNLOGGED TABLE revdial_replicas (
  replica_id     text PRIMARY KEY,
  advertise_url  text NOT NULL,
  started_at     timestamptz NOT NULL DEFAULT now(),
  expires_at     timestamptz NOT NULL
);
CREATE UNLOGGED TABLE revdial_tunnels (
  runner_id   text PRIMARY KEY,
  replica_id  text NOT NULL,
  generation  bigint NOT NULL,
  state       text NOT NULL CHECK (state IN ('live', 'grace')),
  expires_at  timestamptz NOT NULL
);
CREATE INDEX revdial_tunnels_replica_idx ON revdial_tunnels(replica_id);
CREATE SEQUENCE revdial_tunnel_generation;
`,
});
