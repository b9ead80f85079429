// Replica mode of `revdial server` (--replica-id, --advertise, --peer-secret-file): what server.ts
// needs to run as one replica of a cluster, kept here so that the single server's start-up is
// unchanged when these options are absent.

import { InvalidOptionError } from "../../common/errors.ts";
import type { Logger } from "../../common/logger.ts";
import { ApiError } from "../http-errors.ts";
import type { TunnelRegistry } from "../tunnel/tunnel-registry.ts";
import { Cluster, type ClusterOptions } from "./cluster.ts";

export interface ReplicaOptions {
  /** This replica's id, unique in the cluster (env REVDIAL_REPLICA_ID). */
  replicaId: string;
  /** The URL other replicas reach this one's peer endpoint at (env REVDIAL_ADVERTISE_URL). */
  advertiseUrl: string;
  /** The secret every replica shares for replica-to-replica calls. */
  peerSecret: string;
  /** HOST:PORT the peer endpoint listens on. Default: the listen host, the advertise URL's port. */
  peerListen?: { host: string; port: number };
  /** Tests: directory and election timings. */
  directory?: ClusterOptions["directory"];
  leaderRetryMs?: number;
}

const REPLICA_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/**
 * Refuses replica mode without Postgres: the embedded store lives in one process's data dir, so a
 * second replica could neither share it nor the directory. Also checks the options' form.
 */
export function checkReplicaOptions(replica: ReplicaOptions, databaseUrl: string | null | undefined): void {
  if (!databaseUrl) {
    throw new ApiError(
      400,
      "RD_ERR_REPLICA_NEEDS_POSTGRES",
      "replica mode (--replica-id) needs DATABASE_URL: the embedded store serves one process, and the replicas share the tunnel directory in Postgres",
    );
  }
  if (!REPLICA_ID_PATTERN.test(replica.replicaId))
    throw new InvalidOptionError(
      "replicaId",
      `expected letters, digits, '.', '_' or '-', got "${replica.replicaId}"`,
    );
  let url: URL;
  try {
    url = new URL(replica.advertiseUrl);
  } catch {
    throw new InvalidOptionError("advertiseUrl", `not a URL: "${replica.advertiseUrl}"`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    throw new InvalidOptionError("advertiseUrl", "expected an http:// (h2c) or https:// URL");
  if (!replica.peerSecret || replica.peerSecret.length < 16)
    throw new InvalidOptionError("peerSecret", "the peer secret must be at least 16 characters");
}

/** The peer endpoint's address: given, or the listen host with the advertise URL's port. */
export function peerListenOf(replica: ReplicaOptions, listenHost: string): { host: string; port: number } {
  if (replica.peerListen) return replica.peerListen;
  const url = new URL(replica.advertiseUrl);
  const port = Number(url.port || (url.protocol === "https:" ? 443 : 80));
  return { host: listenHost, port };
}

export interface JoinParts {
  replica: ReplicaOptions;
  databaseUrl: string;
  listenHost: string;
  registry: TunnelRegistry;
  logger: Logger;
  gracePeriodMs: number;
  callTimeoutMs: number;
  tls?: { key: Buffer; cert: Buffer } | null;
  metrics: ClusterOptions["metrics"];
  onLeader: (leader: boolean) => void;
}

export async function joinCluster(p: JoinParts): Promise<Cluster> {
  const cluster = new Cluster({
    replicaId: p.replica.replicaId,
    advertiseUrl: p.replica.advertiseUrl,
    peerListen: peerListenOf(p.replica, p.listenHost),
    peerSecret: p.replica.peerSecret,
    databaseUrl: p.databaseUrl,
    registry: p.registry,
    logger: p.logger,
    gracePeriodMs: p.gracePeriodMs,
    callTimeoutMs: p.callTimeoutMs,
    tls: p.tls,
    directory: p.replica.directory,
    leaderRetryMs: p.replica.leaderRetryMs,
    metrics: p.metrics,
    onLeader: p.onLeader,
  });
  try {
    await cluster.start();
  } catch (err) {
    cluster.destroy();
    throw err;
  }
  return cluster;
}
