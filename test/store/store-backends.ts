// Test helper: the two store backends the suite runs on. PGlite in a temp dir, and a throwaway
// database on the Postgres server (REVDIAL_TEST_DATABASE_URL, default 127.0.0.1:5432/test) that is
// dropped afterwards. When no server answers, the Postgres leg reports why it is skipped.

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { silentLogger } from "../../src/common/logger.ts";
import { type Clock, openStore, type Store } from "../../src/store/index.ts";

export const POSTGRES_ADMIN_URL =
  process.env.REVDIAL_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";

/** A backend the suite can open stores on; `dispose` removes everything it made. */
export interface TestBackend {
  name: string;
  open(clock?: Clock): Promise<Store>;
  dispose(): Promise<void>;
}

/** Null when the server answers; otherwise why the Postgres leg is skipped. */
export async function postgresSkipReason(): Promise<string | null> {
  const client = new pg.Client({ connectionString: POSTGRES_ADMIN_URL, connectionTimeoutMillis: 2000 });
  try {
    await client.connect();
    await client.query("SELECT 1");
    return null;
  } catch (err) {
    const reason = `SKIPPED: no Postgres server answers at ${POSTGRES_ADMIN_URL} (${(err as Error).message})`;
    console.log(`# ${reason}`);
    return reason;
  } finally {
    await client.end().catch(() => {});
  }
}

export async function pgliteBackend(): Promise<TestBackend & { dataDir: string }> {
  const dataDir = await mkdtemp(join(tmpdir(), "revdial-store-"));
  return {
    name: "pglite",
    dataDir,
    open: (clock) => openStore({ dataDir, logger: silentLogger(), clock }),
    dispose: () => rm(dataDir, { recursive: true, force: true }),
  };
}

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

export async function postgresBackend(): Promise<TestBackend & { databaseUrl: string }> {
  const database = `revdial_test_${process.pid}_${Math.random().toString(36).slice(2, 10)}`;
  const admin = new pg.Client({ connectionString: POSTGRES_ADMIN_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${database}`);
  await admin.end();
  const databaseUrl = withDatabase(POSTGRES_ADMIN_URL, database);
  return {
    name: "postgres",
    databaseUrl,
    open: (clock) => openStore({ databaseUrl, logger: silentLogger(), clock }),
    async dispose() {
      const client = new pg.Client({ connectionString: POSTGRES_ADMIN_URL });
      await client.connect();
      await client.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
      await client.end();
    },
  };
}

/** A clock tests move by hand. */
export function manualClock(start = new Date("2025-01-01T00:00:00Z")): {
  clock: Clock;
  advance(ms: number): void;
} {
  let now = start.getTime();
  return { clock: () => new Date(now), advance: (ms) => (now += ms) };
}
