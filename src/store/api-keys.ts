// Data access for API keys. Only the SHA-256 hash of a key is stored (plus a short prefix for
// display); a key is looked up by its hash and arrives with its user, in one query. A host key
// (scope `host`) is bound to one host (host_id) and is deleted with the host's record.

import type { Clock } from "./clock.ts";
import { newId } from "./ids.ts";
import type { SqlExecutor } from "./sql-executor.ts";
import type { User } from "./users.ts";

export const KEY_SCOPES = Object.freeze(["user", "session", "runner", "host"] as const);
export type KeyScope = (typeof KEY_SCOPES)[number];
export const KEY_ACCESS = Object.freeze(["read", "write"] as const);
export type KeyAccess = (typeof KEY_ACCESS)[number];

export interface ApiKey {
  id: string;
  userId: string;
  keyPrefix: string;
  name: string;
  scope: KeyScope;
  access: KeyAccess;
  sessionId: string | null;
  /** The one host a host key speaks for; null for every other scope. */
  hostId: string | null;
  createdAt: Date;
  lastUsedAt: Date | null;
  expiresAt: Date | null;
}

export interface NewApiKey {
  userId: string;
  /** Hex SHA-256 of the full key. */
  keyHash: string;
  keyPrefix: string;
  name?: string;
  scope: KeyScope;
  access: KeyAccess;
  sessionId?: string | null;
  hostId?: string | null;
  expiresAt?: Date | null;
}

interface ApiKeyRow {
  id: string;
  user_id: string;
  key_prefix: string;
  name: string;
  scope: KeyScope;
  access: KeyAccess;
  session_id: string | null;
  host_id: string | null;
  created_at: Date;
  last_used_at: Date | null;
  expires_at: Date | null;
}

interface KeyWithUserRow extends ApiKeyRow {
  user_name: string;
  user_admin: boolean;
  user_created_at: Date;
  user_updated_at: Date;
}

const COLUMNS =
  "k.id, k.user_id, k.key_prefix, k.name, k.scope, k.access, k.session_id, k.host_id, k.created_at, k.last_used_at, k.expires_at";

function toApiKey(row: ApiKeyRow): ApiKey {
  return {
    id: row.id,
    userId: row.user_id,
    keyPrefix: row.key_prefix,
    name: row.name,
    scope: row.scope,
    access: row.access,
    sessionId: row.session_id,
    hostId: row.host_id,
    createdAt: row.created_at,
    lastUsedAt: row.last_used_at,
    expiresAt: row.expires_at,
  };
}

export class ApiKeyRepository {
  readonly #db: SqlExecutor;
  readonly #clock: Clock;

  constructor(db: SqlExecutor, clock: Clock) {
    this.#db = db;
    this.#clock = clock;
  }

  async create(input: NewApiKey): Promise<ApiKey> {
    const { rows } = await this.#db.query<ApiKeyRow>(
      `INSERT INTO api_keys AS k (id, user_id, key_hash, key_prefix, name, scope, access, session_id, host_id, created_at, expires_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING ${COLUMNS}`,
      [
        newId("apiKey"),
        input.userId,
        input.keyHash,
        input.keyPrefix,
        input.name ?? "",
        input.scope,
        input.access,
        input.sessionId ?? null,
        input.hostId ?? null,
        this.#clock(),
        input.expiresAt ?? null,
      ],
    );
    return toApiKey(rows[0]);
  }

  /** The key with this hash and its user, or null. Expiry is the caller's to judge. */
  async findByHash(keyHash: string): Promise<{ key: ApiKey; user: User } | null> {
    const { rows } = await this.#db.query<KeyWithUserRow>(
      `SELECT ${COLUMNS}, u.name AS user_name, u.admin AS user_admin,
              u.created_at AS user_created_at, u.updated_at AS user_updated_at
       FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = $1`,
      [keyHash],
    );
    const row = rows[0];
    if (!row) return null;
    const user: User = {
      id: row.user_id,
      name: row.user_name,
      admin: row.user_admin,
      createdAt: row.user_created_at,
      updatedAt: row.user_updated_at,
    };
    return { key: toApiKey(row), user };
  }

  async touch(id: string, at: Date = this.#clock()): Promise<void> {
    await this.#db.query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1", [id, at]);
  }

  async listForUser(userId: string): Promise<ApiKey[]> {
    const { rows } = await this.#db.query<ApiKeyRow>(
      `SELECT ${COLUMNS} FROM api_keys k WHERE k.user_id = $1 ORDER BY k.created_at, k.id`,
      [userId],
    );
    return rows.map(toApiKey);
  }

  /** Deletes a key; true when it existed. */
  async revoke(id: string): Promise<boolean> {
    const { rowCount } = await this.#db.query("DELETE FROM api_keys WHERE id = $1", [id]);
    return rowCount > 0;
  }

  /** Deletes the session-scoped keys of a session (when it stops); returns how many. */
  async revokeForSession(sessionId: string): Promise<number> {
    const { rowCount } = await this.#db.query("DELETE FROM api_keys WHERE session_id = $1", [sessionId]);
    return rowCount;
  }

  /** Deletes every key of a host (rotation, revocation); returns how many. */
  async revokeForHost(hostId: string): Promise<number> {
    const { rowCount } = await this.#db.query("DELETE FROM api_keys WHERE host_id = $1", [hostId]);
    return rowCount;
  }
}
