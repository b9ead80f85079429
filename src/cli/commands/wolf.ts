// `revdial wolf run`: a sandbox host. Registers with the API using the runner token, heartbeats,
// dials out as `wolf-{id}` and serves its lobby API through that tunnel; sandboxes are made by the
// process driver (Xvfb + `revdial agent --desktop` per sandbox, one process group each) or the
// docker driver. SIGTERM/SIGINT stop every sandbox, then exit 0; exit 3 when another host took the id.
// `revdial wolf list`: the hosts the API knows, with their load.

import type { Command } from "commander";
import type { wolfInstanceView } from "../../api/routes/wolf-instances.ts";
import { createLogger } from "../../common/logger.ts";
import { WolfHost } from "../../host/wolf-host.ts";
import { createApiClient } from "../api-client.ts";
import {
  CliUsageError,
  durationOption,
  env,
  logLevelOption,
  TRANSPORT_OPTION,
  transportOption,
} from "../env.ts";
import { type Column, printList } from "../output.ts";
import { onShutdownSignal } from "../signals.ts";
import { addTlsOptions, type TlsFlags, tlsFromFlags } from "../tls-options.ts";
import { EXIT_REPLACED } from "./agent.ts";

type WolfView = ReturnType<typeof wolfInstanceView>;

interface RunFlags extends TlsFlags {
  server?: string;
  token?: string;
  id?: string;
  name?: string;
  maxSandboxes: string;
  driver: string;
  app?: string;
  agentCommand?: string;
  label: string[];
  heartbeat: string;
  logLevel: string;
  transport?: string;
}

export const WOLF_COLUMNS: readonly Column<WolfView>[] = [
  { header: "id", value: (w) => w.id },
  { header: "name", value: (w) => w.name },
  { header: "status", value: (w) => w.status },
  { header: "load", value: (w) => `${w.connected_sandboxes}/${w.max_sandboxes}` },
  { header: "tunnel", value: (w) => (w.tunnel_connected ? "up" : "down") },
  { header: "last heartbeat", value: (w) => w.last_heartbeat },
];

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function parseLabels(specs: string[]): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const spec of specs) {
    const eq = spec.indexOf("=");
    if (eq <= 0) throw new CliUsageError(`--label: expected KEY=VALUE, got "${spec}"`);
    labels[spec.slice(0, eq)] = spec.slice(eq + 1);
  }
  return labels;
}

async function run(flags: RunFlags): Promise<void> {
  if (!flags.server) throw new CliUsageError("--server is required (or set REVDIAL_URL)");
  if (!flags.token) throw new CliUsageError("--token is required (or set REVDIAL_RUNNER_TOKEN)");
  if (!flags.id) throw new CliUsageError("--id is required");
  if (flags.driver !== "process" && flags.driver !== "docker")
    throw new CliUsageError("--driver must be process or docker");
  const max = Number(flags.maxSandboxes);
  if (!Number.isInteger(max) || max < 1)
    throw new CliUsageError("--max-sandboxes must be a positive integer");
  const logger = createLogger({ level: logLevelOption(flags.logLevel), name: "revdial-wolf" });
  let host: WolfHost;
  try {
    host = new WolfHost({
      serverUrl: flags.server,
      token: flags.token,
      id: flags.id,
      name: flags.name,
      maxSandboxes: max,
      driver: flags.driver,
      app: flags.app ?? null,
      agentCommand: flags.agentCommand ?? null,
      labels: parseLabels(flags.label),
      heartbeatIntervalMs: durationOption("--heartbeat", flags.heartbeat),
      agent: { tls: tlsFromFlags(flags), transport: inheritedTransport(flags.transport) },
      logger,
    });
  } catch (err) {
    throw new CliUsageError((err as Error).message);
  }
  onShutdownSignal(logger, () => host.close());
  try {
    await host.start();
  } catch (err) {
    await host.close();
    throw err;
  }
  process.stdout.write(
    `Wolf instance ${host.id} running (driver ${host.driver.name}, max ${host.maxSandboxes})\n`,
  );
  const exit = await host.done;
  await host.close();
  process.exit(exit === "replaced" ? EXIT_REPLACED : 0);
}

export function register(program: Command): void {
  const wolf = program.command("wolf").description("sandbox hosts (Wolf instances)");

  const runCommand = wolf
    .command("run")
    .description("run a sandbox host: register, heartbeat, and serve the lobby API through its tunnel")
    .option("--server <url>", "API URL (env REVDIAL_URL)", env("REVDIAL_URL"))
    .option("--token <token>", "the runner token (env REVDIAL_RUNNER_TOKEN)", env("REVDIAL_RUNNER_TOKEN"))
    .option(
      "--id <id>",
      "host id; the tunnel registers as wolf-{id} (env REVDIAL_WOLF_ID)",
      env("REVDIAL_WOLF_ID"),
    )
    .option("--name <name>", "display name (default: the id)")
    .option("--max-sandboxes <n>", "sandboxes at most", "10")
    .option("--driver <driver>", "process or docker", "process")
    .option("--app <command>", "command started on each sandbox's display (process driver)")
    .option(
      "--agent-command <cmd>",
      "agent program every sandbox runs, bridged to its session's sync socket (process driver; env REVDIAL_AGENT_COMMAND)",
      env("REVDIAL_AGENT_COMMAND"),
    )
    .option("--label <key=value>", "a label (repeatable)", collect, [])
    .option("--heartbeat <duration>", "heartbeat interval", "30s")
    .option(...TRANSPORT_OPTION)
    .option("--log-level <level>", "fatal|error|warn|info|debug|trace", env("REVDIAL_LOG_LEVEL") ?? "info");
  // The TLS flags may also be program-wide (register-commands.ts); sandboxes inherit them as env.
  addTlsOptions(runCommand).action((_flags: RunFlags, cmd: Command) => run(cmd.optsWithGlobals<RunFlags>()));

  wolf
    .command("list")
    .description("list the sandbox hosts the API knows")
    .option("--json", "print JSON")
    .action(async (flags: { json?: boolean }) => {
      printList(await createApiClient().get<WolfView[]>("/api/v1/wolf-instances"), WOLF_COLUMNS, flags.json);
    });
}

/** The host's transport, also handed to the sandboxes it spawns (they inherit its environment). */
function inheritedTransport(text: string | undefined): "ws" | "raw" {
  const transport = transportOption(text);
  process.env.REVDIAL_TRANSPORT = transport;
  return transport;
}
