// Data access for interactions: the turns of a session's conversation with its agent. A turn is the
// user's message (`content`), the agent's messages in answer (`messages`, by message_id, with their
// text joined in `response`), its state (waiting -> complete | cancelled | error) and the delivery
// of the user's message to the agent (none | queued | sent | acked; migration 003). The agent sync
// hub (src/api/sync-hub.ts) writes them; it serializes the writes of one session, so the
// read-modify-write of a turn's messages here needs no lock of its own.

import type { Clock } from "./clock.ts";
import { newId } from "./ids.ts";
import type { SqlExecutor } from "./sql-executor.ts";

export type InteractionRole = "user" | "assistant" | "system";
export const INTERACTION_STATES = Object.freeze(["waiting", "complete", "error", "cancelled"] as const);
export type InteractionState = (typeof INTERACTION_STATES)[number];
/** Where the user's message is on its way to the agent; `none` for rows that are not sync turns. */
export type InteractionDelivery = "none" | "queued" | "sent" | "acked";

/** One message of the agent's answer. */
export interface AgentMessage {
  messageId: string;
  role: string;
  content: string;
}

export interface Interaction {
  id: string;
  sessionId: string;
  role: InteractionRole;
  content: string;
  state: InteractionState;
  response: string;
  messages: AgentMessage[];
  delivery: InteractionDelivery;
  createdAt: Date;
  updatedAt: Date;
}

interface InteractionRow {
  id: string;
  session_id: string;
  role: InteractionRole;
  content: string;
  state: InteractionState;
  response: string;
  messages: unknown;
  delivery: InteractionDelivery;
  created_at: Date;
  updated_at: Date;
}

const COLUMNS = "id, session_id, role, content, state, response, messages, delivery, created_at, updated_at";

function toMessages(value: unknown): AgentMessage[] {
  const list = typeof value === "string" ? (JSON.parse(value) as unknown) : value;
  if (!Array.isArray(list)) return [];
  return list.map((m: { message_id?: unknown; role?: unknown; content?: unknown }) => ({
    messageId: String(m.message_id ?? ""),
    role: String(m.role ?? "assistant"),
    content: String(m.content ?? ""),
  }));
}

function toInteraction(row: InteractionRow): Interaction {
  return {
    id: row.id,
    sessionId: row.session_id,
    role: row.role,
    content: row.content,
    state: row.state,
    response: row.response,
    messages: toMessages(row.messages),
    delivery: row.delivery,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

function messagesJson(messages: readonly AgentMessage[]): string {
  return JSON.stringify(messages.map((m) => ({ message_id: m.messageId, role: m.role, content: m.content })));
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
    delivery?: InteractionDelivery;
  }): Promise<Interaction> {
    const { rows } = await this.#db.query<InteractionRow>(
      `INSERT INTO interactions (id, session_id, role, content, state, delivery, created_at, updated_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING ${COLUMNS}`,
      [
        newId("interaction"),
        input.sessionId,
        input.role,
        input.content ?? "",
        input.state ?? "waiting",
        input.delivery ?? "none",
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

  /** Waiting turns whose message no agent has confirmed yet (queued or sent), oldest first. */
  async listUndelivered(sessionId: string): Promise<Interaction[]> {
    const { rows } = await this.#db.query<InteractionRow>(
      `SELECT ${COLUMNS} FROM interactions
       WHERE session_id = $1 AND state = 'waiting' AND delivery IN ('queued', 'sent')
       ORDER BY created_at, id`,
      [sessionId],
    );
    return rows.map(toInteraction);
  }

  /** How many waiting turns no agent has confirmed yet (the bound of the queue). */
  async countUndelivered(sessionId: string): Promise<number> {
    const { rows } = await this.#db.query<{ n: number | string }>(
      `SELECT count(*) AS n FROM interactions
       WHERE session_id = $1 AND state = 'waiting' AND delivery IN ('queued', 'sent')`,
      [sessionId],
    );
    return Number(rows[0]?.n ?? 0);
  }

  /** The turn the agent is answering: the oldest waiting one it has been sent; null when none. */
  async currentTurn(sessionId: string): Promise<Interaction | null> {
    const { rows } = await this.#db.query<InteractionRow>(
      `SELECT ${COLUMNS} FROM interactions
       WHERE session_id = $1 AND state = 'waiting' AND delivery IN ('sent', 'acked')
       ORDER BY created_at, id LIMIT 1`,
      [sessionId],
    );
    return rows[0] ? toInteraction(rows[0]) : null;
  }

  /** Moves the delivery forward (queued -> sent -> acked), never back; the row, or null if unchanged. */
  async advanceDelivery(id: string, to: "sent" | "acked"): Promise<Interaction | null> {
    const from = to === "sent" ? ["queued"] : ["queued", "sent"];
    const { rows } = await this.#db.query<InteractionRow>(
      `UPDATE interactions SET delivery = $2, updated_at = $3
       WHERE id = $1 AND delivery = ANY($4::text[]) RETURNING ${COLUMNS}`,
      [id, to, this.#clock(), from],
    );
    return rows[0] ? toInteraction(rows[0]) : null;
  }

  /** Replaces the agent's messages (and the joined response) of a waiting turn; null if not waiting. */
  async setMessages(
    id: string,
    messages: readonly AgentMessage[],
    response: string,
  ): Promise<Interaction | null> {
    const { rows } = await this.#db.query<InteractionRow>(
      `UPDATE interactions SET messages = $2::jsonb, response = $3, updated_at = $4
       WHERE id = $1 AND state = 'waiting' RETURNING ${COLUMNS}`,
      [id, messagesJson(messages), response, this.#clock()],
    );
    return rows[0] ? toInteraction(rows[0]) : null;
  }

  /** Sets the state when the row is in one of `from`; the row, or null when it was not. */
  async setState(
    id: string,
    state: InteractionState,
    from: readonly InteractionState[],
  ): Promise<Interaction | null> {
    const { rows } = await this.#db.query<InteractionRow>(
      `UPDATE interactions SET state = $2, updated_at = $3
       WHERE id = $1 AND state = ANY($4::text[]) RETURNING ${COLUMNS}`,
      [id, state, this.#clock(), [...from]],
    );
    return rows[0] ? toInteraction(rows[0]) : null;
  }
}
