// Sample projects: list the built-in templates, and fork one into a project of the caller's with
// its spec tasks (one transaction: a fork is all there or not at all).

import type { FastifyInstance } from "fastify";
import { principalOf, requireUser, requireWrite } from "../auth.ts";
import type { ApiContext } from "../context.ts";
import { ApiError } from "../http-errors.ts";
import { specTaskView } from "./route-views.ts";
import { findSampleProject, SAMPLE_PROJECTS } from "./sample-project-catalog.ts";

interface ForkBody {
  sample_project_id: string;
  project_name?: string;
  description?: string;
}

const forkBody = {
  type: "object",
  required: ["sample_project_id"],
  properties: {
    sample_project_id: { type: "string", minLength: 1, maxLength: 100 },
    project_name: { type: "string", minLength: 1, maxLength: 200 },
    description: { type: "string", maxLength: 10_000 },
  },
  additionalProperties: false,
} as const;

const sampleList = {
  type: "array",
  items: {
    type: "object",
    properties: {
      id: { type: "string" },
      name: { type: "string" },
      description: { type: "string" },
      task_count: { type: "integer" },
      tasks: {
        type: "array",
        items: {
          type: "object",
          properties: {
            name: { type: "string" },
            description: { type: "string" },
            priority: { type: "string" },
          },
        },
      },
    },
  },
} as const;

export async function sampleProjectRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  app.get(
    "/api/v1/sample-projects",
    { preHandler: ctx.auth.preHandler, schema: { response: { 200: sampleList } } },
    async (request) => {
      requireUser(principalOf(request));
      return SAMPLE_PROJECTS.map((p) => ({ ...p, task_count: p.tasks.length }));
    },
  );

  app.post<{ Body: ForkBody }>(
    "/api/v1/sample-projects/simple/fork",
    { preHandler: ctx.auth.preHandler, schema: { body: forkBody } },
    async (request, reply) => {
      const principal = principalOf(request);
      const ownerId = requireUser(principal);
      requireWrite(principal);
      const body = request.body;
      const sample = findSampleProject(body.sample_project_id);
      if (!sample) {
        throw new ApiError(
          404,
          "RD_ERR_SAMPLE_PROJECT_NOT_FOUND",
          `no sample project ${body.sample_project_id}`,
        );
      }
      const { project, tasks } = await ctx.store.transaction(async (tx) => {
        const project = await tx.projects.create({
          ownerId,
          name: body.project_name ?? sample.name,
          description: body.description ?? sample.description,
          sampleProjectId: sample.id,
        });
        const tasks = [];
        for (const t of sample.tasks) tasks.push(await tx.specTasks.create({ projectId: project.id, ...t }));
        return { project, tasks };
      });
      request.log.info(
        { project_id: project.id, sample_project_id: sample.id, user_id: ownerId },
        "sample project forked",
      );
      return reply.code(201).send({
        project_id: project.id,
        tasks_created: tasks.length,
        message: `Forked ${sample.id} into project ${project.name} with ${tasks.length} tasks`,
        tasks: tasks.map(specTaskView),
      });
    },
  );
}
