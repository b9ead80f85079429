// The store's errors. Every failure below the data-access layer leaves as a StoreError with a stable
// code, so the API maps it to a status in one table and nobody matches on a driver's message text.
// The drivers classify what only they can recognise (pg's connection errors carry no code) and hand
// the verdict to toStoreError(); everything else is classified here, by SQLSTATE or errno.
//
// A StoreError's message is for the log: it may name an address, a file or a SQL state. The API
// never shows it to a client (src/api/http-errors.ts answers 5xx store errors with a fixed text).

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
  /**
   * The database cannot be reached or did not answer in time: connection refused, reset or timed
   * out, the pool had no free connection within its deadline, a statement timeout, a server
   * shutting down, an embedded database that crashed. Transient from the caller's side: retry.
   */
  unavailable: "RD_ERR_STORE_UNAVAILABLE",
  /** The disk under the database is full (ENOSPC, EDQUOT, Postgres 53100). */
  full: "RD_ERR_STORE_FULL",
});

/** The data directory's own failures, raised before the store is touched. */
export const DATA_DIR_ERROR_CODES = Object.freeze({
  /** Another live process holds the data dir's lock. */
  locked: "RD_ERR_DATA_DIR_LOCKED",
  /** The data dir cannot be created, is not a directory, or does not accept files (e.g. /proc). */
  unusable: "RD_ERR_DATA_DIR_UNUSABLE",
});

export class StoreError extends RevdialError {}

/** A data dir that is locked by another process or cannot hold the store. */
export class DataDirError extends RevdialError {}

const CODE_BY_SQLSTATE: Readonly<Record<string, string>> = Object.freeze({
  "23505": STORE_ERROR_CODES.conflict,
  "23503": STORE_ERROR_CODES.foreignKey,
  "53100": STORE_ERROR_CODES.full,
  // out of memory, too many connections, insufficient resources
  "53000": STORE_ERROR_CODES.unavailable,
  "53200": STORE_ERROR_CODES.unavailable,
  "53300": STORE_ERROR_CODES.unavailable,
  // statement_timeout (query_canceled), server shutting down or starting
  "57014": STORE_ERROR_CODES.unavailable,
  "57P01": STORE_ERROR_CODES.unavailable,
  "57P02": STORE_ERROR_CODES.unavailable,
  "57P03": STORE_ERROR_CODES.unavailable,
});

/** SQLSTATE class 08: connection exceptions. */
const CONNECTION_EXCEPTION_CLASS = "08";

const CODE_BY_ERRNO: Readonly<Record<string, string>> = Object.freeze({
  ENOSPC: STORE_ERROR_CODES.full,
  EDQUOT: STORE_ERROR_CODES.full,
  ECONNREFUSED: STORE_ERROR_CODES.unavailable,
  ECONNRESET: STORE_ERROR_CODES.unavailable,
  ECONNABORTED: STORE_ERROR_CODES.unavailable,
  ETIMEDOUT: STORE_ERROR_CODES.unavailable,
  EPIPE: STORE_ERROR_CODES.unavailable,
  EHOSTUNREACH: STORE_ERROR_CODES.unavailable,
  ENETUNREACH: STORE_ERROR_CODES.unavailable,
  ENOTFOUND: STORE_ERROR_CODES.unavailable,
  EAI_AGAIN: STORE_ERROR_CODES.unavailable,
});

/** The stable code for a driver error: by SQLSTATE (both drivers carry it in `code`), else errno. */
function codeOf(err: unknown): string {
  const code = (err as { code?: unknown })?.code;
  if (typeof code !== "string") return STORE_ERROR_CODES.query;
  if (/^[0-9A-Z]{5}$/.test(code)) {
    if (code.startsWith(CONNECTION_EXCEPTION_CLASS)) return STORE_ERROR_CODES.unavailable;
    return CODE_BY_SQLSTATE[code] ?? STORE_ERROR_CODES.query;
  }
  return CODE_BY_ERRNO[code] ?? STORE_ERROR_CODES.query;
}

/**
 * Wraps a driver error into a StoreError. `unavailable` is the driver's verdict for failures it
 * alone recognises (pg's "Connection terminated", a crashed WASM runtime): they become
 * RD_ERR_STORE_UNAVAILABLE. Errors that are already a RevdialError pass through unchanged, so an
 * ApiError thrown inside a transaction keeps its status.
 */
export function toStoreError(err: unknown, unavailable?: (err: unknown) => boolean): Error {
  if (err instanceof RevdialError) return err;
  const code = unavailable?.(err) ? STORE_ERROR_CODES.unavailable : codeOf(err);
  const detail = err instanceof Error ? err.message : String(err);
  return new StoreError(code, `store: ${detail}`, { cause: err });
}

/** True for the codes that say "the database, not the request, is at fault; retry later". */
export function isStoreOutage(err: unknown): boolean {
  const code = (err as { code?: unknown })?.code;
  return code === STORE_ERROR_CODES.unavailable || code === STORE_ERROR_CODES.full;
}
