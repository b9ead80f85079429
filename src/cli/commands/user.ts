// `revdial user create NAME [--admin]` (prints the new key, shown once) and `revdial user me`.

import type { Command } from "commander";
import { createApiClient } from "../api-client.ts";
import { formatJson, formatRecord, print } from "../output.ts";

interface CreatedUser {
  id: string;
  name: string;
  admin: boolean;
  api_key: string;
}

export function register(program: Command): void {
  const user = program.command("user").description("manage users (admin)");

  user
    .command("create")
    .description("create a user and print its API key (shown once)")
    .argument("<name>", "user name")
    .option("--admin", "make the user an admin", false)
    .option("--json", "print JSON")
    .action(async (name: string, flags: { admin: boolean; json?: boolean }) => {
      const created = await createApiClient().post<CreatedUser>("/api/v1/users", {
        name,
        admin: flags.admin,
      });
      if (flags.json) return print(formatJson(created));
      print(`User created: ${created.id} (${created.name}${created.admin ? ", admin" : ""})\n`);
      print(`API key: ${created.api_key}\n`);
    });

  user
    .command("me")
    .description("show who the current API key belongs to")
    .option("--json", "print JSON")
    .action(async (flags: { json?: boolean }) => {
      const me = await createApiClient().get<Record<string, unknown>>("/api/v1/users/me");
      print(flags.json ? formatJson(me) : formatRecord(me));
    });
}
