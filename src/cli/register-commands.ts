// The client commands that talk to a running server, gathered in one place for main.ts.

import type { Command } from "commander";
import * as connections from "./commands/connections.ts";
import * as project from "./commands/project.ts";
import * as session from "./commands/session.ts";
import * as spectask from "./commands/spectask.ts";
import * as user from "./commands/user.ts";

export function registerControlPlaneCommands(program: Command): void {
  for (const command of [user, project, spectask, session, connections]) command.register(program);
}
