// The store's errors. Every failure below the data-access layer leaves as a StoreError with a stable
// code, so the API maps it to a status in one table and nobody matches on a driver's message text.

import { RevdialError } from "../common/errors.ts";

export const STORE_ERROR_CODES = Object.freeze({
  /** A unique key already holds that value (Postgres 23505). */
  conflict: "RD_ERR_STORE_CONFLICT",
  /** A row refers to another that does not exist (Postgres 23503). */
  foreignKey: "RD_ERR_STORE_FOREIGN_KEY",
  /** The store was used after close(). */
  closed: "RD_ERR_STORE_CLOSED",
  /** Opening the database or running a migration failed. */
  open: "RD_ERR_STORE_OPEN",
  /** Any other query failure. */
  query: "RD_ERR_STORE_QUERY",
});

export class StoreError extends RevdialError {}

const CODE_BY_SQLSTATE: Readonly<Record<string, string>> = Object.freeze({
  "23505": STORE_ERROR_CODES.conflict,
  "23503": STORE_ERROR_CODES.foreignKey,
});

/** Wraps a driver error (PGlite or pg, both carry the SQLSTATE in `code`) into a StoreError. */
export function toStoreError(err: unknown): StoreError {
  if (err instanceof StoreError) return err;
  const sqlState = (err as { code?: unknown })?.code;
  const code =
    typeof sqlState === "string"
      ? (CODE_BY_SQLSTATE[sqlState] ?? STORE_ERROR_CODES.query)
      : STORE_ERROR_CODES.query;
  const detail = err instanceof Error ? err.message : String(err);
  return new StoreError(code, `store: ${detail}`, { cause: err });
}
