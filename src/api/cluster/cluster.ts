// One replica of a cluster: the tunnel directory (directory.ts), the peer endpoint and pool
// (peer.ts), leader election (leader.ts), and the cluster-aware dialer that every handler of the API
// uses instead of the local registry (ctx.dialer): the ONE place where a call is sent to the replica
// that holds the runner's tunnel.
//
// Routing of a call for runner R (request() and open()):
//   1. R's tunnel is live here: the local registry serves it.
//   2. The directory says R is live on replica P, and P's lease is current: the call is forwarded
//      to P over the pooled HTTP/2 link; P serves it from its own registry and never forwards it.
//   3. R is in transit (the directory says it is in a grace period, or its holder is dead or
//      answered that it no longer holds it, or the local registry expects it back): the call waits
//      for the directory to change for R (a NOTIFY, or R connecting here), within its deadline, and
//      goes again from 1. That is the grace period across replicas.
//   4. Otherwise: 503 "Sandbox not connected: no connection", as a single server answers.
// A forwarded call with a streamed body is only re-sent if its body was not read yet.
//
// Directory upkeep follows the local registry: a tunnel registered here is claimed (a claim that
// loses to a newer registration elsewhere closes the tunnel with `replaced`); a NOTIFY of a newer
// claim elsewhere closes the local tunnel with `replaced` (within a NOTIFY's delay, milliseconds);
// a tunnel that drops here puts its entry in a grace period (also while this replica drains, so
// calls elsewhere wait for the agent to come back instead of failing); an eviction or a grace
// period's end removes it.

import type { Duplex } from "node:stream";
import type { Logger } from "../../common/logger.ts";
import {
  TunnelAbortedError,
  TunnelNotConnectedError,
  TunnelQueueFullError,
  TunnelTimeoutError,
} from "../../tunnel/errors.ts";
import type { Tunnel } from "../../tunnel/tunnel.ts";
import type {
  OpenOptions,
  TunnelDialer,
  TunnelRequest,
  TunnelResponse,
  TunnelStats,
} from "../../tunnel/types.ts";
import type { TunnelRegistry } from "../tunnel/tunnel-registry.ts";
import { Directory, type DirectoryEntry } from "./directory.ts";
import { LeaderElection } from "./leader.ts";
import { PeerNotHeldError, PeerPool, PeerServer, PeerUnreachableError } from "./peer.ts";

/** The GOAWAY/close reason of a draining replica: agents that know it dial again at once. */
export const DRAIN_REASON = "server shutting down; reconnect=now";

export interface ClusterOptions {
  replicaId: string;
  advertiseUrl: string;
  /** Where the peer endpoint listens. */
  peerListen: { host: string; port: number };
  peerSecret: string;
  databaseUrl: string;
  registry: TunnelRegistry;
  logger: Logger;
  gracePeriodMs: number;
  callTimeoutMs: number;
  /** TLS of the peer endpoint (an https:// advertise URL); its certificate is also trusted for peers. */
  tls?: { key: Buffer; cert: Buffer } | null;
  /** Calls that may wait for one runner in transit. Default 100. */
  maxWaitersPerRunner?: number;
  /** Directory timings (tests make them short). */
  directory?: { replicaLeaseMs?: number; heartbeatMs?: number; tunnelLeaseMs?: number };
  leaderRetryMs?: number;
  /** Leader only: background work. Called with true when it becomes the leader, false when it stops. */
  onLeader?: (leader: boolean) => void;
  metrics?: {
    forwarded(direction: "in" | "out"): void;
    lookup(result: "local" | "remote" | "grace" | "miss"): void;
    leader(leader: boolean): void;
    sweep(): void;
  };
}

export type ClusterTunnelStats = TunnelStats & { replica: string };

type Route = { kind: "local" } | { kind: "remote"; replicaId: string; url: string; generation: number };

interface Held {
  tunnel: Tunnel;
  /** The claim's generation once the directory answered; null while pending or lost. */
  generation: number | null;
  /** When the tunnel registered here (epoch ms): the claim's order. */
  registeredAt: number;
}

/** How long a replica that failed to answer is skipped before it is tried again. */
const SUSPECT_MS = 1000;
/** How often the leader deletes lapsed directory rows. */
const DIRECTORY_SWEEP_MS = 2000;

export class Cluster implements TunnelDialer {
  readonly replicaId: string;
  readonly directory: Directory;
  readonly #o: ClusterOptions;
  readonly #log: Logger;
  readonly #registry: TunnelRegistry;
  readonly #peers: PeerPool;
  readonly #server: PeerServer;
  readonly #leader: LeaderElection;
  readonly #held = new Map<string, Held>();
  readonly #chains = new Map<string, Promise<void>>();
  readonly #waiters = new Map<string, Set<() => void>>();
  /** Replicas that failed a call, until when they are skipped. */
  readonly #suspect = new Map<string, number>();
  /** Runner -> generation of an entry whose holder said it does not hold it. */
  readonly #notHeld = new Map<string, number>();
  #sweepTimer: NodeJS.Timeout | null = null;
  #draining = false;
  #peerPort = 0;

  constructor(options: ClusterOptions) {
    this.#o = options;
    this.replicaId = options.replicaId;
    // The caller's logger already carries replica_id (server.ts).
    this.#log = options.logger;
    this.#registry = options.registry;
    this.directory = new Directory({
      databaseUrl: options.databaseUrl,
      replicaId: options.replicaId,
      advertiseUrl: options.advertiseUrl,
      logger: this.#log,
      ...options.directory,
      onLookup: (r) => options.metrics?.lookup(r),
    });
    this.#peers = new PeerPool({
      replicaId: options.replicaId,
      secret: options.peerSecret,
      logger: this.#log,
      ca: options.tls?.cert ?? null,
      onForwardedOut: () => options.metrics?.forwarded("out"),
    });
    this.#server = new PeerServer({
      replicaId: options.replicaId,
      secret: options.peerSecret,
      registry: options.registry,
      logger: this.#log,
      tls: options.advertiseUrl.startsWith("https:") ? options.tls : null,
      onForwardedIn: () => options.metrics?.forwarded("in"),
      serving: () => !this.#draining,
    });
    this.#leader = new LeaderElection({
      databaseUrl: options.databaseUrl,
      logger: this.#log,
      retryMs: options.leaderRetryMs,
      applicationName: `revdial-leader ${options.replicaId}`,
      onChange: (leader) => this.#onLeader(leader),
    });
  }

  get peerPort(): number {
    return this.#peerPort;
  }

  get isLeader(): boolean {
    return this.#leader.isLeader;
  }

  /** Joins the cluster: peer endpoint listening, directory loaded and followed, election started. */
  async start(): Promise<void> {
    this.#peerPort = await this.#server.listen(this.#o.peerListen.host, this.#o.peerListen.port);
    await this.directory.start();
    this.directory.on("change", (runnerId, entry) => this.#onDirectoryChange(runnerId, entry));
    this.directory.on("reload", () => this.#onReload());
    const r = this.#registry;
    r.on("connected", (runnerId) => this.#onConnected(runnerId));
    r.on("disconnected", (runnerId) => this.#onDisconnected(runnerId));
    r.on("grace-ended", (runnerId) => {
      this.#enqueue(runnerId, () => this.directory.release(runnerId, null, "grace"));
      this.#wake(runnerId);
    });
    this.#leader.start();
    this.#log.info(
      { advertise_url: this.#o.advertiseUrl, peer_port: this.#peerPort },
      "replica joined the cluster",
    );
  }

  // --- directory upkeep -------------------------------------------------------------------------

  #enqueue(runnerId: string, work: () => Promise<unknown>): void {
    const previous = this.#chains.get(runnerId) ?? Promise.resolve();
    const next = previous.then(work).then(
      () => {},
      (err: Error) => this.#log.warn({ runner_id: runnerId, err: err.message }, "directory update failed"),
    );
    this.#chains.set(runnerId, next);
    void next.then(() => {
      if (this.#chains.get(runnerId) === next) this.#chains.delete(runnerId);
    });
  }

  #onConnected(runnerId: string): void {
    const tunnel = this.#registry.get(runnerId);
    if (!tunnel) return;
    const held: Held = { tunnel, generation: null, registeredAt: Date.now() };
    this.#held.set(runnerId, held);
    this.#wake(runnerId);
    this.#enqueue(runnerId, async () => {
      const generation = await this.directory.claim(runnerId, held.registeredAt);
      if (generation === null) {
        this.#log.info({ runner_id: runnerId }, "a newer registration holds this runner elsewhere");
        this.#registry.replacedElsewhere(tunnel);
        return;
      }
      held.generation = generation;
      // A newer claim elsewhere may have been notified before this one's answer came.
      const entry = this.directory.lookup(runnerId);
      if (entry && entry.replicaId !== this.replicaId && entry.generation > generation)
        this.#registry.replacedElsewhere(tunnel);
    });
  }

  #onDisconnected(runnerId: string): void {
    const held = this.#held.get(runnerId);
    if (!held) return;
    this.#held.delete(runnerId);
    this.#wake(runnerId);
    const inGrace = this.#registry.inGracePeriod(runnerId);
    const draining = this.#draining;
    this.#enqueue(runnerId, async () => {
      if (held.generation === null) return;
      // A draining replica's agents are on their way to another replica: calls wait for them.
      if (inGrace || draining)
        await this.directory.grace(runnerId, held.generation, Date.now() + this.#o.gracePeriodMs);
      else await this.directory.release(runnerId, held.generation);
    });
  }

  #onDirectoryChange(runnerId: string, entry: DirectoryEntry | null): void {
    if (entry?.generation !== this.#notHeld.get(runnerId)) this.#notHeld.delete(runnerId);
    if (entry && entry.state === "live" && entry.replicaId !== this.replicaId) {
      const held = this.#held.get(runnerId);
      if (held && held.generation !== null && entry.generation > held.generation) {
        this.#registry.replacedElsewhere(held.tunnel);
      }
      this.#registry.endGraceElsewhere(runnerId);
    }
    this.#wake(runnerId);
  }

  /** After a whole reload: tunnels held here whose entry is missing (a wiped table) are claimed again. */
  #onReload(): void {
    for (const [runnerId, held] of this.#held) {
      if (held.generation === null) continue;
      const entry = this.directory.lookup(runnerId);
      if (!entry) {
        this.#enqueue(runnerId, async () => {
          if (this.#held.get(runnerId) !== held) return;
          const generation = await this.directory.claim(runnerId, held.registeredAt);
          if (generation === null) this.#registry.replacedElsewhere(held.tunnel);
          else held.generation = generation;
        });
      } else if (entry.replicaId !== this.replicaId && entry.generation > held.generation) {
        this.#registry.replacedElsewhere(held.tunnel);
      }
    }
    for (const runnerId of [...this.#waiters.keys()]) this.#wake(runnerId);
  }

  // --- waiting for a runner in transit ------------------------------------------------------------

  #wake(runnerId: string): void {
    const set = this.#waiters.get(runnerId);
    if (!set) return;
    this.#waiters.delete(runnerId);
    for (const fn of set) fn();
  }

  /** Resolves when something about the runner changed, or at `until`; rejects on abort. */
  #waitChange(runnerId: string, until: number, signal?: AbortSignal): Promise<void> {
    let set = this.#waiters.get(runnerId);
    if (!set) {
      set = new Set();
      this.#waiters.set(runnerId, set);
    }
    if (set.size >= (this.#o.maxWaitersPerRunner ?? 100))
      return Promise.reject(new TunnelQueueFullError(runnerId, this.#o.maxWaitersPerRunner ?? 100));
    const waiters = set;
    return new Promise<void>((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        waiters.delete(wake);
        if (waiters.size === 0 && this.#waiters.get(runnerId) === waiters) this.#waiters.delete(runnerId);
      };
      const wake = () => {
        done();
        resolve();
      };
      const onAbort = () => {
        done();
        reject(new TunnelAbortedError({ cause: signal?.reason }));
      };
      const timer = setTimeout(wake, Math.max(1, until - Date.now()));
      signal?.addEventListener("abort", onAbort, { once: true });
      waiters.add(wake);
    });
  }

  // --- routing ------------------------------------------------------------------------------------

  async #route(runnerId: string, deadline: number, timeoutMs: number, signal?: AbortSignal): Promise<Route> {
    for (;;) {
      if (signal?.aborted) throw new TunnelAbortedError({ cause: signal.reason });
      // A draining replica's tunnels take no new call: it waits for the agent to move.
      if (this.#registry.isConnected(runnerId) && !this.#draining) {
        this.directory.countLookup("local");
        return { kind: "local" };
      }
      const now = Date.now();
      const entry = this.directory.lookup(runnerId);
      let until = 0;
      if (entry && entry.replicaId !== this.replicaId && entry.state === "live") {
        const replica = this.directory.replica(entry.replicaId);
        const suspectUntil = this.#suspect.get(entry.replicaId) ?? 0;
        const notHeld = this.#notHeld.get(runnerId) === entry.generation;
        if (replica?.alive && suspectUntil <= now && !notHeld) {
          this.directory.countLookup("remote");
          return {
            kind: "remote",
            replicaId: entry.replicaId,
            url: replica.advertiseUrl,
            generation: entry.generation,
          };
        }
        // Its holder is dead or no longer has it: the agent is on its way elsewhere.
        until = Math.min(
          entry.expiresAt + this.#o.gracePeriodMs,
          notHeld || suspectUntil > now ? now + SUSPECT_MS : Infinity,
        );
        if (!replica?.alive) until = entry.expiresAt + this.#o.gracePeriodMs;
      } else if (entry?.state === "grace") {
        until = entry.expiresAt;
      } else if (entry && entry.replicaId === this.replicaId) {
        // Our own entry, but no tunnel: it just dropped, and the directory is being told.
        until = now + SUSPECT_MS;
      }
      if (this.#registry.inGracePeriod(runnerId)) until = deadline;
      if (until <= now) {
        this.directory.countLookup("miss");
        throw new TunnelNotConnectedError(runnerId);
      }
      this.directory.countLookup("grace");
      if (now >= deadline) throw new TunnelTimeoutError(runnerId, timeoutMs);
      await this.#waitChange(runnerId, Math.min(deadline, until), signal);
      if (Date.now() >= deadline && !this.#registry.isConnected(runnerId))
        throw new TunnelTimeoutError(runnerId, timeoutMs);
    }
  }

  #routeFailed(runnerId: string, route: Route & { kind: "remote" }, err: unknown): void {
    if (err instanceof PeerNotHeldError) this.#notHeld.set(runnerId, route.generation);
    else this.#suspect.set(route.replicaId, Date.now() + SUSPECT_MS);
    this.#log.debug(
      { runner_id: runnerId, peer: route.replicaId, err: (err as Error).message },
      "forwarded call refused; routing again",
    );
  }

  // --- TunnelDialer -------------------------------------------------------------------------------

  async request(runnerId: string, req: TunnelRequest): Promise<TunnelResponse> {
    const timeoutMs = req.timeoutMs ?? this.#o.callTimeoutMs;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const route = await this.#route(runnerId, deadline, timeoutMs, req.signal);
      const remaining = Math.max(1, deadline - Date.now());
      if (route.kind === "local") return this.#registry.request(runnerId, { ...req, timeoutMs: remaining });
      try {
        return await this.#peers.request(route.url, route.replicaId, runnerId, req, remaining);
      } catch (err) {
        if (!(err instanceof PeerNotHeldError || err instanceof PeerUnreachableError)) throw err;
        if (!replayable(req.body)) throw err;
        this.#routeFailed(runnerId, route, err);
      }
    }
  }

  async open(runnerId: string, target: string, options: OpenOptions = {}): Promise<Duplex> {
    const timeoutMs = options.timeoutMs ?? this.#o.callTimeoutMs;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const route = await this.#route(runnerId, deadline, timeoutMs, options.signal);
      const remaining = Math.max(1, deadline - Date.now());
      if (route.kind === "local")
        return this.#registry.open(runnerId, target, { ...options, timeoutMs: remaining });
      try {
        return await this.#peers.open(route.url, route.replicaId, runnerId, target, {
          ...options,
          timeoutMs: remaining,
        });
      } catch (err) {
        if (!(err instanceof PeerNotHeldError || err instanceof PeerUnreachableError)) throw err;
        this.#routeFailed(runnerId, route, err);
      }
    }
  }

  isConnected(runnerId: string): boolean {
    if (this.#registry.isConnected(runnerId)) return true;
    const entry = this.directory.lookup(runnerId);
    if (entry?.state !== "live" || entry.replicaId === this.replicaId) return false;
    return this.directory.replica(entry.replicaId)?.alive === true;
  }

  /** Runner ids live here or, as the directory says, on another live replica. */
  liveRunnerIds(): string[] {
    const ids = new Set(this.#registry.list().map((s) => s.runner_id));
    for (const e of this.directory.entries())
      if (e.state === "live" && e.replicaId !== this.replicaId && this.directory.replica(e.replicaId)?.alive)
        ids.add(e.runnerId);
    return [...ids];
  }

  /** This replica's live tunnels. */
  list(): TunnelStats[] {
    return this.#registry.list();
  }

  /** Every live tunnel of the cluster, each with the replica that holds it. Replicas that do not answer are left out (logged). */
  async listAll(): Promise<ClusterTunnelStats[]> {
    const out: ClusterTunnelStats[] = this.#registry.list().map((s) => ({ ...s, replica: this.replicaId }));
    const lists = await this.#askOthers(
      (r) => this.#peers.tunnels(r.advertiseUrl, r.replicaId),
      "replica did not list its tunnels",
    );
    for (const { replica, value } of lists) for (const s of value) out.push({ ...s, replica });
    return out;
  }

  /**
   * Asks every other live replica at once; the answers of those that gave one. A replica that did
   * not is logged with `failed` and left out.
   */
  async #askOthers<T>(
    ask: (r: { replicaId: string; advertiseUrl: string }) => Promise<T>,
    failed: string,
  ): Promise<{ replica: string; value: T }[]> {
    const others = this.directory.replicas().filter((r) => r.alive && r.replicaId !== this.replicaId);
    const results = await Promise.allSettled(others.map(ask));
    const answers: { replica: string; value: T }[] = [];
    results.forEach((result, i) => {
      const replica = others[i].replicaId;
      if (result.status === "fulfilled") answers.push({ replica, value: result.value });
      else this.#log.warn({ peer: replica, err: (result.reason as Error).message }, failed);
    });
    return answers;
  }

  evict(runnerId: string, reason: string): boolean {
    if (this.#evictLocal(runnerId, reason)) return true;
    const remote = this.#remoteHolder(runnerId) !== null;
    void this.#evictRemote(runnerId, reason, 2000);
    return remote;
  }

  #evictLocal(runnerId: string, reason: string): boolean {
    if (!this.#registry.evict(runnerId, reason)) return false;
    this.#enqueue(runnerId, () => this.directory.release(runnerId, null));
    return true;
  }

  /** The live replica other than this one that the directory says holds the runner, if any. */
  #remoteHolder(runnerId: string): { replicaId: string; advertiseUrl: string } | null {
    const entry = this.directory.lookup(runnerId);
    if (!entry || entry.replicaId === this.replicaId) return null;
    return this.directory.replica(entry.replicaId) ?? null;
  }

  /**
   * evict(), done when it is done: a tunnel held on another replica is closed by that replica
   * before this resolves (within `timeoutMs`; a replica that does not answer in time is logged and
   * the call resolves false: its tunnel lapses with its lease, or is closed when it answers). True
   * when a live tunnel was closed, here or there. Never rejects.
   */
  async evictEverywhere(runnerId: string, reason: string, timeoutMs = 2000): Promise<boolean> {
    return this.#evictLocal(runnerId, reason) || this.#evictRemote(runnerId, reason, timeoutMs);
  }

  async evictOwnedBy(owner: string, reason: string, timeoutMs = 2000): Promise<number> {
    // The registry's "disconnected" events release the directory entries (#onDisconnected).
    let cut = this.#registry.evictOwned(owner, reason).length;
    const answers = await this.#askOthers(
      (r) =>
        this.#peers.json<{ evicted: number }>(
          r.advertiseUrl,
          r.replicaId,
          { op: "evict-owner", owner, reason },
          timeoutMs,
        ),
      "remote eviction of a revoked key's tunnels failed",
    );
    for (const { value } of answers) cut += Number(value.evicted) || 0;
    return cut;
  }

  async #evictRemote(runnerId: string, reason: string, timeoutMs: number): Promise<boolean> {
    const entry = this.directory.lookup(runnerId);
    if (!entry) return false;
    if (entry.replicaId === this.replicaId) {
      // Our own entry without a tunnel (it just dropped): nothing to close, the entry goes.
      this.#enqueue(runnerId, () => this.directory.release(runnerId, null));
      return false;
    }
    const replica = this.directory.replica(entry.replicaId);
    if (!replica) return false;
    try {
      const answer = await this.#peers.json<{ evicted: boolean }>(
        replica.advertiseUrl,
        replica.replicaId,
        { op: "evict", runner: runnerId, reason },
        timeoutMs,
      );
      return answer.evicted === true;
    } catch (err) {
      this.#log.warn(
        { runner_id: runnerId, peer: replica.replicaId, err: (err as Error).message },
        "remote eviction failed",
      );
      return false;
    }
  }

  // --- leader -------------------------------------------------------------------------------------

  #onLeader(leader: boolean): void {
    this.#o.metrics?.leader(leader);
    if (leader) {
      this.#sweepTimer = setInterval(() => {
        this.#o.metrics?.sweep();
        void this.directory
          .sweepExpired()
          .then((n) => {
            if (n > 0) this.#log.info({ entries: n }, "lapsed directory entries removed");
          })
          .catch((err: Error) => this.#log.warn({ err: err.message }, "directory sweep failed"));
      }, DIRECTORY_SWEEP_MS);
      this.#sweepTimer.unref();
    } else if (this.#sweepTimer) {
      clearInterval(this.#sweepTimer);
      this.#sweepTimer = null;
    }
    this.#o.onLeader?.(leader);
  }

  // --- shutdown -----------------------------------------------------------------------------------

  /**
   * Drain begins: stop leading (another replica takes over), and every tunnel here is in transit in
   * the directory, so new calls for them, here and elsewhere, wait for the agents to come back on
   * another replica instead of reaching a tunnel that is closing.
   */
  async beginDrain(): Promise<void> {
    if (this.#draining) return;
    this.#draining = true;
    await this.#leader.close();
    await Promise.allSettled([...this.#chains.values()]);
    const moved = await this.directory.graceAll(Date.now() + this.#o.gracePeriodMs).catch((err: Error) => {
      this.#log.warn({ err: err.message }, "could not mark this replica's tunnels in transit");
      return 0;
    });
    this.#log.info({ tunnels: moved }, "replica draining: tunnels marked in transit");
  }

  /** After the local tunnels drained: waits for the directory updates, says goodbye, closes the peer side. */
  async close(): Promise<void> {
    this.#draining = true;
    await this.#leader.close();
    await Promise.allSettled([...this.#chains.values()]);
    await this.directory.close();
    this.#peers.close();
    await Promise.race([this.#server.close(), new Promise((r) => setTimeout(r, 2000).unref())]);
    this.#server.destroy();
  }

  destroy(): void {
    this.#peers.close();
    this.#server.destroy();
    void this.#leader.close();
    void this.directory.close();
  }
}

/** A body the call can send again: none, or one held whole; a stream not read yet. */
function replayable(body: TunnelRequest["body"]): boolean {
  if (body === undefined || body === null || typeof body === "string" || Buffer.isBuffer(body)) return true;
  return !body.destroyed && !body.readableDidRead;
}
