// The client TLS flags every command that dials the API shares: `--ca-file FILE` (env
// REVDIAL_CA_FILE) adds a private CA to the default roots; `--insecure` (env REVDIAL_INSECURE=1)
// turns verification off and is warned about at every connect. A long-running command adds them
// with addTlsOptions(command) and passes tlsFromFlags(flags) as AgentClient's `tls`.

import type { Command } from "commander";
import { type ClientTls, clientTls } from "../common/tls.ts";
import { CliUsageError, env } from "./env.ts";

export interface TlsFlags {
  caFile?: string;
  insecure?: boolean;
}

/** True when REVDIAL_INSECURE asks for it (1, true, yes). */
export function insecureFromEnv(value = env("REVDIAL_INSECURE")): boolean {
  return /^(1|true|yes)$/i.test(value ?? "");
}

export function addTlsOptions(command: Command): Command {
  return command
    .option(
      "--ca-file <file>",
      "PEM CA certificate(s) to trust in addition to the system roots (env REVDIAL_CA_FILE)",
      env("REVDIAL_CA_FILE"),
    )
    .option(
      "--insecure",
      "do NOT verify the server's TLS certificate (env REVDIAL_INSECURE=1)",
      insecureFromEnv(),
    );
}

/** AgentClient's / the API client's `tls` for the flags; a usage error names a bad CA file. */
export function tlsFromFlags(flags: TlsFlags): ClientTls | undefined {
  try {
    return clientTls(flags);
  } catch (err) {
    throw new CliUsageError((err as Error).message);
  }
}
