// Data access for interactions: the messages of a session's conversation with its agent (the
// external-agents sync channel writes them).

import type { Clock } from "./clock.ts";
import { newId } from "./ids.ts";
import type { SqlExecutor } from "./sql-executor.ts";

export type InteractionRole = "user" | "assistant" | "system";
export type InteractionState = "waiting" | "complete" | "error";

export interface Interaction {
  id: string;
  sessionId: string;
  role: InteractionRole;
  content: string;
  state: InteractionState;
  createdAt: Date;
  updatedAt: Date;
}

interface InteractionRow {
  id: string;
  session_id: string;
  role: InteractionRole;
  content: string;
  state: InteractionState;
  created_at: Date;
  updated_at: Date;
}

const COLUMNS = "id, session_id, role, content, state, created_at, updated_at";

function toInteraction(row: InteractionRow): Interaction {
  return {
    id: row.id,
    sessionId: row.session_id,
    role: row.role,
    content: row.content,
    state: row.state,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

export class InteractionRepository {
  readonly #db: SqlExecutor;
  readonly #clock: Clock;

  constructor(db: SqlExecutor, clock: Clock) {
    this.#db = db;
    this.#clock = clock;
  }

  async create(input: {
    sessionId: string;
    role: InteractionRole;
    content?: string;
    state?: InteractionState;
  }): Promise<Interaction> {
    const { rows } = await this.#db.query<InteractionRow>(
      `INSERT INTO interactions (id, session_id, role, content, state, created_at, updated_at)
       VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING ${COLUMNS}`,
      [
        newId("interaction"),
        input.sessionId,
        input.role,
        input.content ?? "",
        input.state ?? "waiting",
        this.#clock(),
      ],
    );
    return toInteraction(rows[0]);
  }

  async get(id: string): Promise<Interaction | null> {
    const { rows } = await this.#db.query<InteractionRow>(
      `SELECT ${COLUMNS} FROM interactions WHERE id = $1`,
      [id],
    );
    return rows[0] ? toInteraction(rows[0]) : null;
  }

  /** A session's interactions, oldest first. */
  async list(sessionId: string): Promise<Interaction[]> {
    const { rows } = await this.#db.query<InteractionRow>(
      `SELECT ${COLUMNS} FROM interactions WHERE session_id = $1 ORDER BY created_at, id`,
      [sessionId],
    );
    return rows.map(toInteraction);
  }

  /** Appends to or replaces the content and/or sets the state; returns the row or null. */
  async update(
    id: string,
    change: { content?: string; append?: string; state?: InteractionState },
  ): Promise<Interaction | null> {
    const { rows } = await this.#db.query<InteractionRow>(
      `UPDATE interactions
       SET content = COALESCE($2, content) || COALESCE($3, ''), state = COALESCE($4, state), updated_at = $5
       WHERE id = $1 RETURNING ${COLUMNS}`,
      [id, change.content ?? null, change.append ?? null, change.state ?? null, this.#clock()],
    );
    return rows[0] ? toInteraction(rows[0]) : null;
  }
}
