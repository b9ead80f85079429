// Data access for users: the principals that own projects and sessions.

import type { Clock } from "./clock.ts";
import { newId } from "./ids.ts";
import type { SqlExecutor } from "./sql-executor.ts";

export interface User {
  id: string;
  name: string;
  admin: boolean;
  createdAt: Date;
  updatedAt: Date;
}

interface UserRow {
  id: string;
  name: string;
  admin: boolean;
  created_at: Date;
  updated_at: Date;
}

const COLUMNS = "id, name, admin, created_at, updated_at";

function toUser(row: UserRow): User {
  return {
    id: row.id,
    name: row.name,
    admin: row.admin,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

export class UserRepository {
  readonly #db: SqlExecutor;
  readonly #clock: Clock;

  constructor(db: SqlExecutor, clock: Clock) {
    this.#db = db;
    this.#clock = clock;
  }

  /** Creates a user; a taken name fails with RD_ERR_STORE_CONFLICT. */
  async create(input: { name: string; admin?: boolean }): Promise<User> {
    const now = this.#clock();
    const { rows } = await this.#db.query<UserRow>(
      `INSERT INTO users (id, name, admin, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) RETURNING ${COLUMNS}`,
      [newId("user"), input.name, input.admin ?? false, now],
    );
    return toUser(rows[0]);
  }

  async get(id: string): Promise<User | null> {
    const { rows } = await this.#db.query<UserRow>(`SELECT ${COLUMNS} FROM users WHERE id = $1`, [id]);
    return rows[0] ? toUser(rows[0]) : null;
  }

  async getByName(name: string): Promise<User | null> {
    const { rows } = await this.#db.query<UserRow>(`SELECT ${COLUMNS} FROM users WHERE name = $1`, [name]);
    return rows[0] ? toUser(rows[0]) : null;
  }

  async list(): Promise<User[]> {
    const { rows } = await this.#db.query<UserRow>(`SELECT ${COLUMNS} FROM users ORDER BY created_at, id`);
    return rows.map(toUser);
  }

  /** The oldest admin user, if any (the one the first start created). */
  async firstAdmin(): Promise<User | null> {
    const { rows } = await this.#db.query<UserRow>(
      `SELECT ${COLUMNS} FROM users WHERE admin ORDER BY created_at, id LIMIT 1`,
    );
    return rows[0] ? toUser(rows[0]) : null;
  }
}
