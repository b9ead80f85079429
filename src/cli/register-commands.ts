// The client commands that talk to a running server, gathered in one place for main.ts, and the
// program-wide TLS flags they honour (`--ca-file`, `--insecure`, before or after the command name).

import type { Command } from "commander";
import * as connections from "./commands/connections.ts";
import * as doctor from "./commands/doctor.ts";
import * as image from "./commands/image.ts";
import * as project from "./commands/project.ts";
import * as session from "./commands/session.ts";
import * as spectask from "./commands/spectask.ts";
import * as user from "./commands/user.ts";
import * as wolf from "./commands/wolf.ts";
import { addTlsOptions, type TlsFlags } from "./tls-options.ts";

export function registerControlPlaneCommands(program: Command): void {
  for (const command of [user, project, spectask, session, connections, doctor, wolf, image])
    command.register(program);
  addTlsOptions(program);
  // The commands build their API client from the environment (createApiClient), so the flags are
  // handed on as the variables they stand for; the process is the CLI's own, ending with the command.
  program.hook("preAction", (_program, action) => {
    const flags = action.optsWithGlobals<TlsFlags>();
    if (flags.caFile) process.env.REVDIAL_CA_FILE = flags.caFile;
    if (flags.insecure) process.env.REVDIAL_INSECURE = "1";
  });
}
