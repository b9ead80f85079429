// Runs pending migrations at open. All of them run in ONE transaction under a Postgres advisory
// lock, so two processes starting on the same database apply each migration exactly once: the
// second waits for the lock, then finds the versions already recorded in schema_migrations.

import type { Logger } from "../common/logger.ts";
import { MIGRATIONS, type Migration } from "./migrations/index.ts";
import type { SqlDatabase, SqlExecutor } from "./sql-executor.ts";

/** Advisory lock key for migrations: an arbitrary constant ("rdmigrat" in ASCII, truncated). */
const MIGRATION_LOCK_KEY = 0x72646d69;

async function appliedVersions(tx: SqlExecutor): Promise<Set<number>> {
  await tx.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
  )`);
  const { rows } = await tx.query<{ version: number }>("SELECT version FROM schema_migrations");
  return new Set(rows.map((r) => r.version));
}

/** Applies every migration not yet recorded; returns the versions it applied. */
export async function migrate(
  db: SqlDatabase,
  logger: Logger,
  migrations: readonly Migration[] = MIGRATIONS,
): Promise<number[]> {
  return db.transaction(async (tx) => {
    await tx.query("SELECT pg_advisory_xact_lock($1)", [MIGRATION_LOCK_KEY]);
    const done = await appliedVersions(tx);
    const applied: number[] = [];
    for (const m of [...migrations].sort((a, b) => a.version - b.version)) {
      if (done.has(m.version)) continue;
      await tx.exec(m.sql);
      await tx.query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", [m.version, m.name]);
      logger.info({ version: m.version, migration: m.name }, "store migration applied");
      applied.push(m.version);
    }
    return applied;
  });
}
