// `revdial server`: runs the control plane until SIGTERM/SIGINT, then drains (new tunnels refused,
// GOAWAY to every tunnel, calls in flight finish within --drain-timeout) and exits 0. With
// --tls-cert/--tls-key it serves HTTPS and WSS on the same listener and reloads the pair on SIGHUP.

import type { Command } from "commander";
import type { SecureContextTarget } from "../../api/tls-reloader.ts";
import { createLogger, type Logger } from "../../common/logger.ts";
import { CliUsageError, durationOption, env, logLevelOption, sizeOption } from "../env.ts";
import { onShutdownSignal } from "../signals.ts";

interface ServerFlags {
  listen: string;
  dataDir: string;
  runnerToken?: string;
  gracePeriod: string;
  databaseUrl?: string;
  bodyLimit: string;
  publicUrl?: string;
  logLevel: string;
  tlsCert?: string;
  tlsKey?: string;
  withLocalHost?: boolean;
  drainTimeout: string;
  admissionRate: string;
  admissionBurst?: string;
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
      "embedded database, admin.key, runner.token (env REVDIAL_DATA_DIR)",
      env("REVDIAL_DATA_DIR") ?? "./data",
    )
    .option(
      "--runner-token <token>",
      "secret sandbox hosts register with (env REVDIAL_RUNNER_TOKEN)",
      env("REVDIAL_RUNNER_TOKEN"),
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
      env("REVDIAL_ADMISSION_RATE") ?? "500",
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
      "also run a sandbox host `local` (process driver) in this process, with the runner token",
    )
    .option(
      "--log-level <level>",
      "fatal|error|warn|info|debug|trace (env REVDIAL_LOG_LEVEL)",
      env("REVDIAL_LOG_LEVEL") ?? "info",
    )
    .action(async (flags: ServerFlags) => {
      const logger = createLogger({ level: logLevelOption(flags.logLevel), name: "revdial-server" });
      const https = await tlsPairFromFlags(flags);
      // Loaded here so that agents and client commands do not pay for the server's modules.
      const { startServer } = await import("../../api/server.ts");
      const server = await startServer({
        listen: flags.listen,
        dataDir: flags.dataDir,
        runnerToken: flags.runnerToken,
        databaseUrl: flags.databaseUrl,
        gracePeriodMs: durationOption("--grace-period", flags.gracePeriod),
        drainTimeoutMs: durationOption("--drain-timeout", flags.drainTimeout),
        admissionRate: positiveNumber("--admission-rate", flags.admissionRate, false),
        admissionBurst:
          flags.admissionBurst === undefined
            ? undefined
            : positiveNumber("--admission-burst", flags.admissionBurst, true),
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
      const drainMs = durationOption("--drain-timeout", flags.drainTimeout);
      onShutdownSignal(
        logger,
        async () => {
          await localHost?.close();
          await server.close();
        },
        () => 0,
        { deadlineMs: drainMs + SHUTDOWN_SLACK_MS },
      );
    });
}

/** The sandbox host `local` (process driver), dialing this server like any remote host would. */
async function startLocalHost(server: { url: string; runnerToken: string }, logger: Logger) {
  const { WolfHost } = await import("../../host/wolf-host.ts");
  const host = new WolfHost({
    serverUrl: server.url,
    token: server.runnerToken,
    id: "local",
    driver: "process",
    logger,
  });
  await host.start();
  process.stdout.write(`local sandbox host running (wolf-local, process driver, max ${host.maxSandboxes})\n`);
  return host;
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
