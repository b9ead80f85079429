// Data access for sessions: one sandbox each, owned by a user, optionally for a spec task, placed on
// a host (wolf_instance_id, lobby_id). A host's load is derived from the sessions in ACTIVE statuses
// on it, so there is no counter to drift. The final screenshot is kept here after a stop.
//
// Lifecycle (src/api/routes/lifecycle.ts, src/api/lifecycle-sweeper.ts): every step is written here
// before it is acted on, so a crash between two steps leaves a state the sweeper can settle:
//   pending -> starting (host claimed) -> [lobby_id recorded] -> running (sandbox connected)
//   any live status -> stopping (stop requested: the host kills the lobby, now or when it returns)
//   -> stopped; starting/running -> failed (sandbox never came, or ended on its own).

import type { Clock } from "./clock.ts";
import { newId } from "./ids.ts";
import type { SqlExecutor } from "./sql-executor.ts";

/**
 * pending: created, no sandbox scheduled; starting: placed on a host, sandbox not connected yet;
 * running: sandbox connected; stopping / stopped: being / been torn down; failed: could not start.
 */
export const SESSION_STATUSES = Object.freeze([
  "pending",
  "starting",
  "running",
  "stopping",
  "stopped",
  "failed",
] as const);
export type SessionStatus = (typeof SESSION_STATUSES)[number];

/**
 * Statuses that occupy a slot on the session's host: its lobby may run there. `stopping` counts
 * too, because until the host confirms the stop (at once, or when an offline host returns) the
 * sandbox is still there.
 */
export const ACTIVE_SESSION_STATUSES: readonly SessionStatus[] = Object.freeze([
  "starting",
  "running",
  "stopping",
]);

/**
 * Statuses that hold a spec task in `planning`: start-planning places its session in the same
 * transaction that moves the task, so a task in planning has a session in one of these. A stop
 * request (`stopping`) gives the task back at once: a host that stays offline must not keep the
 * task from starting again.
 */
export const TASK_HOLDING_SESSION_STATUSES: readonly SessionStatus[] = Object.freeze(["starting", "running"]);

export interface Session {
  id: string;
  ownerId: string;
  name: string;
  specTaskId: string | null;
  status: SessionStatus;
  wolfInstanceId: string | null;
  lobbyId: string | null;
  createdAt: Date;
  updatedAt: Date;
  lastActivityAt: Date;
  hasFinalScreenshot: boolean;
}

export interface FinalScreenshot {
  bytes: Buffer;
  contentType: string;
}

export interface SessionFilter {
  ownerId?: string;
  status?: SessionStatus;
  /** Any of these statuses (with `status`, both must hold). */
  statuses?: readonly SessionStatus[];
  specTaskId?: string;
  /** Only sessions last changed strictly before this instant. */
  updatedBefore?: Date;
  /** Only sessions created strictly before this instant. */
  createdBefore?: Date;
  wolfInstanceId?: string;
  /** Most rows returned (default 1000). */
  limit?: number;
}

interface SessionRow {
  id: string;
  owner_id: string;
  name: string;
  spec_task_id: string | null;
  status: SessionStatus;
  wolf_instance_id: string | null;
  lobby_id: string | null;
  created_at: Date;
  updated_at: Date;
  last_activity_at: Date;
  has_final_screenshot: boolean;
}

const COLUMNS = `id, owner_id, name, spec_task_id, status, wolf_instance_id, lobby_id, created_at, updated_at,
                 last_activity_at, (final_screenshot IS NOT NULL) AS has_final_screenshot`;

const DEFAULT_LIST_LIMIT = 1000;

function toSession(row: SessionRow): Session {
  return {
    id: row.id,
    ownerId: row.owner_id,
    name: row.name,
    specTaskId: row.spec_task_id,
    status: row.status,
    wolfInstanceId: row.wolf_instance_id,
    lobbyId: row.lobby_id,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    lastActivityAt: row.last_activity_at,
    hasFinalScreenshot: row.has_final_screenshot,
  };
}

export class SessionRepository {
  readonly #db: SqlExecutor;
  readonly #clock: Clock;

  constructor(db: SqlExecutor, clock: Clock) {
    this.#db = db;
    this.#clock = clock;
  }

  async create(input: {
    ownerId: string;
    name?: string;
    specTaskId?: string | null;
    status?: SessionStatus;
  }): Promise<Session> {
    const { rows } = await this.#db.query<SessionRow>(
      `INSERT INTO sessions (id, owner_id, name, spec_task_id, status, created_at, updated_at, last_activity_at)
       VALUES ($1, $2, $3, $4, $5, $6, $6, $6) RETURNING ${COLUMNS}`,
      [
        newId("session"),
        input.ownerId,
        input.name ?? "",
        input.specTaskId ?? null,
        input.status ?? "pending",
        this.#clock(),
      ],
    );
    return toSession(rows[0]);
  }

  async get(id: string): Promise<Session | null> {
    const { rows } = await this.#db.query<SessionRow>(`SELECT ${COLUMNS} FROM sessions WHERE id = $1`, [id]);
    return rows[0] ? toSession(rows[0]) : null;
  }

  /** Sessions newest first. */
  async list(filter: SessionFilter = {}): Promise<Session[]> {
    const { rows } = await this.#db.query<SessionRow>(
      `SELECT ${COLUMNS} FROM sessions
       WHERE ($1::text IS NULL OR owner_id = $1) AND ($2::text IS NULL OR status = $2)
         AND ($3::timestamptz IS NULL OR created_at < $3) AND ($4::text IS NULL OR wolf_instance_id = $4)
         AND ($6::text[] IS NULL OR status = ANY($6::text[])) AND ($7::text IS NULL OR spec_task_id = $7)
         AND ($8::timestamptz IS NULL OR updated_at < $8)
       ORDER BY created_at DESC, id DESC LIMIT $5`,
      [
        filter.ownerId ?? null,
        filter.status ?? null,
        filter.createdBefore ?? null,
        filter.wolfInstanceId ?? null,
        filter.limit ?? DEFAULT_LIST_LIMIT,
        filter.statuses ? [...filter.statuses] : null,
        filter.specTaskId ?? null,
        filter.updatedBefore ?? null,
      ],
    );
    return rows.map(toSession);
  }

  /** Sets the status, only from one of `from` when given; returns the updated session or null. */
  async setStatus(id: string, to: SessionStatus, from?: readonly SessionStatus[]): Promise<Session | null> {
    const { rows } = await this.#db.query<SessionRow>(
      `UPDATE sessions SET status = $2, updated_at = $3
       WHERE id = $1 AND ($4::text[] IS NULL OR status = ANY($4::text[])) RETURNING ${COLUMNS}`,
      [id, to, this.#clock(), from ? [...from] : null],
    );
    return rows[0] ? toSession(rows[0]) : null;
  }

  /**
   * Records where the sandbox runs (the host's lobby id once the host created it), only while the
   * session is in one of `from` when given; returns the updated session or null.
   */
  async setLobby(
    id: string,
    lobbyId: string | null,
    from?: readonly SessionStatus[],
  ): Promise<Session | null> {
    const { rows } = await this.#db.query<SessionRow>(
      `UPDATE sessions SET lobby_id = $2, updated_at = $3
       WHERE id = $1 AND ($4::text[] IS NULL OR status = ANY($4::text[])) RETURNING ${COLUMNS}`,
      [id, lobbyId, this.#clock(), from ? [...from] : null],
    );
    return rows[0] ? toSession(rows[0]) : null;
  }

  async touchActivity(id: string): Promise<void> {
    await this.#db.query("UPDATE sessions SET last_activity_at = $2 WHERE id = $1", [id, this.#clock()]);
  }

  /**
   * Stores the session's final screenshot, then keeps its owner's stored screenshots within
   * `perUserBytes` (unbounded when omitted): this one is always kept, the others from the most
   * recently updated session down until the budget is spent, and the rest are dropped (the oldest
   * first; a stopped session's updated_at is its stop, so that is the image's age). Returns the ids
   * of the sessions whose screenshot was dropped.
   */
  async setFinalScreenshot(id: string, shot: FinalScreenshot, perUserBytes?: number): Promise<string[]> {
    await this.#db.query(
      "UPDATE sessions SET final_screenshot = $2, final_screenshot_type = $3, updated_at = $4 WHERE id = $1",
      [id, shot.bytes, shot.contentType, this.#clock()],
    );
    if (perUserBytes === undefined) return [];
    const { rows } = await this.#db.query<{ id: string; size: number | string }>(
      `SELECT id, octet_length(final_screenshot) AS size FROM sessions
        WHERE owner_id = (SELECT owner_id FROM sessions WHERE id = $1) AND final_screenshot IS NOT NULL
        ORDER BY (id = $1) DESC, updated_at DESC, id DESC`,
      [id],
    );
    let kept = 0;
    const dropped: string[] = [];
    for (const row of rows) {
      kept += Number(row.size);
      if (row.id !== id && kept > perUserBytes) dropped.push(row.id);
    }
    if (dropped.length > 0) {
      await this.#db.query(
        "UPDATE sessions SET final_screenshot = NULL, final_screenshot_type = NULL WHERE id = ANY($1)",
        [dropped],
      );
    }
    return dropped;
  }

  async getFinalScreenshot(id: string): Promise<FinalScreenshot | null> {
    const { rows } = await this.#db.query<{
      final_screenshot: Uint8Array | null;
      final_screenshot_type: string | null;
    }>("SELECT final_screenshot, final_screenshot_type FROM sessions WHERE id = $1", [id]);
    const row = rows[0];
    if (!row?.final_screenshot) return null;
    const bytes = Buffer.isBuffer(row.final_screenshot)
      ? row.final_screenshot
      : Buffer.from(
          row.final_screenshot.buffer,
          row.final_screenshot.byteOffset,
          row.final_screenshot.byteLength,
        );
    return { bytes, contentType: row.final_screenshot_type ?? "application/octet-stream" };
  }

  async delete(id: string): Promise<boolean> {
    const { rowCount } = await this.#db.query("DELETE FROM sessions WHERE id = $1", [id]);
    return rowCount > 0;
  }
}
