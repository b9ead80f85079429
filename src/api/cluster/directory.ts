// The cluster's tunnel directory, in Postgres: which replica holds each runner's live tunnel.
//
// Tables (migration 004, UNLOGGED): revdial_replicas (replica id -> advertise URL, a lease renewed
// every heartbeat) and revdial_tunnels (runner id -> replica, generation, state live|grace, a lease
// renewed in one statement per renewal for all of this replica's rows).
//
// Every replica keeps a MIRROR of both tables in memory, so a lookup on the call path is a Map
// read, never a round trip: the mirror is loaded at start, kept current by LISTEN/NOTIFY on the
// channel `revdial_directory` (every write of a row notifies its new state, in the same statement,
// delivered at commit), and reloaded whole every reloadIntervalMs and after the listening
// connection comes back (NOTIFYs sent while it was away are lost). The replicas table is small and
// read every heartbeat.
//
// Ordering: each claim's generation is its registration time (ms, on the registering replica) with a
// sequence number for ties; a row is only overwritten by a higher generation (ON CONFLICT ... WHERE),
// and the mirror applies a notification only if its generation is not older than what it has. So
// whatever order claims commit in, the newest registration wins everywhere (up to the replicas'
// clock skew, for registrations that close together), and a claim that lost learns it from its own
// statement (no row returned).
//
// Leases: a replica killed without a goodbye stops renewing; its replica row lapses after
// replicaLeaseMs (the others then treat its tunnels as in transit: calls wait for the agents to come
// back elsewhere), and its tunnel rows after tunnelLeaseMs (then the leader deletes them).

import { EventEmitter } from "node:events";
import pg from "pg";
import type { Logger } from "../../common/logger.ts";

export const DIRECTORY_CHANNEL = "revdial_directory";

/** Claims in one millisecond are told apart by the sequence, modulo this (generation = ms * this + seq). */
const GENERATION_TIE_SLOTS = 1024;

export type EntryState = "live" | "grace";

export interface DirectoryEntry {
  runnerId: string;
  replicaId: string;
  generation: number;
  state: EntryState;
  /** Epoch ms: end of the lease (live) or of the grace period (grace). */
  expiresAt: number;
}

export interface ReplicaInfo {
  replicaId: string;
  advertiseUrl: string;
  alive: boolean;
}

export interface DirectoryOptions {
  databaseUrl: string;
  replicaId: string;
  advertiseUrl: string;
  logger: Logger;
  /** A replica row lapses this long after its last heartbeat. Default 5 s. */
  replicaLeaseMs?: number;
  /** Heartbeat (replica lease, replicas read). Default 1 s. */
  heartbeatMs?: number;
  /** A tunnel row lapses this long after its last renewal. Default 15 s. */
  tunnelLeaseMs?: number;
  /** Whole-mirror reload. Default 10 s. */
  reloadIntervalMs?: number;
  /** Told of every lookup on the call path (for metrics). */
  onLookup?: (result: "local" | "remote" | "grace" | "miss") => void;
}

export interface DirectoryEvents {
  /** A runner's entry changed (claimed, graced, gone); `entry` is null when gone. */
  change: [runnerId: string, entry: DirectoryEntry | null];
  /** The mirror was reloaded whole (after a reconnect): anything may have changed. */
  reload: [];
}

type ResolvedDirectoryOptions = Required<Omit<DirectoryOptions, "onLookup">> &
  Pick<DirectoryOptions, "onLookup">;

interface Notice {
  r: string;
  p: string;
  g: string | number;
  s: EntryState | "gone";
  e: number;
}

const DEFAULTS = Object.freeze({
  replicaLeaseMs: 5000,
  heartbeatMs: 1000,
  tunnelLeaseMs: 15_000,
  reloadIntervalMs: 10_000,
});

/** The NOTIFY that every write of a row sends, built from the row the statement returns. */
const NOTIFY_SELECT = `SELECT generation::text AS generation, pg_notify('${DIRECTORY_CHANNEL}', json_build_object(
  'r', runner_id, 'p', replica_id, 'g', generation::text, 's', state,
  'e', (extract(epoch FROM expires_at) * 1000)::bigint)::text) FROM up`;

const NOTIFY_GONE = `SELECT generation::text AS generation, pg_notify('${DIRECTORY_CHANNEL}', json_build_object(
  'r', runner_id, 'p', replica_id, 'g', generation::text, 's', 'gone', 'e', 0)::text) FROM up`;

export class Directory extends EventEmitter<DirectoryEvents> {
  readonly replicaId: string;
  readonly advertiseUrl: string;
  readonly #o: ResolvedDirectoryOptions;
  readonly #log: Logger;
  readonly #pool: pg.Pool;
  readonly #entries = new Map<string, DirectoryEntry>();
  /** Entries changed by a notification since the reload in flight began: the reload keeps them. */
  #touched: Set<string> | null = null;
  #replicas = new Map<string, ReplicaInfo>();
  #listener: pg.Client | null = null;
  #listening = false;
  #heartbeat: NodeJS.Timeout | null = null;
  #reloadTimer: NodeJS.Timeout | null = null;
  #reconnectTimer: NodeJS.Timeout | null = null;
  #closed = false;
  #beats = 0;

  constructor(options: DirectoryOptions) {
    super();
    this.#o = { ...DEFAULTS, ...stripUndefined(options) } as ResolvedDirectoryOptions;
    this.replicaId = options.replicaId;
    this.advertiseUrl = options.advertiseUrl;
    this.#log = options.logger;
    this.#pool = new pg.Pool({
      connectionString: options.databaseUrl,
      max: 4,
      connectionTimeoutMillis: 5000,
      idleTimeoutMillis: 30_000,
      statement_timeout: 5000,
      keepAlive: true,
      application_name: `revdial-directory ${options.replicaId}`,
    });
    this.#pool.on("error", (err) => this.#log.warn({ err: err.message }, "directory pool connection failed"));
  }

  /** Registers this replica, starts listening and loads the mirror. Throws when Postgres refuses. */
  async start(): Promise<void> {
    await this.#beat();
    await this.#listen();
    await this.reload();
    this.#heartbeat = setInterval(
      () => void this.#beat().catch((err) => this.#beatFailed(err)),
      this.#o.heartbeatMs,
    );
    this.#heartbeat.unref();
    this.#reloadTimer = setInterval(
      () =>
        void this.reload().catch((err) => this.#log.warn({ err: err.message }, "directory reload failed")),
      this.#o.reloadIntervalMs,
    );
    this.#reloadTimer.unref();
  }

  #beatFailed(err: Error): void {
    if (this.#closed) return;
    this.#log.warn({ err: err.message }, "replica heartbeat failed");
  }

  /** Renews this replica's lease and its live tunnels' leases, and reads the replicas table. */
  async #beat(): Promise<void> {
    if (this.#closed) return;
    await this.#pool.query(
      `INSERT INTO revdial_replicas (replica_id, advertise_url, expires_at)
       VALUES ($1, $2, now() + $3 * interval '1 millisecond')
       ON CONFLICT (replica_id) DO UPDATE SET advertise_url = EXCLUDED.advertise_url, expires_at = EXCLUDED.expires_at`,
      [this.replicaId, this.advertiseUrl, this.#o.replicaLeaseMs],
    );
    // Tunnel leases are renewed a third of their length at a time, in one statement for all.
    const renewEvery = Math.max(1, Math.floor(this.#o.tunnelLeaseMs / 3 / this.#o.heartbeatMs));
    if (this.#beats++ % renewEvery === 0)
      await this.#pool.query(
        `UPDATE revdial_tunnels SET expires_at = now() + $2 * interval '1 millisecond'
       WHERE replica_id = $1 AND state = 'live'`,
        [this.replicaId, this.#o.tunnelLeaseMs],
      );
    const { rows } = await this.#pool.query<{ replica_id: string; advertise_url: string; alive: boolean }>(
      "SELECT replica_id, advertise_url, expires_at > now() AS alive FROM revdial_replicas",
    );
    const next = new Map<string, ReplicaInfo>();
    for (const r of rows)
      next.set(r.replica_id, { replicaId: r.replica_id, advertiseUrl: r.advertise_url, alive: r.alive });
    this.#replicas = next;
  }

  async #listen(): Promise<void> {
    const client = new pg.Client({
      connectionString: this.#o.databaseUrl,
      connectionTimeoutMillis: 5000,
      keepAlive: true,
      application_name: `revdial-directory-listen ${this.replicaId}`,
    });
    client.on("notification", (msg) => {
      if (msg.channel === DIRECTORY_CHANNEL && msg.payload) this.#onNotice(msg.payload);
    });
    const lost = (err?: Error) => {
      if (this.#listener !== client) return;
      this.#listener = null;
      this.#listening = false;
      client.removeAllListeners("end");
      void client.end().catch(() => {});
      if (this.#closed) return;
      this.#log.warn({ err: err?.message }, "directory listener lost; reconnecting");
      this.#scheduleRelisten();
    };
    client.on("error", lost);
    client.on("end", () => lost());
    this.#listener = client;
    await client.connect();
    await client.query(`LISTEN ${DIRECTORY_CHANNEL}`);
    this.#listening = true;
  }

  #scheduleRelisten(): void {
    if (this.#reconnectTimer || this.#closed) return;
    this.#reconnectTimer = setTimeout(async () => {
      this.#reconnectTimer = null;
      try {
        await this.#listen();
        await this.reload();
        this.#log.info("directory listener back");
      } catch (err) {
        this.#listener?.end().catch(() => {});
        this.#listener = null;
        this.#log.warn({ err: (err as Error).message }, "directory listener reconnect failed");
        this.#scheduleRelisten();
      }
    }, 500);
    this.#reconnectTimer.unref();
  }

  /** True while NOTIFYs arrive: the mirror is current, not just as of the last reload. */
  get listening(): boolean {
    return this.#listening;
  }

  #onNotice(payload: string): void {
    let n: Notice;
    try {
      n = JSON.parse(payload) as Notice;
    } catch {
      return;
    }
    const generation = Number(n.g);
    const current = this.#entries.get(n.r);
    if (current && current.generation > generation) return;
    this.#touched?.add(n.r);
    if (n.s === "gone") {
      if (!current) return;
      this.#entries.delete(n.r);
      this.emit("change", n.r, null);
      return;
    }
    const entry: DirectoryEntry = {
      runnerId: n.r,
      replicaId: n.p,
      generation,
      state: n.s,
      expiresAt: Number(n.e),
    };
    this.#entries.set(n.r, entry);
    this.emit("change", n.r, entry);
  }

  /** Reloads the whole mirror from the table, keeping entries that notifications changed meanwhile. */
  async reload(): Promise<void> {
    if (this.#closed) return;
    const touched = new Set<string>();
    this.#touched = touched;
    try {
      const { rows } = await this.#pool.query<{
        runner_id: string;
        replica_id: string;
        generation: string;
        state: EntryState;
        expires_ms: string;
      }>(
        `SELECT runner_id, replica_id, generation::text AS generation, state,
                (extract(epoch FROM expires_at) * 1000)::bigint::text AS expires_ms
         FROM revdial_tunnels`,
      );
      const seen = new Set<string>();
      for (const r of rows) {
        seen.add(r.runner_id);
        if (touched.has(r.runner_id)) continue;
        this.#entries.set(r.runner_id, {
          runnerId: r.runner_id,
          replicaId: r.replica_id,
          generation: Number(r.generation),
          state: r.state,
          expiresAt: Number(r.expires_ms),
        });
      }
      for (const id of [...this.#entries.keys()])
        if (!seen.has(id) && !touched.has(id)) this.#entries.delete(id);
    } finally {
      if (this.#touched === touched) this.#touched = null;
    }
    this.emit("reload");
  }

  /**
   * Records that this replica now holds the runner's live tunnel, registered at `registeredAtMs`.
   * The generation orders registrations by that time (then by the sequence, for ties), not by when
   * the claim reaches the database: a claim delayed by a busy pool must not beat a newer
   * registration elsewhere. Returns the claim's generation, or null when a newer registration
   * already holds the runner (this tunnel lost).
   */
  async claim(runnerId: string, registeredAtMs: number): Promise<number | null> {
    const { rows } = await this.#pool.query<{ generation: string }>(
      `WITH up AS (
         INSERT INTO revdial_tunnels (runner_id, replica_id, generation, state, expires_at)
         VALUES ($1, $2, $4::bigint * ${GENERATION_TIE_SLOTS} + nextval('revdial_tunnel_generation') % ${GENERATION_TIE_SLOTS},
                 'live', now() + $3 * interval '1 millisecond')
         ON CONFLICT (runner_id) DO UPDATE
           SET replica_id = EXCLUDED.replica_id, generation = EXCLUDED.generation,
               state = 'live', expires_at = EXCLUDED.expires_at
           WHERE revdial_tunnels.generation < EXCLUDED.generation
         RETURNING runner_id, replica_id, generation, state, expires_at)
       ${NOTIFY_SELECT}`,
      [runnerId, this.replicaId, this.#o.tunnelLeaseMs, Math.floor(registeredAtMs)],
    );
    return rows.length > 0 ? Number(rows[0].generation) : null;
  }

  /** The runner's tunnel here dropped: its entry waits in a grace period until `untilMs`. */
  async grace(runnerId: string, generation: number, untilMs: number): Promise<void> {
    await this.#pool.query(
      `WITH up AS (
         UPDATE revdial_tunnels SET state = 'grace', expires_at = to_timestamp($4 / 1000.0)
         WHERE runner_id = $1 AND replica_id = $2 AND generation = $3
         RETURNING runner_id, replica_id, generation, state, expires_at)
       ${NOTIFY_SELECT}`,
      [runnerId, this.replicaId, generation, untilMs],
    );
  }

  /**
   * Removes this replica's entry for the runner: only the claim with this generation, if given, and
   * only in that state, if given.
   */
  async release(runnerId: string, generation: number | null, state?: EntryState): Promise<void> {
    await this.#pool.query(
      `WITH up AS (
         DELETE FROM revdial_tunnels
         WHERE runner_id = $1 AND replica_id = $2 AND ($3::bigint IS NULL OR generation = $3)
           AND ($4::text IS NULL OR state = $4)
         RETURNING runner_id, replica_id, generation)
       ${NOTIFY_GONE}`,
      [runnerId, this.replicaId, generation, state ?? null],
    );
  }

  /** Drain: every live tunnel of this replica is in transit until `untilMs` (calls elsewhere wait). */
  async graceAll(untilMs: number): Promise<number> {
    const { rows } = await this.#pool.query(
      `WITH up AS (
         UPDATE revdial_tunnels SET state = 'grace', expires_at = to_timestamp($2 / 1000.0)
         WHERE replica_id = $1 AND state = 'live'
         RETURNING runner_id, replica_id, generation, state, expires_at)
       ${NOTIFY_SELECT}`,
      [this.replicaId, untilMs],
    );
    return rows.length;
  }

  /** The runner's entry as the mirror has it (counted as a lookup). */
  lookup(runnerId: string): DirectoryEntry | undefined {
    return this.#entries.get(runnerId);
  }

  countLookup(result: "local" | "remote" | "grace" | "miss"): void {
    this.#o.onLookup?.(result);
  }

  replica(replicaId: string): ReplicaInfo | undefined {
    return this.#replicas.get(replicaId);
  }

  replicas(): ReplicaInfo[] {
    return [...this.#replicas.values()];
  }

  /** Entries of this mirror (for the cluster-wide view). */
  entries(): DirectoryEntry[] {
    return [...this.#entries.values()];
  }

  /** Leader's clean-up: rows whose lease or grace lapsed, replica rows dead for a minute. */
  async sweepExpired(): Promise<number> {
    const { rows } = await this.#pool.query(
      `WITH up AS (DELETE FROM revdial_tunnels WHERE expires_at < now() RETURNING runner_id, replica_id, generation)
       ${NOTIFY_GONE}`,
    );
    await this.#pool.query("DELETE FROM revdial_replicas WHERE expires_at < now() - interval '1 minute'");
    return rows.length;
  }

  /**
   * Says goodbye: deletes this replica's live tunnel rows (notifying each) and its replica row, then
   * closes the connections. Rows in a grace period (tunnels that closed while this replica drained)
   * stay until their agents claim them elsewhere or they lapse. Idempotent.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const t of [this.#heartbeat, this.#reloadTimer, this.#reconnectTimer]) if (t) clearInterval(t);
    try {
      await this.#pool.query(
        `WITH up AS (DELETE FROM revdial_tunnels WHERE replica_id = $1 AND state = 'live'
                     RETURNING runner_id, replica_id, generation)
         ${NOTIFY_GONE}`,
        [this.replicaId],
      );
      await this.#pool.query("DELETE FROM revdial_replicas WHERE replica_id = $1", [this.replicaId]);
    } catch (err) {
      this.#log.warn({ err: (err as Error).message }, "could not remove this replica from the directory");
    }
    const listener = this.#listener;
    this.#listener = null;
    this.#listening = false;
    await Promise.allSettled([listener?.end(), this.#pool.end()]);
  }
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
