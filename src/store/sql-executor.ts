// The one seam between the data-access layer and a database driver. Repositories speak plain
// Postgres SQL to a SqlExecutor; the embedded (PGlite) and server (pg) drivers both implement it,
// so there is one dialect and no branch on the backend above this file.

/** Rows of one statement, and how many rows it returned or changed. */
export interface SqlResult<T> {
  rows: T[];
  rowCount: number;
}

/** Runs statements. Parameters are positional ($1, $2, …); values are Date, Buffer, string, number,
 *  boolean or null (JSON goes in as a string cast with `::jsonb`). */
export interface SqlExecutor {
  query<T>(text: string, params?: readonly unknown[]): Promise<SqlResult<T>>;
  /** Runs a script of several statements without parameters (migrations). */
  exec(text: string): Promise<void>;
}

export type StoreBackend = "pglite" | "postgres";

/** A database: an executor plus transactions and a lifecycle. */
export interface SqlDatabase extends SqlExecutor {
  readonly backend: StoreBackend;
  /**
   * Runs `fn` in one transaction on one connection: COMMIT when it resolves, ROLLBACK when it
   * throws. Statements inside must go through `tx`, never through the database itself (on PGlite a
   * query on the outer handle would wait for the transaction to end: a deadlock).
   */
  transaction<T>(fn: (tx: SqlExecutor) => Promise<T>): Promise<T>;
  /** Closes the database; safe to call twice. */
  close(): Promise<void>;
}
