// The server driver: a pg connection pool to a Postgres server (DATABASE_URL), for deployments
// where several API replicas share one database.
//
// Every wait on the server is bounded, so an outage turns into a fast RD_ERR_STORE_UNAVAILABLE
// instead of a request that hangs and commits minutes after its client gave up:
// - connectTimeoutMs bounds a new connection AND the wait for a free one in the pool (pg-pool uses
//   one setting for both);
// - statementTimeoutMs is sent to the server as statement_timeout and
//   idle_in_transaction_session_timeout (the server cancels or rolls back on its own), and also
//   bounds each query on the client (query_timeout, plus a margin so the server's clean error wins
//   when the server is the slow part). A query that times out on the client destroys its
//   connection, so the server rolls back whatever that connection had open;
// - TCP keep-alive finds a peer that vanished while a connection sat idle.

import pg from "pg";
import { guardedDatabase } from "./guarded-database.ts";
import type { SqlDatabase, SqlExecutor, SqlResult } from "./sql-executor.ts";
import { STORE_ERROR_CODES, StoreError, toStoreError } from "./store-errors.ts";

export interface PgDriverOptions {
  connectionString: string;
  /** Most connections the pool opens (default 10). */
  maxConnections: number;
  /** Deadline to open a connection or get one from the pool (default 5 s). */
  connectTimeoutMs: number;
  /** Deadline of one statement, on the server and on the client (default 10 s). */
  statementTimeoutMs: number;
  /** An idle pooled connection is closed after this long (default 30 s). */
  idleTimeoutMs: number;
}

/** How much longer the client waits than the server's own statement_timeout. */
const CLIENT_TIMEOUT_MARGIN_MS = 1000;
/**
 * close() waits this long for the pool to end. Ending a connection waits for the server's side of
 * the close, which a frozen server never sends: a shutdown must not hang on it.
 */
const CLOSE_DEADLINE_MS = 2000;

function endWithin(pool: pg.Pool, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
    timer.unref();
  });
  return Promise.race([pool.end().catch(() => {}), deadline]).finally(() => clearTimeout(timer));
}

/**
 * pg's own failures of the connection carry no code, only a message; they are matched here, in the
 * one file that knows pg, and nowhere else.
 */
const PG_CONNECTION_FAILURES = [
  /^Connection terminated/,
  /^timeout exceeded when trying to connect/,
  /^Query read timeout/,
  /is not queryable/,
  /^Client was closed and is not queryable/,
  /^Cannot use a pool after calling end/,
];

function isConnectionFailure(err: unknown): boolean {
  if (!(err instanceof Error) || err instanceof pg.DatabaseError) return false;
  return PG_CONNECTION_FAILURES.some((re) => re.test(err.message));
}

const wrap = (err: unknown): Error => toStoreError(err, isConnectionFailure);

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
        throw wrap(err);
      }
    },
    async exec(text: string): Promise<void> {
      try {
        await target.query(text);
      } catch (err) {
        throw wrap(err);
      }
    },
  };
}

function newPool(options: PgDriverOptions): pg.Pool {
  return new pg.Pool({
    connectionString: options.connectionString,
    max: options.maxConnections,
    connectionTimeoutMillis: options.connectTimeoutMs,
    idleTimeoutMillis: options.idleTimeoutMs,
    statement_timeout: options.statementTimeoutMs,
    idle_in_transaction_session_timeout: options.statementTimeoutMs,
    query_timeout: options.statementTimeoutMs + CLIENT_TIMEOUT_MARGIN_MS,
    keepAlive: true,
  });
}

async function runTransaction<T>(pool: pg.Pool, fn: (tx: SqlExecutor) => Promise<T>): Promise<T> {
  let client: pg.PoolClient;
  try {
    client = await pool.connect();
  } catch (err) {
    throw wrap(err);
  }
  let broken: Error | undefined;
  try {
    await client.query("BEGIN");
    const result = await fn(executorOf(client));
    await client.query("COMMIT");
    return result;
  } catch (err) {
    const wrapped = wrap(err);
    // A connection that failed is destroyed, not rolled back: ROLLBACK would wait on a dead peer,
    // and closing it makes the server roll back by itself.
    if (isConnectionFailure((wrapped as { cause?: unknown }).cause)) broken = wrapped;
    else await client.query("ROLLBACK").catch((e: Error) => (broken = e));
    throw wrapped;
  } finally {
    client.release(broken);
  }
}

// bytea arrives as Buffer, timestamptz as Date and jsonb parsed, as with PGlite; only int8 differs
// (a string by default). Counts are cast to int in SQL, so the parsers stay pg's defaults.
export async function openPostgres(options: PgDriverOptions): Promise<SqlDatabase> {
  const pool = newPool(options);
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
      {
        cause: err,
      },
    );
  }
  return guardedDatabase({
    backend: "postgres",
    outer: executorOf(pool),
    transaction: (fn) => runTransaction(pool, fn),
    close: () => endWithin(pool, CLOSE_DEADLINE_MS),
  });
}
