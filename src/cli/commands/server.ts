// `revdial server`: runs the control plane until SIGTERM/SIGINT, then drains and exits 0. With
// --tls-cert/--tls-key it serves HTTPS and WSS on the same listener and reloads the pair on SIGHUP.
// With --with-local-host it also runs the sandbox host `local` in this process: the host record is
// created if missing and a fresh host key is minted for it on every start (the previous ones are
// revoked) and handed over in memory, never on a command line or in a file.
// No runner token exists unless the operator gives one (--runner-token-file, env
// REVDIAL_RUNNER_TOKEN, or --runner-token, which warns: other local users can read it).

import type { Command } from "commander";
import type { RunningServer } from "../../api/server.ts";
import type { SecureContextTarget } from "../../api/tls-reloader.ts";
import { hasCode } from "../../common/errors.ts";
import { createLogger, type Logger } from "../../common/logger.ts";
import { STORE_ERROR_CODES } from "../../store/store-errors.ts";
import { CliUsageError, durationOption, env, logLevelOption, sizeOption } from "../env.ts";
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
  bodyLimit: string;
  publicUrl?: string;
  logLevel: string;
  tlsCert?: string;
  tlsKey?: string;
  withLocalHost?: boolean;
}

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
      "--database-url <url>",
      "a Postgres server instead of the embedded store (env DATABASE_URL)",
      env("DATABASE_URL"),
    )
    .option(
      "--body-limit <size>",
      "largest proxied request body (env REVDIAL_BODY_LIMIT)",
      env("REVDIAL_BODY_LIMIT") ?? "256MiB",
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
      "--log-level <level>",
      "fatal|error|warn|info|debug|trace (env REVDIAL_LOG_LEVEL)",
      env("REVDIAL_LOG_LEVEL") ?? "info",
    )
    .action(async (flags: ServerFlags) => {
      const logger = createLogger({ level: logLevelOption(flags.logLevel), name: "revdial-server" });
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
      // Loaded here so that agents and client commands do not pay for the server's modules.
      const { startServer } = await import("../../api/server.ts");
      const server = await startServer({
        listen: flags.listen,
        dataDir: flags.dataDir,
        runnerToken: runnerToken ?? null,
        quotas,
        databaseUrl: flags.databaseUrl,
        gracePeriodMs: durationOption("--grace-period", flags.gracePeriod),
        bodyLimit: sizeOption("--body-limit", flags.bodyLimit),
        publicUrl: flags.publicUrl,
        https,
        logger,
      });
      // With https set, the listener is an https.Server.
      if (https) await reloadOnSighup(server.app.server as unknown as SecureContextTarget, flags, logger);
      if (server.adminKey) {
        process.stdout.write(
          `admin API key (saved to ${flags.dataDir}/admin.key; shown once): ${server.adminKey}\n`,
        );
      }
      process.stdout.write(`listening on ${server.url}\n`);
      const localHost = flags.withLocalHost ? await startLocalHost(server, logger) : null;
      onShutdownSignal(logger, async () => {
        await localHost?.close();
        await server.close();
      });
    });
}

/** The local host's id: its tunnel is `wolf-local`. */
const LOCAL_HOST_ID = "local";

/**
 * The sandbox host `local` (process driver), dialing this server like any remote host would, with
 * its own host key: the record is created if missing (an admin action, taken here on the operator's
 * behalf), and a fresh key is minted on each start, revoking the keys of earlier starts.
 */
async function startLocalHost(server: RunningServer, logger: Logger) {
  const { WolfHost } = await import("../../host/wolf-host.ts");
  const token = await mintLocalHostKey(server);
  const host = new WolfHost({
    serverUrl: server.url,
    token,
    id: LOCAL_HOST_ID,
    driver: "process",
    logger,
  });
  await host.start();
  process.stdout.write(`local sandbox host running (wolf-local, process driver, max ${host.maxSandboxes})\n`);
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
