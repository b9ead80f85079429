// What one replica tells the others so that every replica's event stream (GET /api/v1/events) is
// the whole cluster's: the ids of the sessions and hosts its store writes touched, and the figures
// of each tunnel that registered here. Only ids cross (a receiver reads the records itself, from
// the shared store, through its own change publisher, and only if someone watches it); tunnel
// up/down itself comes from the cluster's directory (cluster-tunnels.ts), which already NOTIFYs
// every change: the figures here only decorate its `up`.
//
// Wire: Postgres LISTEN/NOTIFY on the channel `revdial_events`, on one connection of its own per
// replica that both listens and sends. What a turn of the event loop reported goes out as one
// NOTIFY, split so that each payload stays under Postgres' 8000-byte limit:
//   {"o": origin replica id, "s": [session ids], "h": [host ids], "t": [{"r": runner id, "stats": {...}}]}
// A replica ignores its own notices (Postgres also delivers them to the sender).
//
// Bounds and failures: at most maxPending ids wait to be sent (one send in flight at a time; the
// ids reported meanwhile go out together after it); past that a change is dropped (logged). While
// the connection is down (Postgres restarting, a network cut), what other replicas change is not
// streamed here and what changes here is not told to them: both are lost, not queued (clients
// resync their lists when they reload), and logged when the connection goes and when it is back.
// The connection is made again with backoff (0.5 s, doubling, up to 5 s, with jitter) until close().

import pg from "pg";
import { InvalidOptionError } from "../../common/errors.ts";
import type { Logger } from "../../common/logger.ts";
import type { TunnelStats } from "../../tunnel/types.ts";
import type { ChangeSink } from "./store-observer.ts";

export const EVENTS_CHANNEL = "revdial_events";
/** Bytes of one payload at most: under Postgres' 8000, with room for its own framing. */
export const MAX_PAYLOAD_BYTES = 7900;

/** What the feed hands on from other replicas. */
export interface RemoteChanges extends ChangeSink {
  /** A tunnel registered on replica `replicaId`, with its figures then. */
  tunnelStats(replicaId: string, runnerId: string, stats: TunnelStats): void;
}

export interface ClusterFeedOptions {
  databaseUrl: string;
  replicaId: string;
  logger: Logger;
  /** Where other replicas' changes go. */
  remote: RemoteChanges;
  /** Changes waiting to be sent at most. Default 10,000. */
  maxPending?: number;
}

interface Notice {
  o: string;
  s?: string[];
  h?: string[];
  t?: { r: string; stats: TunnelStats }[];
}

export const CLUSTER_FEED_DEFAULTS = Object.freeze({ maxPending: 10_000 });

/** Reconnect backoff of the listening connection: from this, doubling, up to the cap, with jitter. */
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 5000;

export class ClusterFeed implements ChangeSink {
  readonly #o: Required<ClusterFeedOptions>;
  readonly #sessions = new Set<string>();
  readonly #hosts = new Set<string>();
  readonly #tunnels = new Map<string, TunnelStats>();
  #client: pg.Client | null = null;
  #listening = false;
  #sending = false;
  #scheduled = false;
  #closed = false;
  #retryTimer: NodeJS.Timeout | null = null;
  #retryMs = RETRY_MIN_MS;
  /** Since when the connection is down (epoch ms), and how many changes here went untold since. */
  #downSince = 0;
  #untold = 0;

  constructor(options: ClusterFeedOptions) {
    for (const name of ["databaseUrl", "replicaId", "logger", "remote"] as const)
      if (!options?.[name]) throw new InvalidOptionError(name, "is required");
    this.#o = { ...CLUSTER_FEED_DEFAULTS, ...options };
    const max = this.#o.maxPending;
    if (!Number.isSafeInteger(max) || max < 1)
      throw new InvalidOptionError("maxPending", `expected a positive integer, got ${max}`);
  }

  /** Connects and listens. Throws when Postgres refuses (the replica does not start). */
  async start(): Promise<void> {
    await this.#connect();
  }

  /** True while notices flow both ways. */
  get listening(): boolean {
    return this.#listening;
  }

  sessionChanged(id: string): void {
    if (this.#admit(this.#sessions.has(id))) this.#sessions.add(id);
  }

  hostChanged(id: string): void {
    if (this.#admit(this.#hosts.has(id))) this.#hosts.add(id);
  }

  /** A tunnel registered here: its figures go to the other replicas. */
  tunnelUp(runnerId: string, stats: TunnelStats): void {
    if (this.#admit(this.#tunnels.has(runnerId))) this.#tunnels.set(runnerId, stats);
  }

  /** Stops listening and sending; what waits is dropped. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#sessions.clear();
    this.#hosts.clear();
    this.#tunnels.clear();
    const client = this.#client;
    this.#client = null;
    this.#listening = false;
    await client?.end().catch(() => {});
  }

  // --- sending ------------------------------------------------------------------------------------

  #admit(known: boolean): boolean {
    if (this.#closed) return false;
    if (!this.#listening) {
      this.#untold++;
      return false;
    }
    const pending = this.#sessions.size + this.#hosts.size + this.#tunnels.size;
    if (!known && pending >= this.#o.maxPending) {
      this.#o.logger.warn({ pending }, "too many changes waiting to be told to other replicas; one dropped");
      return false;
    }
    this.#schedule();
    return true;
  }

  #schedule(): void {
    if (this.#scheduled || this.#sending) return;
    this.#scheduled = true;
    setImmediate(() => void this.#send());
  }

  async #send(): Promise<void> {
    this.#scheduled = false;
    const client = this.#client;
    if (this.#closed || !client || !this.#listening) return;
    const payloads = notices(
      this.#o.replicaId,
      [...this.#sessions],
      [...this.#hosts],
      [...this.#tunnels].map(([r, stats]) => ({ r, stats })),
      this.#o.logger,
    );
    const count = this.#sessions.size + this.#hosts.size + this.#tunnels.size;
    this.#sessions.clear();
    this.#hosts.clear();
    this.#tunnels.clear();
    if (payloads.length === 0) return;
    this.#sending = true;
    try {
      await client.query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", [EVENTS_CHANNEL, payloads]);
    } catch (err) {
      this.#untold += count;
      this.#o.logger.warn(
        { err: (err as Error).message, changes: count },
        "changes not told to other replicas (their event streams miss them)",
      );
    } finally {
      this.#sending = false;
    }
    if (this.#sessions.size + this.#hosts.size + this.#tunnels.size > 0) this.#schedule();
  }

  // --- receiving ----------------------------------------------------------------------------------

  #onNotice(payload: string): void {
    let n: Notice;
    try {
      n = JSON.parse(payload) as Notice;
    } catch {
      return;
    }
    if (typeof n?.o !== "string" || n.o === this.#o.replicaId) return;
    const remote = this.#o.remote;
    for (const id of strings(n.s)) remote.sessionChanged(id);
    for (const id of strings(n.h)) remote.hostChanged(id);
    if (Array.isArray(n.t))
      for (const t of n.t)
        if (typeof t?.r === "string" && t.stats && typeof t.stats === "object")
          remote.tunnelStats(n.o, t.r, t.stats);
  }

  // --- the connection -----------------------------------------------------------------------------

  async #connect(): Promise<void> {
    const client = new pg.Client({
      connectionString: this.#o.databaseUrl,
      connectionTimeoutMillis: 5000,
      keepAlive: true,
      statement_timeout: 5000,
      application_name: `revdial-events ${this.#o.replicaId}`,
    });
    client.on("notification", (msg) => {
      if (msg.channel === EVENTS_CHANNEL && msg.payload) this.#onNotice(msg.payload);
    });
    // Only a connection that was listening is lost; a failed attempt throws below instead.
    const lost = (err?: Error) => {
      if (this.#client !== client || !this.#listening) return;
      this.#client = null;
      this.#listening = false;
      client.removeAllListeners("end");
      void client.end().catch(() => {});
      if (this.#closed) return;
      this.#downSince = Date.now();
      this.#o.logger.warn(
        { err: err?.message },
        "cluster event listener lost: other replicas' changes are not streamed here until it is back; reconnecting",
      );
      this.#retry();
    };
    client.on("error", lost);
    client.on("end", () => lost());
    this.#client = client;
    try {
      await client.connect();
      await client.query(`LISTEN ${EVENTS_CHANNEL}`);
    } catch (err) {
      if (this.#client === client) this.#client = null;
      client.removeAllListeners("end");
      await client.end().catch(() => {});
      throw err;
    }
    if (this.#closed) {
      await client.end().catch(() => {});
      return;
    }
    this.#listening = true;
  }

  #retry(): void {
    if (this.#retryTimer || this.#closed) return;
    this.#retryTimer = setTimeout(
      async () => {
        this.#retryTimer = null;
        try {
          await this.#connect();
        } catch (err) {
          this.#retryMs = Math.min(this.#retryMs * 2, RETRY_MAX_MS);
          this.#o.logger.warn({ err: (err as Error).message }, "cluster event listener reconnect failed");
          this.#retry();
          return;
        }
        if (this.#closed) return;
        this.#retryMs = RETRY_MIN_MS;
        this.#o.logger.warn(
          { down_ms: Date.now() - this.#downSince, changes_not_told: this.#untold },
          "cluster event listener back: changes made meanwhile on other replicas were not streamed here, and this replica's were not told to them",
        );
        this.#untold = 0;
      },
      this.#retryMs * (0.5 + Math.random() / 2),
    );
    this.#retryTimer.unref();
  }
}

function strings(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : [];
}

/**
 * The payloads telling these changes, each at most MAX_PAYLOAD_BYTES (an item that alone would not
 * fit is left out, logged: no id or figures of this project come near it).
 */
export function notices(
  origin: string,
  sessions: string[],
  hosts: string[],
  tunnels: { r: string; stats: TunnelStats }[],
  logger?: Logger,
): string[] {
  const out: string[] = [];
  const empty = (): Required<Notice> => ({ o: origin, s: [], h: [], t: [] });
  const base = Buffer.byteLength(JSON.stringify(empty()));
  let current = empty();
  let size = base;
  let items = 0;
  const add = <K extends "s" | "h" | "t">(key: K, item: Required<Notice>[K][number]) => {
    const bytes = Buffer.byteLength(JSON.stringify(item)) + 1; // and its comma
    if (base + bytes > MAX_PAYLOAD_BYTES) {
      logger?.warn({ bytes }, "a change too large to tell other replicas; left out");
      return;
    }
    if (size + bytes > MAX_PAYLOAD_BYTES) {
      out.push(JSON.stringify(current));
      current = empty();
      size = base;
      items = 0;
    }
    (current[key] as unknown[]).push(item);
    size += bytes;
    items++;
  };
  for (const id of sessions) add("s", id);
  for (const id of hosts) add("h", id);
  for (const t of tunnels) add("t", t);
  if (items > 0) out.push(JSON.stringify(current));
  return out;
}
