// The control plane's routes (users, sample projects, projects, spec tasks, sessions, the
// sandbox's screenshot and clipboard, Wolf instances and the session lifecycle), registered under
// one app by src/api/app.ts. Each group is its own file; this one only puts them together.

import type { FastifyInstance } from "fastify";
import type { ApiContext } from "../context.ts";
import { agentSyncRoutes } from "./agent-sync.ts";
import { eventRoutes } from "./events.ts";
import { externalAgentRoutes } from "./external-agents.ts";
import { lifecycleRoutes } from "./lifecycle.ts";
import { projectRoutes } from "./projects.ts";
import { sampleProjectRoutes } from "./sample-projects.ts";
import { sessionRoutes } from "./sessions.ts";
import { specTaskRoutes } from "./spec-tasks.ts";
import { userKeyRoutes, userRoutes } from "./users.ts";
import { wolfInstanceRoutes } from "./wolf-instances.ts";

export async function controlPlaneRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  await userRoutes(app, ctx);
  await userKeyRoutes(app, ctx);
  await sampleProjectRoutes(app, ctx);
  await projectRoutes(app, ctx);
  await specTaskRoutes(app, ctx);
  await sessionRoutes(app, ctx);
  await externalAgentRoutes(app, ctx);
  await wolfInstanceRoutes(app, ctx);
  await lifecycleRoutes(app, ctx);
  await agentSyncRoutes(app, ctx);
  await eventRoutes(app, ctx);
}
