// `revdial agent`: the sandbox side of a tunnel. Dials out, registers as --runner-id, and serves the
// API's calls by proxying them to --local (every target name) or to the --target allow-list.
// With --agent-command it also runs an agent program bridged to the session's sync socket
// (src/agent/sync-bridge.ts, docs/agent-sync.md).
// Exit status: 0 after SIGTERM/SIGINT, 3 when a newer agent took the runner id, 2 on bad usage.
// The key comes from --token-file, `--token -` (stdin) or env REVDIAL_TOKEN; `--token KEY` still
// works but warns, since every local user can read a command line.

import type { Command } from "commander";
import { TargetMap } from "../../agent/target-map.ts";
import { AgentClient, type AgentClientOptions } from "../../agent/tunnel-client.ts";
import { createLogger, type Logger } from "../../common/logger.ts";
import { isSessionId } from "../../store/ids.ts";
import {
  CliUsageError,
  env,
  LOG_FORMAT_OPTION,
  logFormatOption,
  logLevelOption,
  PROTOCOL_OPTION,
  protocolOption,
  TRANSPORT_OPTION,
  transportOption,
} from "../env.ts";
import { readSecret } from "../secret-source.ts";
import { onShutdownSignal } from "../signals.ts";
import { addTlsOptions, type TlsFlags, tlsFromFlags } from "../tls-options.ts";

export const EXIT_REPLACED = 3;

export interface AgentFlags extends TlsFlags {
  server?: string;
  runnerId?: string;
  token?: string;
  tokenFile?: string;
  local?: string;
  target: string[];
  logLevel: string;
  logFormat?: string;
  desktop?: boolean;
  display?: string;
  desktopListen: string;
  transport?: string;
  protocol?: string;
  agentCommand?: string;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

export function register(program: Command): void {
  const command = program
    .command("agent")
    .description("dial out to the API and serve local services through the tunnel")
    .option("--server <url>", "API URL, http(s):// or ws(s):// (env REVDIAL_URL)", env("REVDIAL_URL"))
    .option(
      "--runner-id <id>",
      "id to register as, e.g. sandbox-ses_... (env REVDIAL_RUNNER_ID)",
      env("REVDIAL_RUNNER_ID"),
    )
    .option(
      "--token-file <file>",
      "read the key (API key, sandbox key or host key) from FILE (env REVDIAL_TOKEN)",
    )
    .option("--token <token>", "the key; `-` reads it from stdin (on the command line: avoid)")
    .option(
      "--local <addr>",
      "serve every target name from ADDR (host:port or unix:///path); default 127.0.0.1:9876",
    )
    .option("--target <name=addr>", "allow-list a named target (repeatable)", collect, [])
    .option("--desktop", "also run the desktop service (screenshot, clipboard) and serve it as `desktop`")
    .option("--display <display>", "X display for the desktop service (default $DISPLAY)")
    .option(
      "--desktop-listen <addr>",
      "where the desktop service listens: host:port or unix:///path (in a 0700 directory)",
      "127.0.0.1:9876",
    )
    .option(...TRANSPORT_OPTION)
    .option(...PROTOCOL_OPTION)
    .option(
      "--agent-command <cmd>",
      "run this agent program (sh -c) and bridge it to the session's sync socket (env REVDIAL_AGENT_COMMAND)",
      env("REVDIAL_AGENT_COMMAND"),
    )
    .option("--log-level <level>", "fatal|error|warn|info|debug|trace", env("REVDIAL_LOG_LEVEL") ?? "info")
    .option(...LOG_FORMAT_OPTION, env("REVDIAL_LOG_FORMAT"));
  // optsWithGlobals: the TLS flags may also be program-wide options (see register-commands.ts).
  addTlsOptions(command).action(async (_flags: AgentFlags, cmd: Command) =>
    runAgent(cmd.optsWithGlobals<AgentFlags>()),
  );
}

/**
 * Runs the agent until it is stopped. `warnCommandLineToken`: warn when the key was given on the
 * command line (off for `revdial-client`, whose seed scripts pass `-token` by design).
 */
export async function runAgent(
  flags: AgentFlags,
  options: { warnCommandLineToken?: boolean } = {},
): Promise<void> {
  if (!flags.server) throw new CliUsageError("--server is required (or set REVDIAL_URL)");
  if (!flags.runnerId) throw new CliUsageError("--runner-id is required");
  const logger = createLogger({
    level: logLevelOption(flags.logLevel),
    format: logFormatOption(flags.logFormat),
    name: "revdial-agent",
  });
  const token = await readSecret({
    value: flags.token,
    file: flags.tokenFile,
    envNames: ["REVDIAL_TOKEN"],
    flag: "--token",
    warn: options.warnCommandLineToken === false ? undefined : (message) => logger.warn(message),
  });
  if (!token)
    throw new CliUsageError("a key is required: --token-file FILE, --token - (stdin) or REVDIAL_TOKEN");
  const syncSessionId = flags.agentCommand ? sessionOfRunner(flags.runnerId) : null;
  const tls = tlsFromFlags(flags);
  const transport = transportOption(flags.transport);
  const protocol = protocolOption(flags.protocol);
  const desktop = flags.desktop ? await startDesktop(flags, logger) : null;
  const stopDesktop = desktop?.close ?? null;
  // The desktop's bound address, so `--desktop-listen 127.0.0.1:0` serves the port it was given.
  const local = flags.local ?? desktop?.address;
  let targets: TargetMap;
  try {
    targets = TargetMap.fromFlags(local, flags.target);
  } catch (err) {
    throw new CliUsageError((err as Error).message);
  }
  const agent = new AgentClient({
    serverUrl: flags.server,
    runnerId: flags.runnerId,
    token,
    targets,
    logger,
    tls,
    transport,
    protocol,
  });
  const bridge = syncSessionId ? await startSyncBridge(flags, token, syncSessionId, tls, logger) : null;
  onShutdownSignal(logger, async () => {
    await bridge?.close();
    await agent.close();
    await stopDesktop?.();
  });
  const exit = await agent.start();
  await bridge?.close();
  await stopDesktop?.();
  process.exit(exit === "replaced" ? EXIT_REPLACED : 0);
}

async function startDesktop(
  flags: AgentFlags,
  logger: Logger,
): Promise<{ address: string; close: () => Promise<void> }> {
  // The packages the desktop needs are loaded now, so a missing one fails the start with its name.
  const { loadSharp, loadX11 } = await import("../../agent/desktop/native-modules.ts");
  await loadSharp();
  if (flags.display || !process.env.WAYLAND_DISPLAY) await loadX11();
  const { startDesktopService } = await import("../../agent/desktop/desktop-service.ts");
  const service = await startDesktopService({ listen: flags.desktopListen, display: flags.display, logger });
  const bound = service.address;
  const address = !bound
    ? flags.desktopListen
    : bound.path
      ? `unix://${bound.path}`
      : `${bound.host.includes(":") ? `[${bound.host}]` : bound.host}:${bound.port}`;
  return { address, close: () => service.close() };
}

/** The session a `sandbox-{sessionID}` runner id names (the sync socket's session). */
function sessionOfRunner(runnerId: string): string {
  const sessionId = runnerId.startsWith("sandbox-") ? runnerId.slice("sandbox-".length) : "";
  if (!isSessionId(sessionId))
    throw new CliUsageError("--agent-command needs a sandbox runner id (sandbox-ses_…)");
  return sessionId;
}

/** The agent program and its sync socket, for the session this agent's runner id names. */
async function startSyncBridge(
  flags: AgentFlags,
  token: string,
  sessionId: string,
  tls: AgentClientOptions["tls"],
  logger: Logger,
) {
  const { SyncBridge } = await import("../../agent/sync-bridge.ts");
  const bridge = new SyncBridge({
    serverUrl: flags.server as string,
    sessionId,
    token,
    command: flags.agentCommand as string,
    tls,
    logger,
  });
  void bridge.start();
  return bridge;
}
