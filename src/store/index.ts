// The control plane's store: users, API keys, projects, spec tasks, sessions, interactions and
// sandbox hosts, in Postgres. openStore() picks the backend (embedded PGlite persisted in the data
// dir by default, a Postgres server when databaseUrl is given), runs pending migrations, and hands
// back one repository per table group. Everything above this folder sees only the Store type.

import { join } from "node:path";
import { InvalidOptionError } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";
import { ApiKeyRepository } from "./api-keys.ts";
import { type Clock, systemClock } from "./clock.ts";
import { InteractionRepository } from "./interactions.ts";
import { migrate } from "./migrate.ts";
import { openPostgres } from "./pg-driver.ts";
import { openPGlite } from "./pglite-driver.ts";
import { ProjectRepository } from "./projects.ts";
import { SessionRepository } from "./sessions.ts";
import { SpecTaskRepository } from "./spec-tasks.ts";
import type { SqlDatabase, SqlExecutor, StoreBackend } from "./sql-executor.ts";
import { STORE_ERROR_CODES, StoreError } from "./store-errors.ts";
import { UserRepository } from "./users.ts";
import { WolfInstanceRepository } from "./wolf-instances.ts";

export * from "./api-keys.ts";
export type { Clock } from "./clock.ts";
export {
  type DataDirLock,
  ensureDir,
  LOCK_FILE_NAME,
  lockDataDir,
  PRIVATE_DIR_MODE,
  PRIVATE_FILE_MODE,
  secureTree,
} from "./data-dir.ts";
export { isSessionId, newId, SESSION_ID_PATTERN } from "./ids.ts";
export * from "./interactions.ts";
export * from "./projects.ts";
export * from "./sessions.ts";
export * from "./spec-tasks.ts";
export type { StoreBackend } from "./sql-executor.ts";
export {
  DATA_DIR_ERROR_CODES,
  DataDirError,
  isStoreOutage,
  STORE_ERROR_CODES,
  StoreError,
} from "./store-errors.ts";
export * from "./users.ts";
export * from "./wolf-instances.ts";

export interface StoreOptions {
  /** Data directory; the embedded database lives in `${dataDir}/pg`. In memory when neither this nor databaseUrl is set. */
  dataDir?: string;
  /** `postgres://…` or `postgresql://…`: use that server instead of the embedded database. */
  databaseUrl?: string;
  logger: Logger;
  /** Source of every timestamp the store writes (default: the system clock). */
  clock?: Clock;
  /** Pool size for a Postgres server (default 10; unused for the embedded database). */
  maxConnections?: number;
  /** Postgres: deadline to open a connection or get one from the pool (default 5 s). */
  connectTimeoutMs?: number;
  /** Postgres: deadline of one statement, enforced by the server and the client (default 10 s). */
  statementTimeoutMs?: number;
  /** Postgres: an idle pooled connection is closed after this long (default 30 s). */
  idleTimeoutMs?: number;
}

const DEFAULTS = Object.freeze({
  maxConnections: 10,
  connectTimeoutMs: 5000,
  statementTimeoutMs: 10_000,
  idleTimeoutMs: 30_000,
});

/** The repositories, bound to the database or to one transaction. */
export interface Repositories {
  users: UserRepository;
  apiKeys: ApiKeyRepository;
  projects: ProjectRepository;
  specTasks: SpecTaskRepository;
  sessions: SessionRepository;
  interactions: InteractionRepository;
  wolfInstances: WolfInstanceRepository;
}

export interface Store extends Repositories {
  readonly backend: StoreBackend;
  /** Runs `fn` with repositories bound to one transaction: all of its writes commit or none do. */
  transaction<T>(fn: (tx: Repositories) => Promise<T>): Promise<T>;
  /**
   * Checks that the database answers (`SELECT 1`) within `timeoutMs`; throws
   * RD_ERR_STORE_UNAVAILABLE when it does not. For readiness probes.
   */
  ping(timeoutMs: number): Promise<void>;
  /** Closes the database; safe to call twice. */
  close(): Promise<void>;
}

function repositories(db: SqlExecutor, clock: Clock, database: SqlDatabase | null): Repositories {
  return {
    users: new UserRepository(db, clock),
    apiKeys: new ApiKeyRepository(db, clock),
    projects: new ProjectRepository(db, clock),
    specTasks: new SpecTaskRepository(db, clock),
    sessions: new SessionRepository(db, clock),
    interactions: new InteractionRepository(db, clock),
    wolfInstances: new WolfInstanceRepository(db, clock, database),
  };
}

function validate(options: StoreOptions): void {
  if (!options || typeof options !== "object")
    throw new InvalidOptionError("store options", "must be an object");
  if (!options.logger) throw new InvalidOptionError("logger", "is required");
  const url = options.databaseUrl;
  if (url !== undefined && !/^postgres(ql)?:\/\//.test(url)) {
    throw new InvalidOptionError("databaseUrl", "must start with postgres:// or postgresql://");
  }
  for (const name of ["maxConnections", "connectTimeoutMs", "statementTimeoutMs", "idleTimeoutMs"] as const) {
    const value = options[name];
    if (value !== undefined && (!Number.isInteger(value) || value < 1)) {
      throw new InvalidOptionError(name, "must be a positive integer");
    }
  }
}

async function openDatabase(options: StoreOptions): Promise<SqlDatabase> {
  if (options.databaseUrl) {
    return openPostgres({
      connectionString: options.databaseUrl,
      maxConnections: options.maxConnections ?? DEFAULTS.maxConnections,
      connectTimeoutMs: options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs,
      statementTimeoutMs: options.statementTimeoutMs ?? DEFAULTS.statementTimeoutMs,
      idleTimeoutMs: options.idleTimeoutMs ?? DEFAULTS.idleTimeoutMs,
    });
  }
  return openPGlite(options.dataDir ? join(options.dataDir, "pg") : undefined);
}

/** `SELECT 1` within `timeoutMs`, else RD_ERR_STORE_UNAVAILABLE (the query is left to its own timeouts). */
async function ping(db: SqlDatabase, timeoutMs: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new StoreError(STORE_ERROR_CODES.unavailable, `store: no answer to a ping within ${timeoutMs} ms`),
        ),
      timeoutMs,
    );
  });
  try {
    await Promise.race([db.query("SELECT 1"), deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** Opens the store and brings its schema up to date. */
export async function openStore(options: StoreOptions): Promise<Store> {
  validate(options);
  const clock = options.clock ?? systemClock;
  const db = await openDatabase(options);
  try {
    await migrate(db, options.logger);
  } catch (err) {
    await db.close();
    throw err;
  }
  options.logger.debug({ backend: db.backend }, "store open");
  return {
    backend: db.backend,
    ...repositories(db, clock, db),
    transaction: (fn) => db.transaction((tx) => fn(repositories(tx, clock, null))),
    ping: (timeoutMs) => ping(db, timeoutMs),
    close: () => db.close(),
  };
}
