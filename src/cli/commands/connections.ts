// `revdial connections`: the live tunnels on the server (admin), as a table or --json. A cluster's
// replica lists the whole cluster's, with a `replica` column (docs/replicas.md).

import type { Command } from "commander";
import type { TunnelStats } from "../../tunnel/types.ts";
import { createApiClient } from "../api-client.ts";
import { formatJson, formatTable } from "../output.ts";

type Connection = TunnelStats & { session_id: string | null; owner: string | null; replica?: string };

function bytes(n: number): string {
  if (n >= 1024 ** 3) return `${(n / 1024 ** 3).toFixed(1)}G`;
  if (n >= 1024 ** 2) return `${(n / 1024 ** 2).toFixed(1)}M`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)}K`;
  return String(n);
}

export function register(program: Command): void {
  program
    .command("connections")
    .description("list the live tunnels (admin)")
    .option("--json", "print JSON")
    .action(async (flags: { json?: boolean }) => {
      const rows = await createApiClient().get<Connection[]>("/api/v1/revdial/connections");
      if (flags.json) {
        process.stdout.write(formatJson(rows));
        return;
      }
      const clustered = rows.some((r) => r.replica !== undefined);
      process.stdout.write(
        formatTable(rows, [
          { header: "runner id", value: (r) => r.runner_id },
          ...(clustered ? [{ header: "replica", value: (r: Connection) => r.replica ?? null }] : []),
          { header: "protocol", value: (r) => r.protocol },
          { header: "transport", value: (r) => r.transport },
          { header: "connected at", value: (r) => r.connected_at },
          { header: "remote", value: (r) => r.remote_address },
          { header: "rtt ms", value: (r) => r.rtt_ms },
          { header: "streams", value: (r) => r.active_streams },
          { header: "in", value: (r) => bytes(r.bytes_in) },
          { header: "out", value: (r) => bytes(r.bytes_out) },
          { header: "owner", value: (r) => r.owner },
        ]),
      );
    });
}
