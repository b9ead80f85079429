// Maps each runner id to its one live tunnel, and sends calls through it.
//
// Contracts:
// - register() makes the new tunnel the live one and CLOSES the one it replaces (close code
//   REPLACED, so that agent stops instead of fighting for the id). A close event from a tunnel that
//   is no longer the live one never evicts the live one.
// - When the live tunnel drops, the id enters a grace period: calls wait for the agent to come back
//   (at most maxWaitersPerRunner of them, each bounded by its own deadline) instead of failing.
//   After the grace period, and for ids never seen, calls fail at once with "no connection".
// - Every call has a deadline and honours its AbortSignal.
// - evict() closes the runner's live tunnel at once (close code EVICTED, GOAWAY "evicted") and fails
//   its waiters with RD_ERR_TUNNEL_EVICTED; no grace period follows an eviction.
// - expect() opens a grace period for runners that are not connected yet but should come back (the
//   ones live before a restart of the API), so their calls wait instead of failing at once.
// - knownRunnerIds() is every id a call would reach or wait for (live, or in a grace period); it
//   changes only on "connected", "disconnected" and "grace-ended", so a follower (the registry
//   snapshot) needs no polling.
// - close(drainMs) sends GOAWAY to every tunnel and resolves once all have drained (bounded).
// - replacedElsewhere() / endGraceElsewhere(): a cluster's directory says the runner is live on
//   another replica (src/api/cluster/cluster.ts).
// No state outside the instance: two registries in one process do not see each other.

import { EventEmitter } from "node:events";
import type { Duplex } from "node:stream";
import { InvalidOptionError } from "../../common/errors.ts";
import type { Logger } from "../../common/logger.ts";
import { CLOSE, EVICTED_RETRY_AFTER_S } from "../../tunnel/constants.ts";
import {
  TunnelAbortedError,
  TunnelEvictedError,
  TunnelNotConnectedError,
  TunnelQueueFullError,
  TunnelTimeoutError,
} from "../../tunnel/errors.ts";
import type { Tunnel } from "../../tunnel/tunnel.ts";
import type {
  OpenOptions,
  TunnelDialer,
  TunnelEvents,
  TunnelRequest,
  TunnelResponse,
  TunnelStats,
} from "../../tunnel/types.ts";

/** Hooks for metrics; all optional. */
export interface RegistryObserver {
  registered?(runnerId: string, protocol: string, replaced: boolean): void;
  unregistered?(runnerId: string): void;
  call?(outcome: string, seconds: number): void;
  graceWait?(outcome: "reconnected" | "expired" | "timeout" | "aborted" | "rejected"): void;
}

export interface TunnelRegistryOptions {
  logger: Logger;
  /** How long calls wait for a dropped runner to reconnect. Default 30 s; 0 disables. */
  gracePeriodMs?: number;
  /** Calls that may wait for one runner during its grace period. Default 100. */
  maxWaitersPerRunner?: number;
  /** Default deadline of a call (waiting included). Default 30 s. */
  callTimeoutMs?: number;
  observer?: RegistryObserver;
  now?: () => number;
}

const DEFAULTS = Object.freeze({ gracePeriodMs: 30_000, maxWaitersPerRunner: 100, callTimeoutMs: 30_000 });

interface Waiter {
  resolve(tunnel: Tunnel): void;
  reject(err: Error): void;
}

interface Grace {
  until: number;
  timer: NodeJS.Timeout;
  waiters: Set<Waiter>;
}

export class TunnelRegistry extends EventEmitter<TunnelEvents> implements TunnelDialer {
  readonly #log: Logger;
  readonly #graceMs: number;
  readonly #maxWaiters: number;
  readonly #callTimeoutMs: number;
  readonly #observer: RegistryObserver;
  readonly #now: () => number;
  readonly #live = new Map<string, Tunnel>();
  /** The credential each tunnel registered with (evictOwned). */
  readonly #owners = new WeakMap<Tunnel, string>();
  readonly #grace = new Map<string, Grace>();
  /** Bytes carried by tunnels that have closed, so totals survive reconnects. */
  readonly #closedBytes = { in: 0, out: 0 };
  /** Tunnels closed by evict() or replacedElsewhere(): their close starts no grace period. */
  readonly #evicted = new WeakSet<Tunnel>();
  #closed = false;

  constructor(options: TunnelRegistryOptions) {
    super();
    const o = { ...DEFAULTS, ...options };
    if (!Number.isFinite(o.gracePeriodMs) || o.gracePeriodMs < 0)
      throw new InvalidOptionError("gracePeriodMs", "must be >= 0");
    if (!Number.isInteger(o.maxWaitersPerRunner) || o.maxWaitersPerRunner < 0)
      throw new InvalidOptionError("maxWaitersPerRunner", "must be an integer >= 0");
    if (!(o.callTimeoutMs > 0)) throw new InvalidOptionError("callTimeoutMs", "must be > 0");
    this.#log = o.logger;
    this.#graceMs = o.gracePeriodMs;
    this.#maxWaiters = o.maxWaitersPerRunner;
    this.#callTimeoutMs = o.callTimeoutMs;
    this.#observer = o.observer ?? {};
    this.#now = o.now ?? Date.now;
  }

  /** Called by the tunnel endpoint once an agent's tunnel is up. */
  /** `owner`: the id of the credential that authorized it, for evictOwned(). */
  register(tunnel: Tunnel, owner?: string): void {
    const runnerId = tunnel.runnerId;
    if (owner !== undefined) this.#owners.set(tunnel, owner);
    const log = this.#log.child({ runner_id: runnerId });
    if (this.#closed) {
      void tunnel.close(CLOSE.SHUTDOWN, "server shutting down");
      return;
    }
    const old = this.#live.get(runnerId);
    this.#live.set(runnerId, tunnel);
    tunnel.once("close", (reason: string) => this.#onTunnelClose(tunnel, reason));
    if (old) {
      log.info({ protocol: tunnel.protocol }, "tunnel replaced by a newer registration");
      void old.close(CLOSE.REPLACED, "replaced");
    } else {
      log.info(
        { protocol: tunnel.protocol, remote_address: tunnel.stats().remote_address },
        "tunnel registered",
      );
    }
    this.#observer.registered?.(runnerId, tunnel.protocol, old !== undefined);
    this.#endGrace(runnerId, (w) => w.resolve(tunnel));
    this.emit("connected", runnerId, tunnel.stats());
  }

  #onTunnelClose(tunnel: Tunnel, reason: string): void {
    const runnerId = tunnel.runnerId;
    const final = tunnel.stats();
    this.#closedBytes.in += final.bytes_in;
    this.#closedBytes.out += final.bytes_out;
    if (this.#live.get(runnerId) !== tunnel) return;
    this.#live.delete(runnerId);
    this.#log.info({ runner_id: runnerId, reason }, "tunnel disconnected");
    this.#observer.unregistered?.(runnerId);
    if (this.#graceMs > 0 && !this.#closed && !this.#evicted.has(tunnel))
      this.#startGrace(runnerId, this.#now() + this.#graceMs);
    this.emit("disconnected", runnerId, reason);
  }

  #startGrace(runnerId: string, until: number): void {
    const timer = setTimeout(() => {
      this.#endGrace(runnerId, (w) => {
        this.#observer.graceWait?.("expired");
        w.reject(new TunnelNotConnectedError(runnerId));
      });
      this.emit("grace-ended", runnerId);
    }, until - this.#now());
    timer.unref();
    this.#grace.set(runnerId, { until, timer, waiters: new Set() });
  }

  /**
   * Runner ids expected to (re)connect before `untilMs` (epoch ms): calls for them wait like in a
   * grace period instead of failing at once. The API calls it at start-up with the runners that were
   * live before it restarted. Ids already live or already in a grace period are left as they are.
   * Returns how many ids entered a grace period.
   */
  expect(runnerIds: Iterable<string>, untilMs: number): number {
    if (this.#closed || untilMs <= this.#now()) return 0;
    let added = 0;
    for (const id of runnerIds) {
      if (this.#live.has(id) || this.#grace.has(id)) continue;
      this.#startGrace(id, untilMs);
      added++;
    }
    return added;
  }

  /**
   * Closes the runner's live tunnel at once (close code EVICTED, GOAWAY "evicted: REASON") and fails
   * every call waiting for it with RD_ERR_TUNNEL_EVICTED. Calls in flight on that tunnel are cut.
   * Called when a session is stopped or its keys revoked. Never throws; true if there was something
   * to evict.
   */
  /**
   * Evicts every live tunnel that registered with the credential `owner` (it was revoked): the ids
   * of the runners cut. Never throws.
   */
  evictOwned(owner: string, reason: string): string[] {
    const cut: string[] = [];
    for (const [runnerId, tunnel] of [...this.#live])
      if (this.#owners.get(tunnel) === owner && this.evict(runnerId, reason)) cut.push(runnerId);
    return cut;
  }

  /** evictOwned() as the dialer's evictOwnedBy: how many were cut. */
  async evictOwnedBy(owner: string, reason: string): Promise<number> {
    return this.evictOwned(owner, reason).length;
  }

  evict(runnerId: string, reason: string): boolean {
    const live = this.#live.get(runnerId);
    const hadGrace = this.#grace.has(runnerId);
    this.#endGrace(runnerId, (w) => w.reject(new TunnelEvictedError(runnerId, reason)));
    if (!live) {
      if (hadGrace) this.emit("grace-ended", runnerId);
      return hadGrace;
    }
    this.#evicted.add(live);
    // Gone from the registry at once: no call reaches it while its link closes (its late close
    // finds another entry, or none, and evicts nothing).
    this.#live.delete(runnerId);
    this.#log.info({ runner_id: runnerId, reason }, "tunnel evicted");
    this.#observer.unregistered?.(runnerId);
    this.emit("disconnected", runnerId, `evicted: ${reason}`);
    void live.close(CLOSE.EVICTED, `evicted: ${reason}; retry-after=${EVICTED_RETRY_AFTER_S}`, 0);
    return true;
  }

  /**
   * A newer registration for the runner is live on another replica (a cluster's directory says so):
   * closes `tunnel` with close code REPLACED, as a local replacement does, if it is still the live
   * one, and starts no grace period. Never throws; true if it closed something.
   */
  replacedElsewhere(tunnel: Tunnel): boolean {
    const runnerId = tunnel.runnerId;
    if (this.#live.get(runnerId) !== tunnel) return false;
    this.#evicted.add(tunnel);
    // Gone from here at once, as on eviction: no call reaches it while its link closes.
    this.#live.delete(runnerId);
    this.#log.info({ runner_id: runnerId }, "tunnel replaced by a newer registration on another replica");
    this.#observer.unregistered?.(runnerId);
    this.emit("disconnected", runnerId, "replaced");
    void tunnel.close(CLOSE.REPLACED, "replaced");
    return true;
  }

  /**
   * The runner came back on another replica: a grace period here is over (calls waiting in it, if
   * any, fail with "no connection"; the cluster's dialer sends its own elsewhere). Never throws.
   */
  endGraceElsewhere(runnerId: string): void {
    if (!this.#grace.has(runnerId)) return;
    this.#endGrace(runnerId, (w) => w.reject(new TunnelNotConnectedError(runnerId)));
    this.emit("grace-ended", runnerId);
  }

  #endGrace(runnerId: string, settle: (w: Waiter) => void): void {
    const grace = this.#grace.get(runnerId);
    if (!grace) return;
    this.#grace.delete(runnerId);
    clearTimeout(grace.timer);
    for (const w of grace.waiters) settle(w);
  }

  isConnected(runnerId: string): boolean {
    return this.#live.has(runnerId);
  }

  /** True while a dropped runner may still come back and calls would wait for it. */
  inGracePeriod(runnerId: string): boolean {
    return this.#grace.has(runnerId);
  }

  /** Every runner id a call would reach or wait for: the live ones first, then those in a grace period. */
  knownRunnerIds(): string[] {
    return [...this.#live.keys(), ...this.#grace.keys()];
  }

  get(runnerId: string): Tunnel | undefined {
    return this.#live.get(runnerId);
  }

  list(): TunnelStats[] {
    return [...this.#live.values()].map((t) => t.stats());
  }

  /** Bytes carried by every tunnel this registry has held, closed ones included. */
  bytesTotal(): { in: number; out: number } {
    const total = { ...this.#closedBytes };
    for (const t of this.#live.values()) {
      const s = t.stats();
      total.in += s.bytes_in;
      total.out += s.bytes_out;
    }
    return total;
  }

  get size(): number {
    return this.#live.size;
  }

  async request(runnerId: string, req: TunnelRequest): Promise<TunnelResponse> {
    const started = this.#now();
    const timeoutMs = req.timeoutMs ?? this.#callTimeoutMs;
    try {
      const tunnel = await this.#acquire(runnerId, timeoutMs, req.signal);
      const remaining = Math.max(1, timeoutMs - (this.#now() - started));
      const res = await tunnel.request({ ...req, timeoutMs: remaining });
      this.#observer.call?.("ok", (this.#now() - started) / 1000);
      return res;
    } catch (err) {
      this.#observer.call?.(outcomeOf(err), (this.#now() - started) / 1000);
      throw err;
    }
  }

  async open(runnerId: string, target: string, options: OpenOptions = {}): Promise<Duplex> {
    const started = this.#now();
    const timeoutMs = options.timeoutMs ?? this.#callTimeoutMs;
    const tunnel = await this.#acquire(runnerId, timeoutMs, options.signal);
    const remaining = Math.max(1, timeoutMs - (this.#now() - started));
    return tunnel.open(target, { ...options, timeoutMs: remaining });
  }

  /** The live tunnel, or a wait for its reconnect during the grace period. */
  #acquire(runnerId: string, timeoutMs: number, signal?: AbortSignal): Promise<Tunnel> {
    const live = this.#live.get(runnerId);
    if (live && !live.closed) return Promise.resolve(live);
    const grace = this.#grace.get(runnerId);
    if (!grace) return Promise.reject(new TunnelNotConnectedError(runnerId));
    if (signal?.aborted) return Promise.reject(new TunnelAbortedError({ cause: signal.reason }));
    if (grace.waiters.size >= this.#maxWaiters) {
      this.#observer.graceWait?.("rejected");
      return Promise.reject(new TunnelQueueFullError(runnerId, this.#maxWaiters));
    }
    return new Promise<Tunnel>((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        grace.waiters.delete(waiter);
      };
      const waiter: Waiter = {
        resolve: (t) => {
          done();
          this.#observer.graceWait?.("reconnected");
          resolve(t);
        },
        reject: (e) => {
          done();
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        this.#observer.graceWait?.("timeout");
        waiter.reject(new TunnelTimeoutError(runnerId, timeoutMs));
      }, timeoutMs);
      const onAbort = () => {
        this.#observer.graceWait?.("aborted");
        waiter.reject(new TunnelAbortedError({ cause: signal?.reason }));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      grace.waiters.add(waiter);
    });
  }

  /**
   * Drains every tunnel: GOAWAY, calls in flight finish within `drainMs` (each tunnel's own drain
   * timeout by default), then the links close. Waiting calls fail. Idempotent.
   */
  async close(drainMs?: number, reason = "server shutting down"): Promise<void> {
    this.#closed = true;
    for (const id of [...this.#grace.keys()])
      this.#endGrace(id, (w) => w.reject(new TunnelNotConnectedError(id)));
    await Promise.all([...this.#live.values()].map((t) => t.close(CLOSE.SHUTDOWN, reason, drainMs)));
  }

  /** Cuts every tunnel at once. Idempotent. */
  destroy(): void {
    this.#closed = true;
    for (const id of [...this.#grace.keys()])
      this.#endGrace(id, (w) => w.reject(new TunnelNotConnectedError(id)));
    for (const t of [...this.#live.values()]) t.destroy();
  }
}

function outcomeOf(err: unknown): string {
  const code = (err as { code?: string })?.code ?? "";
  switch (code) {
    case "RD_ERR_TUNNEL_NOT_CONNECTED":
      return "not_connected";
    case "RD_ERR_TUNNEL_QUEUE_FULL":
      return "queue_full";
    case "RD_ERR_TUNNEL_TIMEOUT":
      return "timeout";
    case "RD_ERR_TUNNEL_ABORTED":
      return "aborted";
    case "RD_ERR_TUNNEL_CLOSED":
      return "closed";
    default:
      return "error";
  }
}
