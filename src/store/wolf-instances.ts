// Data access for sandbox hosts ("Wolf instances") and the scheduler's capacity claim.
//
// A host's load (connected_sandboxes) is never stored: it is the count of sessions in an ACTIVE
// status placed on it, so it is right after a restart and cannot drift; the lifecycle sweeper keeps
// those sessions equal to the lobbies the host lists (GET /lobbies), so the count is what it runs. claimSlot() chooses a host
// and places a session on it in ONE transaction; concurrent claims are serialized by locking every
// candidate host row (FOR UPDATE, in id order so two claims never deadlock), and on PGlite by its
// single connection. Under READ COMMITTED the load query that follows the lock sees every claim
// committed before it, so N concurrent claims on K free slots place exactly min(N, K) sessions.
//
// Who makes a host: an admin (create(), or register() with an admin key). A host itself, with its
// own key or the legacy runner token, may only refresh a record that exists (registerKnown()), and
// its capacity never exceeds the limit the admin set (max_sandboxes_limit).

import type { Clock } from "./clock.ts";
import { ACTIVE_SESSION_STATUSES, type SessionStatus } from "./sessions.ts";
import type { SqlDatabase, SqlExecutor } from "./sql-executor.ts";

export const WOLF_STATUSES = Object.freeze(["online", "offline"] as const);
export type WolfStatus = (typeof WOLF_STATUSES)[number];

export const DEFAULT_MAX_SANDBOXES = 10;

export interface WolfInstance {
  id: string;
  name: string;
  address: string;
  status: WolfStatus;
  maxSandboxes: number;
  /** The capacity an admin granted; a host's own registration cannot go above it. */
  maxSandboxesLimit: number;
  lastHeartbeat: Date | null;
  labels: Record<string, string>;
  createdAt: Date;
  updatedAt: Date;
  /** Sessions on this host whose lobby may run there (starting, running, stopping). */
  connectedSandboxes: number;
}

export interface WolfRegistration {
  id: string;
  name: string;
  address?: string;
  maxSandboxes?: number;
  labels?: Record<string, string>;
}

export interface ClaimRequest {
  sessionId: string;
  /** Only these hosts may be chosen (those with a live `wolf-{id}` tunnel); all online ones when omitted. */
  eligibleIds?: readonly string[];
  /** Statuses the session may be claimed from (default: pending). */
  fromStatuses?: readonly SessionStatus[];
}

export interface ClaimResult {
  host: WolfInstance;
  /** The host's load before this claim. */
  previousLoad: number;
}

interface WolfRow {
  id: string;
  name: string;
  address: string;
  status: WolfStatus;
  max_sandboxes: number;
  max_sandboxes_limit: number;
  last_heartbeat: Date | null;
  labels: Record<string, string> | string;
  created_at: Date;
  updated_at: Date;
  connected_sandboxes: number;
}

const SELECT = `SELECT w.id, w.name, w.address, w.status, w.max_sandboxes, w.max_sandboxes_limit, w.last_heartbeat, w.labels,
                       w.created_at, w.updated_at,
                       (SELECT count(*)::int FROM sessions s
                        WHERE s.wolf_instance_id = w.id AND s.status = ANY($1::text[])) AS connected_sandboxes
                FROM wolf_instances w`;

function toWolf(row: WolfRow): WolfInstance {
  return {
    id: row.id,
    name: row.name,
    address: row.address,
    status: row.status,
    maxSandboxes: row.max_sandboxes,
    maxSandboxesLimit: row.max_sandboxes_limit,
    lastHeartbeat: row.last_heartbeat,
    labels: typeof row.labels === "string" ? JSON.parse(row.labels) : row.labels,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    connectedSandboxes: row.connected_sandboxes,
  };
}

const ACTIVE = [...ACTIVE_SESSION_STATUSES];

/** Orders candidates: lowest load ratio, then fewest sandboxes, then id (deterministic). */
function pickLeastLoaded(hosts: WolfInstance[]): WolfInstance | null {
  const free = hosts.filter((h) => h.connectedSandboxes < h.maxSandboxes);
  free.sort(
    (a, b) =>
      a.connectedSandboxes / a.maxSandboxes - b.connectedSandboxes / b.maxSandboxes ||
      a.connectedSandboxes - b.connectedSandboxes ||
      (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
  );
  return free[0] ?? null;
}

export class WolfInstanceRepository {
  readonly #db: SqlExecutor;
  readonly #clock: Clock;
  /** Present only on the top-level repository: claimSlot opens its own transaction. */
  readonly #database: SqlDatabase | null;

  constructor(db: SqlExecutor, clock: Clock, database: SqlDatabase | null) {
    this.#db = db;
    this.#clock = clock;
    this.#database = database;
  }

  /**
   * An admin's registration: creates the host or refreshes it; it is online with a heartbeat from
   * now, and its capacity (and limit) is what was given.
   */
  async register(input: WolfRegistration): Promise<WolfInstance> {
    const max = input.maxSandboxes ?? DEFAULT_MAX_SANDBOXES;
    await this.#db.query(
      `INSERT INTO wolf_instances (id, name, address, status, max_sandboxes, max_sandboxes_limit, last_heartbeat, labels, created_at, updated_at)
       VALUES ($1, $2, $3, 'online', $4, $4, $5, $6::jsonb, $5, $5)
       ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, address = EXCLUDED.address, status = 'online',
         max_sandboxes = EXCLUDED.max_sandboxes, max_sandboxes_limit = EXCLUDED.max_sandboxes_limit,
         last_heartbeat = EXCLUDED.last_heartbeat, labels = EXCLUDED.labels, updated_at = EXCLUDED.updated_at`,
      [input.id, input.name, input.address ?? "", max, this.#clock(), JSON.stringify(input.labels ?? {})],
    );
    return (await this.get(input.id))!;
  }

  /**
   * An admin creates a host that has not registered yet (status offline until it does). Throws a
   * StoreError with code conflict when the id exists.
   */
  async create(input: WolfRegistration): Promise<WolfInstance> {
    const now = this.#clock();
    await this.#db.query(
      `INSERT INTO wolf_instances (id, name, address, status, max_sandboxes, max_sandboxes_limit, last_heartbeat, labels, created_at, updated_at)
       VALUES ($1, $2, $3, 'offline', $4, $4, NULL, $5::jsonb, $6, $6)`,
      [
        input.id,
        input.name,
        input.address ?? "",
        input.maxSandboxes ?? DEFAULT_MAX_SANDBOXES,
        JSON.stringify(input.labels ?? {}),
        now,
      ],
    );
    return (await this.get(input.id))!;
  }

  /**
   * A host's own registration: refreshes a host an admin created (name, address, labels, online,
   * heartbeat) and sets its capacity to what it asks for, capped at its limit. Null for an unknown
   * id: a host cannot create itself.
   */
  async registerKnown(input: WolfRegistration): Promise<WolfInstance | null> {
    const { rowCount } = await this.#db.query(
      `UPDATE wolf_instances SET name = $2, address = $3, status = 'online',
         max_sandboxes = LEAST(COALESCE($4::int, max_sandboxes_limit), max_sandboxes_limit),
         last_heartbeat = $5, labels = $6::jsonb, updated_at = $5
       WHERE id = $1`,
      [
        input.id,
        input.name,
        input.address ?? "",
        input.maxSandboxes ?? null,
        this.#clock(),
        JSON.stringify(input.labels ?? {}),
      ],
    );
    return rowCount > 0 ? this.get(input.id) : null;
  }

  /** Records a heartbeat (and marks the host online); false for an unknown id. */
  async heartbeat(id: string): Promise<boolean> {
    const now = this.#clock();
    const { rowCount } = await this.#db.query(
      "UPDATE wolf_instances SET last_heartbeat = $2, status = 'online', updated_at = $2 WHERE id = $1",
      [id, now],
    );
    return rowCount > 0;
  }

  async setStatus(id: string, status: WolfStatus): Promise<boolean> {
    const { rowCount } = await this.#db.query(
      "UPDATE wolf_instances SET status = $2, updated_at = $3 WHERE id = $1 AND status <> $2",
      [id, status, this.#clock()],
    );
    return rowCount > 0;
  }

  /**
   * Marks offline every online host whose last heartbeat is older than `before`, except those in
   * `keepIds` (hosts with a live tunnel); returns the ids it changed.
   */
  async markStaleOffline(before: Date, keepIds: readonly string[] = []): Promise<string[]> {
    const { rows } = await this.#db.query<{ id: string }>(
      `UPDATE wolf_instances SET status = 'offline', updated_at = $2
       WHERE status = 'online' AND (last_heartbeat IS NULL OR last_heartbeat < $1) AND NOT (id = ANY($3::text[]))
       RETURNING id`,
      [before, this.#clock(), [...keepIds]],
    );
    return rows.map((r) => r.id);
  }

  async get(id: string): Promise<WolfInstance | null> {
    const { rows } = await this.#db.query<WolfRow>(`${SELECT} WHERE w.id = $2`, [ACTIVE, id]);
    return rows[0] ? toWolf(rows[0]) : null;
  }

  async list(): Promise<WolfInstance[]> {
    const { rows } = await this.#db.query<WolfRow>(`${SELECT} ORDER BY w.id`, [ACTIVE]);
    return rows.map(toWolf);
  }

  async delete(id: string): Promise<boolean> {
    const { rowCount } = await this.#db.query("DELETE FROM wolf_instances WHERE id = $1", [id]);
    return rowCount > 0;
  }

  /**
   * Picks the least-loaded online host with a free slot and places the session on it (status
   * `starting`, wolf_instance_id set), atomically. Null when no host has room or the session is not
   * in one of `fromStatuses`. On the top-level store it opens its own transaction; inside a
   * transaction it claims in that one, so a caller can record more (the task's status) atomically.
   */
  async claimSlot(request: ClaimRequest): Promise<ClaimResult | null> {
    if (!this.#database) return claimInTransaction(this.#db, this.#clock, request);
    return this.#database.transaction((tx) => claimInTransaction(tx, this.#clock, request));
  }
}

async function claimInTransaction(
  tx: SqlExecutor,
  clock: Clock,
  request: ClaimRequest,
): Promise<ClaimResult | null> {
  const eligible = request.eligibleIds ? [...request.eligibleIds] : null;
  await tx.query(
    `SELECT id FROM wolf_instances WHERE status = 'online' AND ($1::text[] IS NULL OR id = ANY($1::text[]))
     ORDER BY id FOR UPDATE`,
    [eligible],
  );
  const { rows } = await tx.query<WolfRow>(
    `${SELECT} WHERE w.status = 'online' AND ($2::text[] IS NULL OR w.id = ANY($2::text[]))`,
    [ACTIVE, eligible],
  );
  const host = pickLeastLoaded(rows.map(toWolf));
  if (!host) return null;
  const { rowCount } = await tx.query(
    `UPDATE sessions SET wolf_instance_id = $2, status = 'starting', updated_at = $3
     WHERE id = $1 AND status = ANY($4::text[])`,
    [request.sessionId, host.id, clock(), [...(request.fromStatuses ?? ["pending"])]],
  );
  if (rowCount === 0) return null;
  return {
    host: { ...host, connectedSandboxes: host.connectedSandboxes + 1 },
    previousLoad: host.connectedSandboxes,
  };
}
