// `revdial-client`: the agent with the seed's single-dash flag names, so existing startup scripts
//   revdial-client -server "http://api:8080/api/v1/revdial" -runner-id "sandbox-$ID" -token "$T"
// run unchanged. It is the same program as `revdial agent` (protocol v3 by default, `-protocol v2`). The key may also come
// from `-token-file F`, `-token -` (stdin) or env REVDIAL_TOKEN, off the command line.

import { type AgentFlags, runAgent } from "./commands/agent.ts";
import { CliUsageError, env } from "./env.ts";
import { insecureFromEnv } from "./tls-options.ts";

const VALUE_FLAGS: Record<string, keyof AgentFlags> = {
  server: "server",
  "runner-id": "runnerId",
  token: "token",
  "token-file": "tokenFile",
  local: "local",
  target: "target",
  "log-level": "logLevel",
  "log-format": "logFormat",
  display: "display",
  "desktop-listen": "desktopListen",
  "ca-file": "caFile",
  transport: "transport",
  protocol: "protocol",
};

const USAGE =
  "usage: revdial-client -server URL -runner-id ID (-token T | -token-file F | env REVDIAL_TOKEN)\n" +
  "                      [-local ADDR] [-target NAME=ADDR ...]\n" +
  "                      [-ca-file FILE] [-insecure] [-transport ws|raw] [-protocol v3|v2]\n" +
  "                      [-log-level LEVEL] [-log-format json|pretty]";

/** Parses Go-style flags: `-name value`, `-name=value`, `--name value`; booleans `-desktop`, `-insecure`. */
export function parseClientFlags(args: string[]): AgentFlags {
  const flags: AgentFlags = {
    target: [],
    logLevel: "info",
    logFormat: env("REVDIAL_LOG_FORMAT"),
    desktopListen: "127.0.0.1:9876",
    caFile: env("REVDIAL_CA_FILE"),
    insecure: insecureFromEnv(),
  };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "-h" || arg === "-help" || arg === "--help") throw new CliUsageError(USAGE);
    const match = /^--?([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (!match) throw new CliUsageError(`unexpected argument "${arg}"\n${USAGE}`);
    const [, name, inline] = match;
    if (name === "desktop" || name === "insecure") {
      // Go's boolean flags also take `-insecure=false`.
      flags[name] = inline === undefined || !/^(false|0)$/i.test(inline);
      continue;
    }
    const key = VALUE_FLAGS[name];
    if (!key) throw new CliUsageError(`unknown flag -${name}\n${USAGE}`);
    const value = inline ?? args[++i];
    if (value === undefined) throw new CliUsageError(`flag -${name} needs a value`);
    if (key === "target") flags.target.push(value);
    else (flags as unknown as Record<string, string>)[key] = value;
  }
  return flags;
}

export async function main(args: string[]): Promise<void> {
  try {
    await runAgent(parseClientFlags(args), { warnCommandLineToken: false });
  } catch (err) {
    process.stderr.write(`Error: ${(err as Error).message}\n`);
    process.exitCode = err instanceof CliUsageError ? 2 : 1;
  }
}

if (import.meta.main) void main(process.argv.slice(2));
