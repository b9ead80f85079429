// The embedded driver: PGlite (Postgres compiled to WASM) persisted in a directory, so the control
// plane runs with nothing to install. PGlite is single-connection: its queries and transactions
// run one at a time, which also makes every transaction serializable in practice.

import { mkdir } from "node:fs/promises";
import { PGlite, type Transaction } from "@electric-sql/pglite";
import { guardedDatabase } from "./guarded-database.ts";
import type { SqlDatabase, SqlExecutor, SqlResult } from "./sql-executor.ts";
import { STORE_ERROR_CODES, StoreError, toStoreError } from "./store-errors.ts";

interface PGliteLike {
  query<T>(text: string, params?: unknown[]): Promise<{ rows: T[]; affectedRows?: number }>;
  exec(text: string): Promise<unknown>;
}

function executorOf(target: PGliteLike): SqlExecutor {
  return {
    async query<T>(text: string, params: readonly unknown[] = []): Promise<SqlResult<T>> {
      try {
        const result = await target.query<T>(text, [...params]);
        return { rows: result.rows, rowCount: result.affectedRows || result.rows.length };
      } catch (err) {
        throw toStoreError(err);
      }
    },
    async exec(text: string): Promise<void> {
      try {
        await target.exec(text);
      } catch (err) {
        throw toStoreError(err);
      }
    },
  };
}

/** Opens (creating when needed) the PGlite database in `dir`; `undefined` keeps it in memory. */
export async function openPGlite(dir: string | undefined): Promise<SqlDatabase> {
  if (dir) await mkdir(dir, { recursive: true });
  let db: PGlite;
  try {
    db = await PGlite.create(dir);
  } catch (err) {
    throw new StoreError(STORE_ERROR_CODES.open, `cannot open the embedded database in ${dir ?? "memory"}`, {
      cause: err,
    });
  }
  const outer = executorOf(db as unknown as PGliteLike);
  return guardedDatabase({
    backend: "pglite",
    outer,
    async transaction<T>(fn: (tx: SqlExecutor) => Promise<T>): Promise<T> {
      try {
        return await db.transaction((tx: Transaction) => fn(executorOf(tx as unknown as PGliteLike)));
      } catch (err) {
        throw toStoreError(err);
      }
    },
    close: () => db.close(),
  });
}
