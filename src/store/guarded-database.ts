// The lifecycle both drivers share: a SqlDatabase whose every call after close() fails with
// RD_ERR_STORE_CLOSED (instead of a driver-specific crash), and whose close() runs once.

import type { SqlDatabase, SqlExecutor, SqlResult, StoreBackend } from "./sql-executor.ts";
import { STORE_ERROR_CODES, StoreError } from "./store-errors.ts";

export interface DatabaseParts {
  backend: StoreBackend;
  /** Runs statements outside any transaction. */
  outer: SqlExecutor;
  /** The driver's transaction: one connection, COMMIT or ROLLBACK. */
  transaction<T>(fn: (tx: SqlExecutor) => Promise<T>): Promise<T>;
  /** The driver's close, called once. */
  close(): Promise<void>;
}

export function guardedDatabase(parts: DatabaseParts): SqlDatabase {
  let closing: Promise<void> | null = null;
  const guard = (): void => {
    if (closing) throw new StoreError(STORE_ERROR_CODES.closed, "store is closed");
  };
  return {
    backend: parts.backend,
    query<T>(text: string, params?: readonly unknown[]): Promise<SqlResult<T>> {
      guard();
      return parts.outer.query<T>(text, params);
    },
    exec(text: string): Promise<void> {
      guard();
      return parts.outer.exec(text);
    },
    transaction<T>(fn: (tx: SqlExecutor) => Promise<T>): Promise<T> {
      guard();
      return parts.transaction(fn);
    },
    close(): Promise<void> {
      closing ??= parts.close();
      return closing;
    },
  };
}
