// Data access for spec tasks: units of work in a project that a session is started for.

import type { Clock } from "./clock.ts";
import { newId } from "./ids.ts";
import { TASK_HOLDING_SESSION_STATUSES } from "./sessions.ts";
import type { SqlExecutor } from "./sql-executor.ts";

/**
 * Task statuses; a new task is in `backlog`. Planning starts from `backlog`, or from `planning`
 * when no session holds the task (a start a crash cut short). A task is in `planning` only while a
 * session in TASK_HOLDING_SESSION_STATUSES holds it; when that session ends the task goes back.
 */
export const SPEC_TASK_STATUSES = Object.freeze(["backlog", "planning", "in_progress", "done"] as const);
export type SpecTaskStatus = (typeof SPEC_TASK_STATUSES)[number];

export interface SpecTask {
  id: string;
  projectId: string;
  /** The project's owner. */
  ownerId: string;
  name: string;
  description: string;
  status: SpecTaskStatus;
  priority: string;
  createdAt: Date;
  updatedAt: Date;
}

interface SpecTaskRow {
  id: string;
  project_id: string;
  owner_id: string;
  name: string;
  description: string;
  status: SpecTaskStatus;
  priority: string;
  created_at: Date;
  updated_at: Date;
}

const SELECT = `SELECT t.id, t.project_id, p.owner_id, t.name, t.description, t.status, t.priority,
                       t.created_at, t.updated_at
                FROM spec_tasks t JOIN projects p ON p.id = t.project_id`;

function toSpecTask(row: SpecTaskRow): SpecTask {
  return {
    id: row.id,
    projectId: row.project_id,
    ownerId: row.owner_id,
    name: row.name,
    description: row.description,
    status: row.status,
    priority: row.priority,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

export class SpecTaskRepository {
  readonly #db: SqlExecutor;
  readonly #clock: Clock;

  constructor(db: SqlExecutor, clock: Clock) {
    this.#db = db;
    this.#clock = clock;
  }

  async create(input: {
    projectId: string;
    name: string;
    description?: string;
    priority?: string;
  }): Promise<SpecTask> {
    const id = newId("specTask");
    await this.#db.query(
      `INSERT INTO spec_tasks (id, project_id, name, description, priority, created_at, updated_at)
       VALUES ($1, $2, $3, $4, $5, $6, $6)`,
      [id, input.projectId, input.name, input.description ?? "", input.priority ?? "medium", this.#clock()],
    );
    return (await this.get(id))!;
  }

  async get(id: string): Promise<SpecTask | null> {
    const { rows } = await this.#db.query<SpecTaskRow>(`${SELECT} WHERE t.id = $1`, [id]);
    return rows[0] ? toSpecTask(rows[0]) : null;
  }

  /** Tasks oldest first, filtered by project and/or by the project's owner. */
  async list(filter: { projectId?: string; ownerId?: string } = {}): Promise<SpecTask[]> {
    const { rows } = await this.#db.query<SpecTaskRow>(
      `${SELECT} WHERE ($1::text IS NULL OR t.project_id = $1) AND ($2::text IS NULL OR p.owner_id = $2)
       ORDER BY t.created_at, t.id`,
      [filter.projectId ?? null, filter.ownerId ?? null],
    );
    return rows.map(toSpecTask);
  }

  /**
   * Moves a task to `to`, only from one of `from` (all statuses when omitted); returns whether it
   * moved, so "start planning only from backlog" is one atomic statement.
   */
  async setStatus(id: string, to: SpecTaskStatus, from?: readonly SpecTaskStatus[]): Promise<boolean> {
    const { rowCount } = await this.#db.query(
      `UPDATE spec_tasks SET status = $2, updated_at = $3
       WHERE id = $1 AND ($4::text[] IS NULL OR status = ANY($4::text[]))`,
      [id, to, this.#clock(), from ? [...from] : null],
    );
    return rowCount > 0;
  }

  /**
   * Puts back in `backlog` the tasks in `planning` that no session holds (TASK_HOLDING_SESSION_STATUSES):
   * the one task `taskId`, or every such task last changed before `changedBefore` (the sweeper's
   * bound, so a start committing right now is never undone: its write moves updated_at). Returns
   * the ids it moved.
   */
  async releasePlanning(options: { taskId?: string; changedBefore?: Date } = {}): Promise<string[]> {
    const { rows } = await this.#db.query<{ id: string }>(
      `UPDATE spec_tasks t SET status = 'backlog', updated_at = $1
       WHERE t.status = 'planning' AND ($2::text IS NULL OR t.id = $2)
         AND ($3::timestamptz IS NULL OR t.updated_at < $3)
         AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.spec_task_id = t.id AND s.status = ANY($4::text[]))
       RETURNING t.id`,
      [
        this.#clock(),
        options.taskId ?? null,
        options.changedBefore ?? null,
        [...TASK_HOLDING_SESSION_STATUSES],
      ],
    );
    return rows.map((r) => r.id);
  }
}
