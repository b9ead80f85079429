// `revdial server`: runs the control plane until SIGTERM/SIGINT, then drains and exits 0.

import type { Command } from "commander";
import { startServer } from "../../api/server.ts";
import { createLogger } from "../../common/logger.ts";
import { durationOption, env, logLevelOption, sizeOption } from "../env.ts";
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
      "--log-level <level>",
      "fatal|error|warn|info|debug|trace (env REVDIAL_LOG_LEVEL)",
      env("REVDIAL_LOG_LEVEL") ?? "info",
    )
    .action(async (flags: ServerFlags) => {
      const logger = createLogger({ level: logLevelOption(flags.logLevel), name: "revdial-server" });
      const server = await startServer({
        listen: flags.listen,
        dataDir: flags.dataDir,
        runnerToken: flags.runnerToken,
        databaseUrl: flags.databaseUrl,
        gracePeriodMs: durationOption("--grace-period", flags.gracePeriod),
        bodyLimit: sizeOption("--body-limit", flags.bodyLimit),
        publicUrl: flags.publicUrl,
        logger,
      });
      if (server.adminKey) {
        process.stdout.write(
          `admin API key (saved to ${flags.dataDir}/admin.key; shown once): ${server.adminKey}\n`,
        );
      }
      process.stdout.write(`listening on ${server.url}\n`);
      onShutdownSignal(logger, () => server.close());
    });
}
