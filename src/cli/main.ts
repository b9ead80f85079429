// The `revdial` command line: every user action, against REVDIAL_URL with REVDIAL_API_KEY, plus the
// long-running programs (server, agent, wolf run). Errors print their message, never a stack.

import { Command, CommanderError } from "commander";
import * as agent from "./commands/agent.ts";
import * as server from "./commands/server.ts";
import { CliUsageError } from "./env.ts";
import { registerControlPlaneCommands } from "./register-commands.ts";

export function buildProgram(): Command {
  const program = new Command("revdial")
    .description("reach services inside sandboxes that dial out over one WebSocket")
    .version("0.1.0")
    .showHelpAfterError()
    .exitOverride();
  server.register(program);
  agent.register(program);
  registerControlPlaneCommands(program);
  return program;
}

export async function main(args: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(args, { from: "user" });
  } catch (err) {
    process.exitCode = exitCodeFor(err);
  }
}

function exitCodeFor(err: unknown): number {
  if (err instanceof CommanderError) return err.exitCode;
  if (err instanceof CliUsageError) {
    process.stderr.write(`Error: ${err.message}\n`);
    return 2;
  }
  const status = (err as { exitCode?: unknown }).exitCode;
  process.stderr.write(`Error: ${(err as Error)?.message ?? String(err)}\n`);
  return typeof status === "number" ? status : 1;
}

if (import.meta.main) await main(process.argv.slice(2));
