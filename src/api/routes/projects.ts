// Projects: the caller's own (an admin sees all). Another tenant's project answers 404.

import type { FastifyInstance } from "fastify";
import type { Project } from "../../store/index.ts";
import { canAccessOwned, type Principal, principalOf, requireUser } from "../auth.ts";
import type { ApiContext } from "../context.ts";
import { ApiError } from "../http-errors.ts";
import { idParams, projectSchema } from "./route-schemas.ts";
import { projectView } from "./route-views.ts";

/** The project if the principal may see it; 404 otherwise (missing and foreign look the same). */
export async function loadVisibleProject(
  ctx: ApiContext,
  principal: Principal,
  id: string,
): Promise<Project> {
  const project = await ctx.store.projects.get(id);
  if (!project || !canAccessOwned(principal, project.ownerId)) {
    throw new ApiError(404, "RD_ERR_PROJECT_NOT_FOUND", `project ${id} not found`);
  }
  return project;
}

export async function projectRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  app.get(
    "/api/v1/projects",
    {
      preHandler: ctx.auth.preHandler,
      schema: { response: { 200: { type: "array", items: projectSchema } } },
    },
    async (request) => {
      const principal = principalOf(request);
      const userId = requireUser(principal);
      const projects = await ctx.store.projects.list(principal.admin ? {} : { ownerId: userId });
      return projects.map(projectView);
    },
  );

  app.get<{ Params: { id: string } }>(
    "/api/v1/projects/:id",
    { preHandler: ctx.auth.preHandler, schema: { params: idParams, response: { 200: projectSchema } } },
    async (request) => {
      const principal = principalOf(request);
      requireUser(principal);
      return projectView(await loadVisibleProject(ctx, principal, request.params.id));
    },
  );
}
