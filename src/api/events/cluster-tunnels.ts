// A replica's `tunnel` events, cluster-wide: a runner is `up` when its tunnel is live anywhere in
// the cluster (here, or on a live replica as the directory says: the cluster dialer's
// isConnected, which is also what sandbox_connected and tunnel_connected read), `down` when it is
// live nowhere. Only changes of that are published, once each, whatever told of them: the local
// registry (`connected`, `disconnected`), the directory's NOTIFYs (`change`) or its periodic whole
// reload (which also catches what a lost NOTIFY or a replica's lapsed lease changed). So a tunnel is
// not told twice on the replica that holds it (its registry and its own directory entry say the same
// thing), and a tunnel moving between replicas is not told `down` when it is already `up` elsewhere.
//
// Figures: a tunnel live here is published with its own; one live elsewhere with the figures its
// holder sent (cluster-feed.ts). Those travel apart from the directory's NOTIFY, so an `up` whose
// figures have not come yet waits for them, up to FIGURES_WAIT_MS, then goes without.
//
// Bounds: the runners told `up` (one entry per live tunnel of the cluster), the `up`s waiting for
// figures (one timer each), and figures not claimed yet (at most maxFigures, the oldest dropped;
// the rest dropped at each reload once older than FIGURES_KEEP_MS).

import { InvalidOptionError } from "../../common/errors.ts";
import type { TunnelStats } from "../../tunnel/types.ts";
import type { Cluster } from "../cluster/cluster.ts";
import type { DirectoryEntry } from "../cluster/directory.ts";
import type { TunnelRegistry } from "../tunnel/tunnel-registry.ts";
import type { ChangePublisher } from "./change-publisher.ts";

/** How long an `up` from elsewhere waits for its holder's figures. */
export const FIGURES_WAIT_MS = 500;
const FIGURES_KEEP_MS = 30_000;

export const CLUSTER_TUNNEL_EVENTS_DEFAULTS = Object.freeze({ maxFigures: 10_000 });

export interface ClusterTunnelEventsOptions {
  cluster: Cluster;
  registry: TunnelRegistry;
  publisher: Pick<ChangePublisher, "tunnelChanged">;
  /** Figures from other replicas kept unclaimed at most. Default 10,000. */
  maxFigures?: number;
}

interface Figures {
  replicaId: string;
  stats: TunnelStats;
  at: number;
}

export class ClusterTunnelEvents {
  readonly #cluster: Cluster;
  readonly #registry: TunnelRegistry;
  readonly #publisher: Pick<ChangePublisher, "tunnelChanged">;
  readonly #maxFigures: number;
  /** Runners told `up` (live somewhere in the cluster). */
  readonly #up = new Set<string>();
  /** Runners `up` elsewhere, not told yet: waiting for their figures. */
  readonly #waiting = new Map<string, NodeJS.Timeout>();
  /** Figures other replicas sent, not claimed by an `up` yet. */
  readonly #figures = new Map<string, Figures>();
  #started = false;

  constructor(options: ClusterTunnelEventsOptions) {
    for (const name of ["cluster", "registry", "publisher"] as const)
      if (!options?.[name]) throw new InvalidOptionError(name, "is required");
    this.#cluster = options.cluster;
    this.#registry = options.registry;
    this.#publisher = options.publisher;
    this.#maxFigures = options.maxFigures ?? CLUSTER_TUNNEL_EVENTS_DEFAULTS.maxFigures;
    if (!Number.isSafeInteger(this.#maxFigures) || this.#maxFigures < 1)
      throw new InvalidOptionError("maxFigures", `expected a positive integer, got ${this.#maxFigures}`);
  }

  /** Follows the registry and the directory, from what is live now (told to nobody: nobody watches yet). */
  start(): void {
    if (this.#started) return;
    this.#started = true;
    for (const id of this.#cluster.liveRunnerIds()) this.#up.add(id);
    this.#registry.on("connected", this.#onConnected);
    this.#registry.on("disconnected", this.#onDisconnected);
    this.#cluster.directory.on("change", this.#onChange);
    this.#cluster.directory.on("reload", this.#onReload);
  }

  /** A tunnel registered on `replicaId`, with these figures (from the cluster feed). */
  tunnelStats(replicaId: string, runnerId: string, stats: TunnelStats): void {
    if (!this.#started) return;
    if (this.#waiting.has(runnerId) && this.#holder(runnerId) === replicaId) {
      clearTimeout(this.#waiting.get(runnerId));
      this.#waiting.delete(runnerId);
      this.#publisher.tunnelChanged(runnerId, "up", stats);
      return;
    }
    this.#figures.delete(runnerId);
    this.#figures.set(runnerId, { replicaId, stats, at: Date.now() });
    if (this.#figures.size > this.#maxFigures)
      this.#figures.delete(this.#figures.keys().next().value as string);
  }

  close(): void {
    if (!this.#started) return;
    this.#started = false;
    this.#registry.off("connected", this.#onConnected);
    this.#registry.off("disconnected", this.#onDisconnected);
    this.#cluster.directory.off("change", this.#onChange);
    this.#cluster.directory.off("reload", this.#onReload);
    for (const t of this.#waiting.values()) clearTimeout(t);
    this.#waiting.clear();
    this.#figures.clear();
    this.#up.clear();
  }

  readonly #onConnected = (runnerId: string, stats: TunnelStats): void => this.#check(runnerId, stats);
  readonly #onDisconnected = (runnerId: string): void => this.#check(runnerId);
  readonly #onChange = (runnerId: string, _entry: DirectoryEntry | null): void => this.#check(runnerId);
  readonly #onReload = (): void => {
    const ids = new Set(this.#up);
    for (const e of this.#cluster.directory.entries()) ids.add(e.runnerId);
    for (const id of ids) this.#check(id);
    const old = Date.now() - FIGURES_KEEP_MS;
    for (const [id, f] of this.#figures) if (f.at < old) this.#figures.delete(id);
  };

  #holder(runnerId: string): string | null {
    return this.#cluster.directory.lookup(runnerId)?.replicaId ?? null;
  }

  /** Publishes the runner's cluster-wide state if it changed since it was last told. */
  #check(runnerId: string, localStats?: TunnelStats): void {
    if (!this.#started) return;
    const up = this.#cluster.isConnected(runnerId);
    if (up === this.#up.has(runnerId)) return;
    if (!up) {
      this.#up.delete(runnerId);
      this.#figures.delete(runnerId);
      const waiting = this.#waiting.get(runnerId);
      // An `up` never told needs no `down`.
      if (waiting) {
        clearTimeout(waiting);
        this.#waiting.delete(runnerId);
      } else this.#publisher.tunnelChanged(runnerId, "down");
      return;
    }
    this.#up.add(runnerId);
    if (this.#registry.isConnected(runnerId)) {
      this.#publisher.tunnelChanged(runnerId, "up", localStats ?? this.#registry.get(runnerId)?.stats());
      return;
    }
    const holder = this.#holder(runnerId);
    const figures = this.#figures.get(runnerId);
    if (figures && figures.replicaId === holder) {
      this.#figures.delete(runnerId);
      this.#publisher.tunnelChanged(runnerId, "up", figures.stats);
      return;
    }
    const timer = setTimeout(() => {
      this.#waiting.delete(runnerId);
      this.#publisher.tunnelChanged(runnerId, "up");
    }, FIGURES_WAIT_MS);
    timer.unref();
    this.#waiting.set(runnerId, timer);
  }
}
