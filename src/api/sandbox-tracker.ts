// Follows sandboxes and hosts as their tunnels come and go, and keeps the store's view true:
// - `sandbox-{id}` connects: the session goes starting -> running. A sandbox that connects for a
//   session that is no longer live (stopping, stopped, failed: a late reconnect, an orphan) is cut
//   off at once: keys revoked, tunnel evicted.
// - `wolf-{id}` connects (first time, or back after an API restart, a crash or a network cut): the
//   host is online again and is reconciled at once (lifecycle-sweeper.ts reconcileHost: GET
//   /lobbies through the tunnel; lost lobbies -> sessions stopped, requested stops carried out,
//   lobbies of no live session stopped), instead of waiting for the next sweep.
// - every sweepIntervalMs: hosts with no heartbeat for offlineAfterMs and no live tunnel go offline.
// Handlers run one at a time per runner id (a chain of promises), so a quick reconnect cannot
// interleave two reconciliations of one host. Store failures are logged, never thrown into the
// registry's event loop.

import { InvalidOptionError } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";
import { sessionIdOfRunner } from "./auth.ts";
import type { ApiContext } from "./context.ts";
import { reconcileHost } from "./lifecycle-sweeper.ts";
import { Scheduler } from "./scheduler.ts";

export interface TunnelEventSource {
  on(event: "connected", listener: (runnerId: string) => void): unknown;
  on(event: "disconnected", listener: (runnerId: string, reason: string) => void): unknown;
  off(event: "connected" | "disconnected", listener: (...args: never[]) => void): unknown;
}

export interface SandboxTrackerOptions {
  ctx: ApiContext;
  events: TunnelEventSource;
  /** A host with no heartbeat for this long and no tunnel is offline. Default 90 s. */
  offlineAfterMs?: number;
  /** How often hosts are checked. Default 15 s. */
  sweepIntervalMs?: number;
  now?: () => number;
}

export const SANDBOX_TRACKER_DEFAULTS = Object.freeze({ offlineAfterMs: 90_000, sweepIntervalMs: 15_000 });

const WOLF_PREFIX = "wolf-";
/** A sandbox that (re)connects for a session in one of these is cut off at once. */
const ENDED: ReadonlySet<string> = new Set(["stopping", "stopped", "failed"]);

export class SandboxTracker {
  readonly #ctx: ApiContext;
  readonly #events: TunnelEventSource;
  readonly #scheduler: Scheduler;
  readonly #log: Logger;
  readonly #offlineAfterMs: number;
  readonly #sweepIntervalMs: number;
  readonly #now: () => number;
  /** The last piece of work queued per runner id; entries are removed when their chain drains. */
  readonly #chains = new Map<string, Promise<void>>();
  #timer: NodeJS.Timeout | null = null;
  #closed = false;

  constructor(options: SandboxTrackerOptions) {
    if (!options?.ctx) throw new InvalidOptionError("ctx", "is required");
    if (!options.events) throw new InvalidOptionError("events", "is required");
    const o = {
      ...options,
      offlineAfterMs: options.offlineAfterMs ?? SANDBOX_TRACKER_DEFAULTS.offlineAfterMs,
      sweepIntervalMs: options.sweepIntervalMs ?? SANDBOX_TRACKER_DEFAULTS.sweepIntervalMs,
    };
    for (const name of ["offlineAfterMs", "sweepIntervalMs"] as const)
      if (!(o[name] > 0)) throw new InvalidOptionError(name, "must be > 0");
    this.#ctx = o.ctx;
    this.#events = o.events;
    this.#scheduler = new Scheduler(o.ctx);
    this.#log = o.ctx.logger;
    this.#offlineAfterMs = o.offlineAfterMs;
    this.#sweepIntervalMs = o.sweepIntervalMs;
    this.#now = o.now ?? Date.now;
  }

  /**
   * Follows the tunnel events, and runs the offline sweep unless `sweeps` is false (a cluster's
   * replica that is not the leader: startSweeps() when it becomes it).
   */
  start(sweeps = true): void {
    this.#events.on("connected", this.#onConnected);
    this.#events.on("disconnected", this.#onDisconnected);
    if (sweeps) this.startSweeps();
  }

  startSweeps(): void {
    if (this.#timer || this.#closed) return;
    this.#timer = setInterval(() => void this.sweep(), this.#sweepIntervalMs);
    this.#timer.unref();
  }

  stopSweeps(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** Stops listening and waits for work in flight. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#events.off("connected", this.#onConnected);
    this.#events.off("disconnected", this.#onDisconnected);
    if (this.#timer) clearInterval(this.#timer);
    await Promise.allSettled([...this.#chains.values()]);
  }

  /** Marks offline the hosts with no heartbeat for offlineAfterMs and no live tunnel. */
  async sweep(): Promise<string[]> {
    if (this.#closed) return [];
    try {
      const before = new Date(this.#now() - this.#offlineAfterMs);
      const ids = await this.#ctx.store.wolfInstances.markStaleOffline(
        before,
        this.#scheduler.connectedHostIds(),
      );
      for (const id of ids)
        this.#log.warn({ wolf_id: id }, "Wolf instance offline (no heartbeat, no tunnel)");
      return ids;
    } catch (err) {
      this.#log.warn({ err: (err as Error).message }, "host sweep failed");
      return [];
    }
  }

  /** Work for one runner id, after the work queued before it. Resolves when done. */
  #enqueue(runnerId: string, work: () => Promise<void>): Promise<void> {
    const previous = this.#chains.get(runnerId) ?? Promise.resolve();
    const next = previous
      .then(() => (this.#closed ? undefined : work()))
      .catch((err: Error) =>
        this.#log.warn({ runner_id: runnerId, err: err.message }, "tunnel event handling failed"),
      );
    this.#chains.set(runnerId, next);
    void next.then(() => {
      if (this.#chains.get(runnerId) === next) this.#chains.delete(runnerId);
    });
    return next;
  }

  readonly #onConnected = (runnerId: string): void => {
    const sessionId = sessionIdOfRunner(runnerId);
    if (sessionId) void this.#enqueue(runnerId, () => this.#sandboxConnected(sessionId));
    else if (runnerId.startsWith(WOLF_PREFIX))
      void this.#enqueue(runnerId, () => this.#hostConnected(runnerId.slice(WOLF_PREFIX.length)));
  };

  readonly #onDisconnected = (runnerId: string, reason: string): void => {
    if (runnerId.startsWith(WOLF_PREFIX))
      this.#log.info({ wolf_id: runnerId.slice(WOLF_PREFIX.length), reason }, "Wolf instance tunnel down");
  };

  async #sandboxConnected(sessionId: string): Promise<void> {
    const session = await this.#ctx.store.sessions.setStatus(sessionId, "running", ["starting"]);
    if (session) {
      this.#log.info(
        { session_id: sessionId, wolf_id: session.wolfInstanceId, lobby_id: session.lobbyId },
        "sandbox connected: session running",
      );
      return;
    }
    const current = await this.#ctx.store.sessions.get(sessionId);
    if (!current || !ENDED.has(current.status)) return;
    await this.#scheduler.cutSandbox(sessionId, `session ${current.status}`);
    this.#log.warn(
      { session_id: sessionId, status: current.status },
      "sandbox connected for a session that is not live: tunnel evicted",
    );
  }

  async #hostConnected(hostId: string): Promise<void> {
    const store = this.#ctx.store;
    if (!(await store.wolfInstances.get(hostId))) return;
    await store.wolfInstances.setStatus(hostId, "online");
    const report = await reconcileHost(this.#ctx, this.#scheduler, hostId);
    this.#log.info(
      {
        wolf_id: hostId,
        sessions_stopped: report.sessionsStopped.length,
        lobbies_stopped: report.lobbiesStopped.length,
      },
      "Wolf instance reconciled",
    );
  }
}
