// The embedded driver: PGlite (Postgres compiled to WASM) persisted in a directory, so the control
// plane runs with nothing to install. PGlite is single-connection: its queries and transactions
// run one at a time, which also makes every transaction serializable in practice.
//
// PGlite reports a failed open as "Aborted()" or "failed to initialize": the real cause (a PANIC,
// a permission error) only goes to its stderr. The driver keeps the last lines of that stderr
// (bounded) and puts them in the open error, so an operator reads why, not just that.
// A WebAssembly RuntimeError means the embedded Postgres aborted (a PANIC, e.g. WAL write failure
// on a full disk): every later call fails the same way, so it is reported as unavailable.

import { PGlite, type Transaction } from "@electric-sql/pglite";
import { ensureDir } from "./data-dir.ts";
import { guardedDatabase } from "./guarded-database.ts";
import type { SqlDatabase, SqlExecutor, SqlResult } from "./sql-executor.ts";
import { STORE_ERROR_CODES, StoreError, toStoreError } from "./store-errors.ts";

/** Lines of PGlite's stderr kept for the open error (most recent last). */
const STDERR_LINES_KEPT = 20;

interface PGliteLike {
  query<T>(text: string, params?: unknown[]): Promise<{ rows: T[]; affectedRows?: number }>;
  exec(text: string): Promise<unknown>;
}

// WebAssembly's types are not in this project's lib; its RuntimeError is recognised by name.
const isRuntimeAbort = (err: unknown): boolean => err instanceof Error && err.name === "RuntimeError";
const wrap = (err: unknown): Error => toStoreError(err, isRuntimeAbort);

function executorOf(target: PGliteLike): SqlExecutor {
  return {
    async query<T>(text: string, params: readonly unknown[] = []): Promise<SqlResult<T>> {
      try {
        const result = await target.query<T>(text, [...params]);
        return { rows: result.rows, rowCount: result.affectedRows || result.rows.length };
      } catch (err) {
        throw wrap(err);
      }
    },
    async exec(text: string): Promise<void> {
      try {
        await target.exec(text);
      } catch (err) {
        throw wrap(err);
      }
    },
  };
}

/** The lines of PGlite's stderr that say why it failed (PANIC, FATAL, ERROR, LOG), else the last ones. */
function causeLines(lines: readonly string[]): string {
  const severe = lines.filter((l) => /\b(PANIC|FATAL|ERROR)\b/.test(l));
  return (severe.length > 0 ? severe : lines.slice(-3)).map((l) => l.trim()).join("; ");
}

async function create(dir: string | undefined): Promise<PGlite> {
  const stderr: string[] = [];
  const keep = (text: string): boolean => {
    stderr.push(text);
    if (stderr.length > STDERR_LINES_KEPT) stderr.shift();
    return false;
  };
  try {
    if (dir) await ensureDir(dir, 0o700);
    return await PGlite.create(dir, { onStderr: keep });
  } catch (err) {
    const own = err instanceof Error ? err.message : String(err);
    const printed = causeLines(stderr);
    throw new StoreError(
      STORE_ERROR_CODES.open,
      `cannot open the embedded database in ${dir ?? "memory"}: ${own}${printed ? ` (${printed})` : ""}`,
      { cause: err },
    );
  }
}

/** Opens (creating when needed) the PGlite database in `dir`; `undefined` keeps it in memory. */
export async function openPGlite(dir: string | undefined): Promise<SqlDatabase> {
  const db = await create(dir);
  return guardedDatabase({
    backend: "pglite",
    outer: executorOf(db as unknown as PGliteLike),
    async transaction<T>(fn: (tx: SqlExecutor) => Promise<T>): Promise<T> {
      try {
        return await db.transaction((tx: Transaction) => fn(executorOf(tx as unknown as PGliteLike)));
      } catch (err) {
        throw wrap(err);
      }
    },
    close: () => db.close(),
  });
}
