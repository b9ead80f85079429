// `revdial wolf create ID [--max-sandboxes N] [--name N]`: an admin adds a host and gets its key
// (`rdh-…`, printed once); `revdial wolf rotate-key ID` replaces it; `revdial wolf delete ID`.
// `revdial wolf run`: a sandbox host. Registers with the API using its host key, heartbeats,
// dials out as `wolf-{id}` and serves its lobby API through that tunnel; sandboxes are made by the
// process driver (Xvfb + `revdial agent --desktop` per sandbox, one process group each) or the
// docker driver (a container per sandbox: --image, --docker-host, --memory, --cpus, --pids-limit,
// --network; docs/containers.md). SIGTERM/SIGINT stop every sandbox, then exit 0; exit 3 when another host took the id.
// `revdial wolf list`: the hosts the API knows, with their load.
// The key of `wolf run` comes from --token-file, `--token -` (stdin), env REVDIAL_TOKEN (or the
// seed's REVDIAL_RUNNER_TOKEN), or --token (warned about: visible to local users).

import type { Command } from "commander";
import type { wolfInstanceView } from "../../api/routes/wolf-instances.ts";
import { createLogger } from "../../common/logger.ts";
import { DockerDriver, parseBytes } from "../../host/docker-driver.ts";
import {
  ISOLATION_CHOICES,
  type IsolationRequest,
  parseUidRange,
  type UidRange,
} from "../../host/isolation.ts";
import { WolfHost, type WolfHostOptions } from "../../host/wolf-host.ts";
import { createApiClient } from "../api-client.ts";
import {
  CliUsageError,
  durationOption,
  env,
  LOG_FORMAT_OPTION,
  logFormatOption,
  logLevelOption,
  PROTOCOL_OPTION,
  protocolOption,
  TRANSPORT_OPTION,
  transportOption,
} from "../env.ts";
import { type Column, formatJson, print, printList } from "../output.ts";
import { readSecret } from "../secret-source.ts";
import { onShutdownSignal } from "../signals.ts";
import { addTlsOptions, type TlsFlags, tlsFromFlags } from "../tls-options.ts";
import { EXIT_REPLACED } from "./agent.ts";

type WolfView = ReturnType<typeof wolfInstanceView>;

interface RunFlags extends TlsFlags {
  server?: string;
  token?: string;
  tokenFile?: string;
  id?: string;
  name?: string;
  maxSandboxes: string;
  driver: string;
  app?: string;
  agentCommand?: string;
  label: string[];
  heartbeat: string;
  logLevel: string;
  logFormat?: string;
  transport?: string;
  protocol?: string;
  isolation: string;
  unsafeSharedUser?: boolean;
  sandboxUids: string;
  stateDir?: string;
  image?: string;
  dockerHost?: string;
  memory: string;
  cpus: string;
  pidsLimit: string;
  network: string;
}

export const WOLF_COLUMNS: readonly Column<WolfView>[] = [
  { header: "id", value: (w) => w.id },
  { header: "name", value: (w) => w.name },
  { header: "status", value: (w) => w.status },
  { header: "load", value: (w) => `${w.connected_sandboxes}/${w.max_sandboxes}` },
  { header: "tunnel", value: (w) => (w.tunnel_connected ? "up" : "down") },
  { header: "last heartbeat", value: (w) => w.last_heartbeat },
  { header: "driver", value: (w) => w.labels?.["revdial.driver"] ?? "-" },
  { header: "engine", value: (w) => w.labels?.["revdial.engine"] ?? "-" },
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
  const token = await readSecret({
    value: flags.token,
    file: flags.tokenFile,
    envNames: ["REVDIAL_TOKEN", "REVDIAL_RUNNER_TOKEN"],
    flag: "--token",
    warn: (message) => process.stderr.write(`warning: ${message}\n`),
  });
  if (!token)
    throw new CliUsageError("a host key is required: --token-file FILE, --token - (stdin) or REVDIAL_TOKEN");
  if (!flags.id) throw new CliUsageError("--id is required");
  if (flags.driver !== "process" && flags.driver !== "docker")
    throw new CliUsageError("--driver must be process or docker");
  const max = Number(flags.maxSandboxes);
  if (!Number.isInteger(max) || max < 1)
    throw new CliUsageError("--max-sandboxes must be a positive integer");
  const isolation = isolationFromFlags(flags);
  const logger = createLogger({
    level: logLevelOption(flags.logLevel),
    format: logFormatOption(flags.logFormat),
    name: "revdial-wolf",
  });
  let host: WolfHost;
  try {
    host = new WolfHost({
      serverUrl: flags.server,
      token,
      id: flags.id,
      name: flags.name,
      maxSandboxes: max,
      driver: flags.driver,
      app: flags.app ?? null,
      agentCommand: flags.agentCommand ?? null,
      labels: parseLabels(flags.label),
      heartbeatIntervalMs: durationOption("--heartbeat", flags.heartbeat),
      agent: {
        tls: tlsFromFlags(flags),
        transport: transportOption(flags.transport),
        protocol: protocolOption(flags.protocol),
      },
      ...isolation,
      stateDir: flags.stateDir,
      docker: flags.driver === "docker" ? dockerFromFlags(flags) : undefined,
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
  const iso = host.isolation
    ? `, isolation: ${host.isolation}`
    : host.driver instanceof DockerDriver
      ? `, engine: ${host.driver.describeEngine()}`
      : "";
  process.stdout.write(
    `Wolf instance ${host.id} running (driver ${host.driver.name}${iso}, max ${host.maxSandboxes})\n`,
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
    .option(
      "--token-file <file>",
      "the host's key (from `revdial wolf create`) in a file (env REVDIAL_TOKEN)",
    )
    .option("--token <token>", "the host's key; `-` reads it from stdin (on the command line: avoid)")
    .option(
      "--id <id>",
      "host id; the tunnel registers as wolf-{id} (env REVDIAL_WOLF_ID)",
      env("REVDIAL_WOLF_ID"),
    )
    .option("--name <name>", "display name (default: the id)")
    .option("--max-sandboxes <n>", "sandboxes at most", "10")
    .option("--driver <driver>", "process or docker", "process")
    .option(
      "--app <command>",
      "command started on each sandbox's display; default xterm showing the session, '' for none",
    )
    .option(
      "--agent-command <cmd>",
      "agent program every sandbox runs, bridged to its session's sync socket (env REVDIAL_AGENT_COMMAND; with --driver docker it runs inside the container)",
      env("REVDIAL_AGENT_COMMAND"),
    )
    .option("--label <key=value>", "a label (repeatable)", collect, [])
    .option("--heartbeat <duration>", "heartbeat interval", "30s")
    .option(...TRANSPORT_OPTION)
    .option(...PROTOCOL_OPTION)
    .option(
      "--isolation <mode>",
      "sandbox isolation (process driver): auto, users (root: a uid per sandbox + namespaces), " +
        "namespaces (user namespaces), unsafe-shared-user",
      "auto",
    )
    .option(
      "--unsafe-shared-user",
      "same as --isolation unsafe-shared-user: sandboxes run as this host's user and can read each other and the host's files",
    )
    .option(
      "--sandbox-uids <first-last>",
      "uids for the users isolation mode: a host takes a free window of 2 per sandbox (agent, app)",
      "200000-200999",
    )
    .option(
      "--state-dir <dir>",
      "the host's state (0700): lobby API socket, live sandboxes (default: under the OS temp dir)",
    )
    .option("--image <image>", "sandbox image (docker driver; `revdial image build`)", "revdial-sandbox")
    .option(
      "--docker-host <url>",
      "engine socket (docker driver; env DOCKER_HOST, default unix:///var/run/docker.sock)",
      env("DOCKER_HOST"),
    )
    .option("--memory <size>", "memory limit per sandbox, swap included (docker driver)", "1g")
    .option("--cpus <n>", "CPUs per sandbox (docker driver)", "1")
    .option("--pids-limit <n>", "processes and threads per sandbox (docker driver)", "256")
    .option(
      "--network <mode>",
      "sandbox network (docker driver): auto (host when the API is on loopback, else bridge), host, bridge or a network name",
      "auto",
    )
    .option("--log-level <level>", "fatal|error|warn|info|debug|trace", env("REVDIAL_LOG_LEVEL") ?? "info")
    .option(...LOG_FORMAT_OPTION, env("REVDIAL_LOG_FORMAT"));
  // The TLS flags may also be program-wide (register-commands.ts); the sandbox agent gets them as env.
  addTlsOptions(runCommand).action((_flags: RunFlags, cmd: Command) => run(cmd.optsWithGlobals<RunFlags>()));

  wolf
    .command("create")
    .description("add a sandbox host and print its key (shown once; admin)")
    .argument("<id>", "host id: its tunnel registers as wolf-{id}")
    .option("--name <name>", "display name (default: the id)")
    .option("--max-sandboxes <n>", "capacity; the host may lower it, never raise it", "10")
    .option("--json", "print JSON")
    .action(async (id: string, flags: { name?: string; maxSandboxes: string; json?: boolean }) => {
      const max = Number(flags.maxSandboxes);
      if (!Number.isInteger(max) || max < 1)
        throw new CliUsageError("--max-sandboxes must be a positive integer");
      const created = await createApiClient().post<WolfView & { key: string }>("/api/v1/wolf-instances", {
        id,
        ...(flags.name ? { name: flags.name } : {}),
        max_sandboxes: max,
      });
      if (flags.json) return print(formatJson(created));
      print(`Wolf instance created: ${created.id} (max ${created.max_sandboxes})\n`);
      print(`Host key (shown once): ${created.key}\n`);
      print(`Run it with: REVDIAL_TOKEN=<key> revdial wolf run --id ${created.id} --server URL\n`);
    });

  wolf
    .command("rotate-key")
    .description("replace a host's key: print the new one, revoke the old ones (admin)")
    .argument("<id>", "host id")
    .option("--json", "print JSON")
    .action(async (id: string, flags: { json?: boolean }) => {
      const rotated = await createApiClient().post<{ id: string; key: string }>(
        `/api/v1/wolf-instances/${encodeURIComponent(id)}/rotate-key`,
        {},
      );
      if (flags.json) return print(formatJson(rotated));
      print(`Host key of ${rotated.id} replaced (shown once): ${rotated.key}\n`);
    });

  wolf
    .command("delete")
    .description("remove a host and revoke its keys (admin)")
    .argument("<id>", "host id")
    .action(async (id: string) => {
      await createApiClient().delete(`/api/v1/wolf-instances/${encodeURIComponent(id)}`);
      print(`Wolf instance deleted: ${id}\n`);
    });

  wolf
    .command("list")
    .description("list the sandbox hosts the API knows")
    .option("--json", "print JSON")
    .action(async (flags: { json?: boolean }) => {
      printList(await createApiClient().get<WolfView[]>("/api/v1/wolf-instances"), WOLF_COLUMNS, flags.json);
    });
}

/** The docker driver's flags to its options. */
function dockerFromFlags(flags: RunFlags): WolfHostOptions["docker"] {
  const cpus = Number(flags.cpus);
  const pids = Number(flags.pidsLimit);
  if (!(cpus > 0)) throw new CliUsageError("--cpus must be a number > 0");
  if (!Number.isInteger(pids) || pids < 16)
    throw new CliUsageError("--pids-limit must be an integer of at least 16");
  let memoryBytes: number;
  try {
    memoryBytes = parseBytes(flags.memory);
  } catch {
    throw new CliUsageError(`--memory: expected a size like 512m or 2g, got "${flags.memory}"`);
  }
  return {
    endpoint: flags.dockerHost || undefined,
    image: flags.image,
    memoryBytes,
    cpus,
    pidsLimit: pids,
    network: flags.network,
  };
}

/** --isolation and --unsafe-shared-user (an alias of --isolation unsafe-shared-user) to the host's options. */
function isolationFromFlags(flags: RunFlags): {
  isolation: IsolationRequest;
  sandboxUids: UidRange;
} {
  const isolation = (flags.unsafeSharedUser ? "unsafe-shared-user" : flags.isolation) as IsolationRequest;
  if (!ISOLATION_CHOICES.includes(isolation))
    throw new CliUsageError(`--isolation must be one of ${ISOLATION_CHOICES.join(", ")}`);
  if (flags.unsafeSharedUser && flags.isolation !== "auto" && flags.isolation !== "unsafe-shared-user")
    throw new CliUsageError(`--unsafe-shared-user contradicts --isolation ${flags.isolation}`);
  try {
    return { isolation, sandboxUids: parseUidRange(flags.sandboxUids) };
  } catch (err) {
    throw new CliUsageError((err as Error).message.replace("sandboxUids", "--sandbox-uids"));
  }
}
