// `revdial server`: runs the control plane until SIGTERM/SIGINT, then drains (new tunnels refused,
// GOAWAY to every tunnel, calls in flight finish within --drain-timeout) and exits 0. With
// --tls-cert/--tls-key it serves HTTPS and WSS on the same listener and reloads the pair on SIGHUP.
// With --with-local-host it also runs the sandbox host `local` in this process: the host record is
// created if missing and a fresh host key is minted for it on every start (the previous ones are
// revoked) and handed over in memory, never on a command line or in a file.
// No runner token exists unless the operator gives one (--runner-token-file, env
// REVDIAL_RUNNER_TOKEN, or --runner-token, which warns: other local users can read it).

import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Command } from "commander";
import type { RunningServer } from "../../api/server.ts";
import type { SecureContextTarget } from "../../api/tls-reloader.ts";
import { hasCode } from "../../common/errors.ts";
import { createLogger, type Logger } from "../../common/logger.ts";
import { STORE_ERROR_CODES } from "../../store/store-errors.ts";
import {
  CliUsageError,
  durationOption,
  env,
  LOG_FORMAT_OPTION,
  logFormatOption,
  logLevelOption,
  sizeOption,
} from "../env.ts";
import { readSecret } from "../secret-source.ts";
import { onShutdownSignal } from "../signals.ts";

interface ServerFlags {
  listen: string;
  dataDir: string;
  runnerToken?: string;
  runnerTokenFile?: string;
  quotaTunnels: string;
  quotaSessions: string;
  quotaRunning: string;
  quotaCalls: string;
  gracePeriod: string;
  databaseUrl?: string;
  dbConnectTimeout: string;
  dbStatementTimeout: string;
  bodyLimit: string;
  screenshotLimit: string;
  storedScreenshotsPerUser: string;
  publicUrl?: string;
  logLevel: string;
  logFormat?: string;
  tlsCert?: string;
  tlsKey?: string;
  withLocalHost?: boolean;
  drainTimeout: string;
  admissionRate: string;
  admissionBurst?: string;
  replicaId?: string;
  advertise?: string;
  peerSecretFile?: string;
  peerListen?: string;
  sweepInterval: string;
  hostOfflineAfter: string;
}

/** Longer than the drain by this much, a shutdown is stuck: the process exits 1. */
const SHUTDOWN_SLACK_MS = 10_000;

export function register(program: Command): void {
  program
    .command("server")
    .description("run the control plane (API + tunnel endpoint) on the embedded store or Postgres")
    .option(
      "--listen <host:port>",
      "address to listen on (env REVDIAL_LISTEN)",
      env("REVDIAL_LISTEN") ?? "127.0.0.1:8080",
    )
    .option(
      "--data-dir <dir>",
      "embedded database and admin.key (env REVDIAL_DATA_DIR)",
      env("REVDIAL_DATA_DIR") ?? "./data",
    )
    .option(
      "--runner-token-file <file>",
      "accept the seed's shared runner token, read from FILE, for hosts an admin created (env REVDIAL_RUNNER_TOKEN)",
    )
    .option("--runner-token <token>", "as --runner-token-file, but visible to local users: avoid")
    .option(
      "--quota-tunnels <n>",
      "live tunnels per user (env REVDIAL_QUOTA_TUNNELS)",
      quotaDefault("TUNNELS", 100),
    )
    .option(
      "--quota-sessions <n>",
      "sessions not yet stopped per user (env REVDIAL_QUOTA_SESSIONS)",
      quotaDefault("SESSIONS", 200),
    )
    .option(
      "--quota-running <n>",
      "running sessions (host slots) per user (env REVDIAL_QUOTA_RUNNING)",
      quotaDefault("RUNNING", 20),
    )
    .option(
      "--quota-calls <n>",
      "concurrent calls into sandboxes per user (env REVDIAL_QUOTA_CALLS)",
      quotaDefault("CALLS", 64),
    )
    .option(
      "--grace-period <duration>",
      "how long calls wait for a dropped tunnel (env REVDIAL_GRACE_PERIOD)",
      env("REVDIAL_GRACE_PERIOD") ?? "30s",
    )
    .option(
      "--drain-timeout <duration>",
      "on SIGTERM, how long calls in flight may finish before they are cut (env REVDIAL_DRAIN_TIMEOUT)",
      env("REVDIAL_DRAIN_TIMEOUT") ?? "15s",
    )
    .option(
      "--admission-rate <per-second>",
      "new tunnel handshakes admitted per second; past it agents get 429 + Retry-After (env REVDIAL_ADMISSION_RATE)",
      env("REVDIAL_ADMISSION_RATE") ?? "1000",
    )
    .option(
      "--admission-burst <count>",
      "handshakes admitted at once after a quiet period; default 2 x the rate (env REVDIAL_ADMISSION_BURST)",
      env("REVDIAL_ADMISSION_BURST"),
    )
    .option(
      "--database-url <url>",
      "a Postgres server instead of the embedded store (env DATABASE_URL)",
      env("DATABASE_URL"),
    )
    .option(
      "--db-connect-timeout <duration>",
      "Postgres: deadline to connect or get a pooled connection (env REVDIAL_DB_CONNECT_TIMEOUT)",
      env("REVDIAL_DB_CONNECT_TIMEOUT") ?? "5s",
    )
    .option(
      "--db-statement-timeout <duration>",
      "Postgres: deadline of one statement, server and client side (env REVDIAL_DB_STATEMENT_TIMEOUT)",
      env("REVDIAL_DB_STATEMENT_TIMEOUT") ?? "10s",
    )
    .option(
      "--body-limit <size>",
      "largest proxied request body (env REVDIAL_BODY_LIMIT)",
      env("REVDIAL_BODY_LIMIT") ?? "256MiB",
    )
    .option(
      "--screenshot-limit <size>",
      "largest screenshot a sandbox may answer; larger is a 502 (env REVDIAL_SCREENSHOT_LIMIT)",
      env("REVDIAL_SCREENSHOT_LIMIT") ?? "16MiB",
    )
    .option(
      "--stored-screenshots-per-user <size>",
      "stored final screenshots kept per user, oldest dropped first (env REVDIAL_STORED_SCREENSHOTS_PER_USER)",
      env("REVDIAL_STORED_SCREENSHOTS_PER_USER") ?? "64MiB",
    )
    .option(
      "--public-url <url>",
      "URL sandboxes use to reach this server (env REVDIAL_PUBLIC_URL)",
      env("REVDIAL_PUBLIC_URL"),
    )
    .option(
      "--tls-cert <file>",
      "serve HTTPS/WSS with this PEM certificate chain; reloaded on SIGHUP (env REVDIAL_TLS_CERT)",
      env("REVDIAL_TLS_CERT"),
    )
    .option(
      "--tls-key <file>",
      "the certificate's PEM private key (env REVDIAL_TLS_KEY)",
      env("REVDIAL_TLS_KEY"),
    )
    .option(
      "--with-local-host",
      "also run a sandbox host `local` (process driver) in this process, with a host key minted at start",
    )
    .option(
      "--replica-id <id>",
      "run as one replica of a cluster behind a load balancer; needs DATABASE_URL (env REVDIAL_REPLICA_ID; docs/replicas.md)",
      env("REVDIAL_REPLICA_ID"),
    )
    .option(
      "--advertise <url>",
      "replica: the URL other replicas reach this one at, http:// (h2c) or https:// (env REVDIAL_ADVERTISE_URL)",
      env("REVDIAL_ADVERTISE_URL"),
    )
    .option(
      "--peer-secret-file <file>",
      "replica: the secret shared by the replicas for calls between them (or env REVDIAL_PEER_SECRET)",
    )
    .option(
      "--peer-listen <host:port>",
      "replica: where the peer endpoint listens; default the listen host and the advertise URL's port (env REVDIAL_PEER_LISTEN)",
      env("REVDIAL_PEER_LISTEN"),
    )
    .option(
      "--sweep-interval <duration>",
      "how often the lifecycle sweeper and the hosts' offline check run (on a cluster's leader only) (env REVDIAL_SWEEP_INTERVAL)",
      env("REVDIAL_SWEEP_INTERVAL") ?? "15s",
    )
    .option(
      "--host-offline-after <duration>",
      "a host with no heartbeat for this long and no tunnel goes offline (env REVDIAL_HOST_OFFLINE_AFTER)",
      env("REVDIAL_HOST_OFFLINE_AFTER") ?? "90s",
    )
    .option(
      "--log-level <level>",
      "fatal|error|warn|info|debug|trace (env REVDIAL_LOG_LEVEL)",
      env("REVDIAL_LOG_LEVEL") ?? "info",
    )
    .option(...LOG_FORMAT_OPTION, env("REVDIAL_LOG_FORMAT"))
    .action(async (flags: ServerFlags) => {
      try {
        await runServer(flags);
      } catch (err) {
        failStart(err);
      }
    });
}

/** Exit status of a server that could not start. */
const START_FAILED_EXIT = 1;
/** A failed start exits within this long even if some handle is still open. */
const START_FAILED_EXIT_DEADLINE_MS = 1800;

/**
 * A start-up failure: the message once (with its RD_ERR_* code), then exit non-zero. startServer
 * has already closed what it opened; the unref'd timer only fires if something still holds the
 * event loop, so a clean failure exits as soon as the loop drains.
 */
function failStart(err: unknown): void {
  if (err instanceof CliUsageError) throw err;
  const code = (err as { code?: unknown })?.code;
  const prefix = typeof code === "string" && code.startsWith("RD_ERR_") ? `${code}: ` : "";
  process.stderr.write(`Error: ${prefix}${(err as Error)?.message ?? String(err)}\n`);
  process.exitCode = START_FAILED_EXIT;
  setTimeout(() => process.exit(START_FAILED_EXIT), START_FAILED_EXIT_DEADLINE_MS).unref();
}

async function runServer(flags: ServerFlags): Promise<void> {
  // Everything the server writes is its own: the data dir's files, PGlite's WAL segments created
  // while it runs (PGlite applies the process umask to the files it creates later).
  process.umask(0o077);
  const logger = createLogger({
    level: logLevelOption(flags.logLevel),
    format: logFormatOption(flags.logFormat),
    name: "revdial-server",
  });
  const https = await tlsPairFromFlags(flags);
  const runnerToken = await readSecret({
    value: flags.runnerToken,
    file: flags.runnerTokenFile,
    envNames: ["REVDIAL_RUNNER_TOKEN"],
    flag: "--runner-token",
    warn: (message) => logger.warn(message),
  });
  const quotas = {
    tunnels: countOption("--quota-tunnels", flags.quotaTunnels),
    sessions: countOption("--quota-sessions", flags.quotaSessions),
    running: countOption("--quota-running", flags.quotaRunning),
    calls: countOption("--quota-calls", flags.quotaCalls),
  };
  const replica = await replicaFromFlags(flags);
  // Loaded here so that agents and client commands do not pay for the server's modules.
  const { startServer, parseListen } = await import("../../api/server.ts");
  const server = await startServer({
    listen: flags.listen,
    dataDir: flags.dataDir,
    runnerToken: runnerToken ?? null,
    quotas,
    databaseUrl: flags.databaseUrl,
    storeLimits: {
      connectTimeoutMs: durationOption("--db-connect-timeout", flags.dbConnectTimeout),
      statementTimeoutMs: durationOption("--db-statement-timeout", flags.dbStatementTimeout),
    },
    gracePeriodMs: durationOption("--grace-period", flags.gracePeriod),
    drainTimeoutMs: durationOption("--drain-timeout", flags.drainTimeout),
    hostSweepIntervalMs: durationOption("--sweep-interval", flags.sweepInterval),
    lifecycle: { intervalMs: durationOption("--sweep-interval", flags.sweepInterval) },
    hostOfflineAfterMs: durationOption("--host-offline-after", flags.hostOfflineAfter),
    admissionRate: positiveNumber("--admission-rate", flags.admissionRate, false),
    admissionBurst:
      flags.admissionBurst === undefined
        ? undefined
        : positiveNumber("--admission-burst", flags.admissionBurst, true),
    bodyLimit: sizeOption("--body-limit", flags.bodyLimit),
    screenshotLimit: sizeOption("--screenshot-limit", flags.screenshotLimit),
    storedScreenshotsPerUser: sizeOption("--stored-screenshots-per-user", flags.storedScreenshotsPerUser),
    publicUrl: flags.publicUrl,
    https,
    replica: replica && {
      ...replica,
      peerListen: flags.peerListen ? parseListen(flags.peerListen) : undefined,
    },
    logger,
  });
  // The signal handler goes in before "listening on" is printed: a supervisor that stops the
  // server as soon as it reads that line gets a clean drain, not the default SIGTERM death.
  let localHost: Awaited<ReturnType<typeof startLocalHost>> | null = null;
  const drainMs = durationOption("--drain-timeout", flags.drainTimeout);
  onShutdownSignal(
    logger,
    async () => {
      // The local host's sandboxes end with this process: stop their sessions first (final
      // screenshot, lobby stopped, task back to backlog) so none is left running or planning.
      if (localHost) await server.stopSessionsOnHost(localHost.id);
      await localHost?.close();
      await server.close();
    },
    () => 0,
    { deadlineMs: drainMs + SHUTDOWN_SLACK_MS },
  );
  try {
    // With https set, the listener is an https.Server.
    if (https) await reloadOnSighup(server.app.server as unknown as SecureContextTarget, flags, logger);
    if (server.adminKey) {
      process.stdout.write(
        `admin API key (saved to ${flags.dataDir}/admin.key; shown once): ${server.adminKey}\n`,
      );
    }
    process.stdout.write(`listening on ${server.url}\n`);
    if (flags.withLocalHost) localHost = await startLocalHost(server, logger, flags.dataDir);
    process.stdout.write(nextSteps(server.url, flags.dataDir));
  } catch (err) {
    // A failure after listening (the local host refused, say) stops the server too.
    await Promise.race([server.close(), new Promise((r) => setTimeout(r, 1500).unref())]);
    throw err;
  }
}

/**
 * The banner's end: where the admin key is and the command to try next, with the variables it
 * needs when the server is not on the CLI's defaults (http://127.0.0.1:8080, ./data).
 */
export function nextSteps(url: string, dataDir: string, cwd = process.cwd()): string {
  const keyFile = join(dataDir, "admin.key");
  const vars: string[] = [];
  if (url !== "http://127.0.0.1:8080") vars.push(`REVDIAL_URL=${url}`);
  if (resolve(cwd, dataDir) !== resolve(cwd, "data")) vars.push(`REVDIAL_DATA_DIR=${shellWord(dataDir)}`);
  const prefix = vars.length ? `${vars.join(" ")} ` : "";
  return [
    "",
    existsSync(keyFile)
      ? `  admin key   ${keyFile} (revdial commands run here read it; or set REVDIAL_API_KEY)`
      : `  admin key   not in ${keyFile}: set REVDIAL_API_KEY to an admin's key`,
    `  API         ${url}/api/v1 (OpenAPI: ${url}/api/v1/openapi.json)`,
    `  try next    ${prefix}npx revdial project fork modern-todo-app --name "My first project"`,
    `              ${prefix}npx revdial spectask list`,
    "",
    "",
  ].join("\n");
}

function shellWord(text: string): string {
  return /^[A-Za-z0-9_./:=-]+$/.test(text) ? text : `'${text.replaceAll("'", `'\\''`)}'`;
}

/** The local host's id: its tunnel is `wolf-local`. */
const LOCAL_HOST_ID = "local";

/**
 * The sandbox host `local` (process driver), dialing this server like any remote host would, with
 * its own host key: the record is created if missing (an admin action, taken here on the operator's
 * behalf), and a fresh key is minted on each start, revoking the keys of earlier starts. Its
 * isolation is auto with a fallback to the shared user, so `npm start` stays one command for an
 * ordinary user; the banner says which isolation it got. Its state dir is per data dir, so two
 * servers on one machine keep their sandboxes apart.
 */
async function startLocalHost(server: RunningServer, logger: Logger, dataDir: string) {
  const { WolfHost } = await import("../../host/wolf-host.ts");
  const { localHostStateDir } = await import("../../host/host-state.ts");
  const token = await mintLocalHostKey(server);
  const { exampleAgentCommand } = await import("../../agent/example-agent.ts");
  const host = new WolfHost({
    serverUrl: server.url,
    token,
    id: LOCAL_HOST_ID,
    driver: "process",
    isolation: "auto",
    allowSharedFallback: true,
    stateDir: localHostStateDir(dataDir),
    removeStateDirOnClose: true,
    // Each sandbox talks back: the example agent unless REVDIAL_AGENT_COMMAND names another.
    agentCommand: process.env.REVDIAL_AGENT_COMMAND || exampleAgentCommand(),
    logger,
  });
  await host.start();
  process.stdout.write(
    `local sandbox host running (wolf-local, process driver, isolation: ${host.isolation}, max ${host.maxSandboxes})\n`,
  );
  return host;
}

async function mintLocalHostKey(server: RunningServer): Promise<string> {
  const admin = await server.store.users.firstAdmin();
  if (!admin) throw new Error("no admin user: cannot create the local host");
  if (!(await server.store.wolfInstances.get(LOCAL_HOST_ID))) {
    await server.store.wolfInstances.create({ id: LOCAL_HOST_ID, name: LOCAL_HOST_ID }).catch((err) => {
      // Another server on the same database created it first.
      if (!hasCode(err, STORE_ERROR_CODES.conflict)) throw err;
    });
  }
  const { apiKey } = await server.auth.createHostKey(LOCAL_HOST_ID, admin.id, { replace: true });
  return apiKey;
}

/** Replica mode's flags, all or none; the peer secret from a file or the environment only. */
async function replicaFromFlags(
  flags: ServerFlags,
): Promise<{ replicaId: string; advertiseUrl: string; peerSecret: string } | null> {
  const secret = await readSecret({
    file: flags.peerSecretFile,
    envNames: ["REVDIAL_PEER_SECRET"],
    flag: "--peer-secret",
  });
  if (!flags.replicaId && !flags.advertise && !flags.peerSecretFile) return null;
  if (!flags.replicaId) throw new CliUsageError("--advertise and --peer-secret-file need --replica-id");
  if (!flags.advertise)
    throw new CliUsageError("--replica-id needs --advertise URL (env REVDIAL_ADVERTISE_URL)");
  if (!secret)
    throw new CliUsageError(
      "--replica-id needs the peer secret: --peer-secret-file FILE or env REVDIAL_PEER_SECRET",
    );
  return { replicaId: flags.replicaId, advertiseUrl: flags.advertise, peerSecret: secret };
}

function quotaDefault(name: string, fallback: number): string {
  return env(`REVDIAL_QUOTA_${name}`) ?? String(fallback);
}

function countOption(flag: string, text: string): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) throw new CliUsageError(`${flag} must be a positive integer`);
  return value;
}

async function tlsPairFromFlags(flags: ServerFlags): Promise<{ cert: Buffer; key: Buffer } | null> {
  if (!flags.tlsCert && !flags.tlsKey) return null;
  if (!flags.tlsCert || !flags.tlsKey) throw new CliUsageError("--tls-cert and --tls-key go together");
  const { loadTlsPair } = await import("../../api/tls-reloader.ts");
  try {
    const { cert, key } = await loadTlsPair(flags.tlsCert, flags.tlsKey);
    return { cert, key };
  } catch (err) {
    throw new CliUsageError((err as Error).message);
  }
}

async function reloadOnSighup(
  server: SecureContextTarget,
  flags: ServerFlags,
  logger: Logger,
): Promise<void> {
  const { TlsReloader } = await import("../../api/tls-reloader.ts");
  const reloader = new TlsReloader({
    server,
    certFile: flags.tlsCert as string,
    keyFile: flags.tlsKey as string,
    logger,
  });
  process.on("SIGHUP", () => void reloader.reload());
}

function positiveNumber(name: string, text: string, integer: boolean): number {
  const value = Number(text.trim().replace(/\/s$/, ""));
  if (!Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value)))
    throw new CliUsageError(`${name}: expected a ${integer ? "whole " : ""}number > 0, got "${text}"`);
  return value;
}
