// Spec tasks: list (optionally one project's), create in a project of the caller's, show one.
// Visibility follows the task's project owner; another tenant's task answers 404.

import type { FastifyInstance } from "fastify";
import type { SpecTask } from "../../store/index.ts";
import { canAccessOwned, type Principal, principalOf, requireUser, requireWrite } from "../auth.ts";
import type { ApiContext } from "../context.ts";
import { ApiError } from "../http-errors.ts";
import { loadVisibleProject } from "./projects.ts";
import { idParams, specTaskSchema } from "./route-schemas.ts";
import { specTaskView } from "./route-views.ts";

interface CreateTaskBody {
  project_id: string;
  name: string;
  description?: string;
  priority?: string;
}

const createTaskBody = {
  type: "object",
  required: ["project_id", "name"],
  properties: {
    project_id: { type: "string", minLength: 1, maxLength: 64 },
    name: { type: "string", minLength: 1, maxLength: 200 },
    description: { type: "string", maxLength: 100_000 },
    priority: { type: "string", enum: ["low", "medium", "high", "critical"] },
  },
  additionalProperties: false,
} as const;

const listQuery = {
  type: "object",
  properties: { project_id: { type: "string", minLength: 1, maxLength: 64 } },
  additionalProperties: false,
} as const;

/** The task if the principal may see it; 404 otherwise. */
export async function loadVisibleTask(ctx: ApiContext, principal: Principal, id: string): Promise<SpecTask> {
  const task = await ctx.store.specTasks.get(id);
  if (!task || !canAccessOwned(principal, task.ownerId)) {
    throw new ApiError(404, "RD_ERR_SPEC_TASK_NOT_FOUND", `spec task ${id} not found`);
  }
  return task;
}

export async function specTaskRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  app.get<{ Querystring: { project_id?: string } }>(
    "/api/v1/spec-tasks",
    {
      preHandler: ctx.auth.preHandler,
      schema: { querystring: listQuery, response: { 200: { type: "array", items: specTaskSchema } } },
    },
    async (request) => {
      const principal = principalOf(request);
      const userId = requireUser(principal);
      const projectId = request.query.project_id;
      if (projectId) await loadVisibleProject(ctx, principal, projectId);
      const tasks = await ctx.store.specTasks.list({
        projectId,
        ownerId: principal.admin ? undefined : userId,
      });
      return tasks.map(specTaskView);
    },
  );

  app.post<{ Body: CreateTaskBody }>(
    "/api/v1/spec-tasks",
    { preHandler: ctx.auth.preHandler, schema: { body: createTaskBody, response: { 201: specTaskSchema } } },
    async (request, reply) => {
      const principal = principalOf(request);
      requireUser(principal);
      requireWrite(principal);
      const { project_id, name, description, priority } = request.body;
      const project = await loadVisibleProject(ctx, principal, project_id);
      const task = await ctx.store.specTasks.create({ projectId: project.id, name, description, priority });
      return reply.code(201).send(specTaskView(task));
    },
  );

  app.get<{ Params: { id: string } }>(
    "/api/v1/spec-tasks/:id",
    { preHandler: ctx.auth.preHandler, schema: { params: idParams, response: { 200: specTaskSchema } } },
    async (request) => {
      const principal = principalOf(request);
      requireUser(principal);
      return specTaskView(await loadVisibleTask(ctx, principal, request.params.id));
    },
  );
}
