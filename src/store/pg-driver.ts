// The server driver: a pg connection pool to a Postgres server (DATABASE_URL), for deployments
// where several API replicas share one database.

import pg from "pg";
import { guardedDatabase } from "./guarded-database.ts";
import type { SqlDatabase, SqlExecutor, SqlResult } from "./sql-executor.ts";
import { STORE_ERROR_CODES, StoreError, toStoreError } from "./store-errors.ts";

export interface PgDriverOptions {
  connectionString: string;
  /** Most connections the pool opens (default 10). */
  maxConnections: number;
}

interface Queryable {
  query(text: string, params?: unknown[]): Promise<{ rows: unknown[]; rowCount: number | null }>;
}

function executorOf(target: Queryable): SqlExecutor {
  return {
    async query<T>(text: string, params: readonly unknown[] = []): Promise<SqlResult<T>> {
      try {
        const result = await target.query(text, [...params]);
        return { rows: result.rows as T[], rowCount: result.rowCount ?? result.rows.length };
      } catch (err) {
        throw toStoreError(err);
      }
    },
    async exec(text: string): Promise<void> {
      try {
        await target.query(text);
      } catch (err) {
        throw toStoreError(err);
      }
    },
  };
}

// bytea arrives as Buffer, timestamptz as Date and jsonb parsed, as with PGlite; only int8 differs
// (a string by default). Counts are cast to int in SQL, so the parsers stay pg's defaults.
export async function openPostgres(options: PgDriverOptions): Promise<SqlDatabase> {
  const pool = new pg.Pool({ connectionString: options.connectionString, max: options.maxConnections });
  // An idle client that loses its server emits 'error' on the pool; without a listener it would crash.
  pool.on("error", () => {});
  try {
    const client = await pool.connect();
    client.release();
  } catch (err) {
    await pool.end().catch(() => {});
    throw new StoreError(
      STORE_ERROR_CODES.open,
      `cannot connect to the database: ${(err as Error).message}`,
      { cause: err },
    );
  }
  const outer = executorOf(pool);
  return guardedDatabase({
    backend: "postgres",
    outer,
    async transaction<T>(fn: (tx: SqlExecutor) => Promise<T>): Promise<T> {
      const client = await pool.connect();
      try {
        await client.query("BEGIN");
        const result = await fn(executorOf(client));
        await client.query("COMMIT");
        return result;
      } catch (err) {
        await client.query("ROLLBACK").catch(() => {});
        throw toStoreError(err);
      } finally {
        client.release();
      }
    },
    close: () => pool.end(),
  });
}
