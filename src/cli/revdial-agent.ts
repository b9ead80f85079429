// The one-file sandbox agent (dist/revdial-agent.mjs, and the revdial-agent executable built from
// it): `revdial agent` and `revdial-client` in one program, for sandbox images that carry no
// node_modules. The flag style is picked by, in order:
//   - a first argument `agent` (revdial agent's flags) or `client` / `revdial-client` (the seed's);
//   - the program's name: run as `revdial-client` (a link or a copy so named), the seed's flags;
//   - the arguments themselves: a first flag with one dash and a long name (`-server`) is the seed's;
//   - otherwise `revdial agent`'s flags.
// scripts/build-agent.ts bundles this module; its entry calls main(process.argv.slice(2)).

import { basename } from "node:path";
import { Command, CommanderError } from "commander";
import * as agent from "./commands/agent.ts";
import { CliUsageError } from "./env.ts";
import { main as clientMain } from "./revdial-client.ts";

export type FlagStyle = "agent" | "client";

/** Which flag style `args` are in, and the arguments left once a style word is taken off. */
export function pickFlagStyle(programName: string, args: string[]): { style: FlagStyle; args: string[] } {
  const [first, ...rest] = args;
  if (first === "agent") return { style: "agent", args: rest };
  if (first === "client" || first === "revdial-client") return { style: "client", args: rest };
  if (/^revdial-client(\.[cm]?js)?$/.test(programName)) return { style: "client", args };
  if (first !== undefined && /^-[a-z][a-z-]+(=|$)/.test(first)) return { style: "client", args };
  return { style: "agent", args };
}

/** The name the program was started as: the executable's own name, or the script's. */
function programName(): string {
  const script = process.argv[1];
  // A single executable application is started as itself (argv0); a bundle as `node FILE`.
  const isScript = script !== undefined && /\.[cm]?js$/.test(script);
  return basename(isScript ? script : process.argv0);
}

export async function main(args: string[]): Promise<void> {
  const picked = pickFlagStyle(programName(), args);
  if (picked.style === "client") {
    await clientMain(picked.args);
    return;
  }
  const program = new Command("revdial-agent")
    .description("the revdial sandbox agent (also takes revdial-client's flags: revdial-agent client -h)")
    .showHelpAfterError()
    .exitOverride();
  agent.register(program);
  try {
    await program.parseAsync(["agent", ...picked.args], { from: "user" });
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exitCode = err.exitCode;
      return;
    }
    process.stderr.write(`Error: ${(err as Error)?.message ?? String(err)}\n`);
    process.exitCode = err instanceof CliUsageError ? 2 : 1;
  }
}
