// Leader election: the replica that holds a Postgres advisory lock (pg_try_advisory_lock, on a
// session of its own) is the leader, and runs the cluster's background work. The lock belongs to
// the session: when the leader dies, or its connection does, Postgres releases it, and the next
// replica to try takes it. Each replica tries every retryMs, so a successor takes over within
// retryMs of Postgres noticing the death (at once for a killed process: its socket closes).
// A leader whose session breaks steps down at once (it can no longer know it holds the lock).

import pg from "pg";
import type { Logger } from "../../common/logger.ts";

/** The lock key: "rdleader" truncated, like the migrations' key. */
export const LEADER_LOCK_KEY = 0x72646c65;

export interface LeaderOptions {
  databaseUrl: string;
  logger: Logger;
  /** How often a follower tries to take the lock (and the leader checks its session). Default 2 s. */
  retryMs?: number;
  /** How the election's session shows in pg_stat_activity. */
  applicationName?: string;
  /** Called with true when this replica becomes the leader, false when it stops being it. */
  onChange: (leader: boolean) => void;
}

export class LeaderElection {
  readonly #o: LeaderOptions & { retryMs: number };
  #client: pg.Client | null = null;
  #leader = false;
  #timer: NodeJS.Timeout | null = null;
  #busy = false;
  #closed = false;

  constructor(options: LeaderOptions) {
    // An option passed as undefined keeps the default (a setInterval of undefined would spin).
    this.#o = { ...options, retryMs: options.retryMs ?? 2000 };
  }

  get isLeader(): boolean {
    return this.#leader;
  }

  start(): void {
    void this.#tick();
    this.#timer = setInterval(() => void this.#tick(), this.#o.retryMs);
    this.#timer.unref();
  }

  async #tick(): Promise<void> {
    if (this.#busy || this.#closed) return;
    this.#busy = true;
    try {
      const client = await this.#session();
      if (this.#leader) {
        await client.query("SELECT 1");
        return;
      }
      const { rows } = await client.query<{ locked: boolean }>("SELECT pg_try_advisory_lock($1) AS locked", [
        LEADER_LOCK_KEY,
      ]);
      if (rows[0]?.locked && !this.#closed) this.#set(true);
    } catch (err) {
      if (this.#closed) return;
      this.#o.logger.warn({ err: (err as Error).message }, "leader election: session failed");
      this.#drop();
    } finally {
      this.#busy = false;
    }
  }

  async #session(): Promise<pg.Client> {
    if (this.#client) return this.#client;
    const client = new pg.Client({
      connectionString: this.#o.databaseUrl,
      connectionTimeoutMillis: 5000,
      keepAlive: true,
      statement_timeout: 5000,
      application_name: this.#o.applicationName ?? "revdial-leader",
    });
    client.on("error", (err) => {
      if (this.#client !== client || this.#closed) return;
      this.#o.logger.warn({ err: err.message }, "leader election: session lost");
      this.#drop();
    });
    client.on("end", () => {
      if (this.#client === client) this.#drop();
    });
    this.#client = client;
    await client.connect();
    return client;
  }

  #drop(): void {
    const client = this.#client;
    this.#client = null;
    void client?.end().catch(() => {});
    if (this.#leader) this.#set(false);
  }

  #set(leader: boolean): void {
    this.#leader = leader;
    this.#o.logger.info(
      { leader },
      leader ? "this replica is now the leader" : "this replica is no longer the leader",
    );
    this.#o.onChange(leader);
  }

  /** Steps down (the lock goes with the session) and stops trying. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    const client = this.#client;
    this.#client = null;
    if (this.#leader) this.#set(false);
    await client?.end().catch(() => {});
  }
}
