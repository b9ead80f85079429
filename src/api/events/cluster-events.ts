// Replica mode's event sources, in one place for server.ts: the cluster feed (cluster-feed.ts)
// carries the ids of every replica's store writes to the others, and tunnels are told as the
// cluster sees them (cluster-tunnels.ts) instead of as this replica's registry does. A single
// server does not use this file: its registry and store observer feed the change publisher as
// they always did.

import type { Logger } from "../../common/logger.ts";
import type { Cluster } from "../cluster/cluster.ts";
import type { TunnelRegistry } from "../tunnel/tunnel-registry.ts";
import type { ChangePublisher } from "./change-publisher.ts";
import { ClusterFeed } from "./cluster-feed.ts";
import { ClusterTunnelEvents } from "./cluster-tunnels.ts";
import type { ChangeSink } from "./store-observer.ts";

export interface ClusterEventsParts {
  cluster: Cluster;
  registry: TunnelRegistry;
  publisher: ChangePublisher;
  databaseUrl: string;
  logger: Logger;
}

export interface ClusterEvents {
  /** The sink for the store observer: this replica's publisher, and the other replicas. */
  sink: ChangeSink;
  feed: ClusterFeed;
  close(): Promise<void>;
}

/** Starts both; throws (having closed what it opened) when Postgres refuses the feed's connection. */
export async function startClusterEvents(p: ClusterEventsParts): Promise<ClusterEvents> {
  const { publisher, registry } = p;
  const tunnels = new ClusterTunnelEvents({ cluster: p.cluster, registry, publisher });
  const feed = new ClusterFeed({
    databaseUrl: p.databaseUrl,
    replicaId: p.cluster.replicaId,
    logger: p.logger,
    remote: {
      sessionChanged: (id) => publisher.sessionChanged(id),
      hostChanged: (id) => publisher.hostChanged(id),
      tunnelStats: (replicaId, runnerId, stats) => tunnels.tunnelStats(replicaId, runnerId, stats),
    },
  });
  await feed.start();
  tunnels.start();
  const onConnected = (runnerId: string, stats: Parameters<ClusterFeed["tunnelUp"]>[1]) =>
    feed.tunnelUp(runnerId, stats);
  registry.on("connected", onConnected);
  return {
    feed,
    sink: {
      sessionChanged(id) {
        publisher.sessionChanged(id);
        feed.sessionChanged(id);
      },
      hostChanged(id) {
        publisher.hostChanged(id);
        feed.hostChanged(id);
      },
    },
    async close() {
      registry.off("connected", onConnected);
      tunnels.close();
      await feed.close();
    },
  };
}
