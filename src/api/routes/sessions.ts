// Sessions: create one (optionally for a spec task of the caller's), list the caller's (an admin
// sees all; filters status and older_than), show one with whether its sandbox is connected now.

import type { FastifyInstance } from "fastify";
import { parseDuration } from "../../common/duration.ts";
import { SESSION_STATUSES, type Session, type SessionStatus } from "../../store/index.ts";
import { principalOf, requireUser, requireWrite } from "../auth.ts";
import type { ApiContext } from "../context.ts";
import { ApiError } from "../http-errors.ts";
import { idParams, sessionSchema } from "./route-schemas.ts";
import { type SessionView, sessionView } from "./route-views.ts";
import { loadVisibleTask } from "./spec-tasks.ts";

interface CreateSessionBody {
  name?: string;
  spec_task_id?: string;
}

interface ListQuery {
  status?: SessionStatus;
  older_than?: string;
  /** Admins: `me` for their own sessions only, or a user id. Ignored for everyone else. */
  owner?: string;
}

// Null too: every field is optional, so a POST with no body at all is a valid request.
const createSessionBody = {
  type: ["object", "null"],
  properties: {
    name: { type: "string", maxLength: 200 },
    spec_task_id: { type: "string", minLength: 1, maxLength: 64 },
  },
  additionalProperties: false,
} as const;

const listQuery = {
  type: "object",
  properties: {
    status: { type: "string", enum: [...SESSION_STATUSES] },
    older_than: { type: "string", minLength: 1, maxLength: 32 },
    owner: { type: "string", minLength: 1, maxLength: 64 },
  },
  additionalProperties: false,
} as const;

export function viewOf(ctx: ApiContext, session: Session): SessionView {
  return sessionView(session, ctx.dialer.isConnected(`sandbox-${session.id}`));
}

function olderThanCutoff(text: string | undefined): Date | undefined {
  if (text === undefined) return undefined;
  try {
    return new Date(Date.now() - parseDuration(text));
  } catch (err) {
    throw new ApiError(400, "RD_ERR_INVALID_DURATION", (err as Error).message);
  }
}

export async function sessionRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  app.post<{ Body: CreateSessionBody | null }>(
    "/api/v1/sessions",
    {
      preHandler: ctx.auth.preHandler,
      schema: { body: createSessionBody, response: { 201: sessionSchema } },
    },
    async (request, reply) => {
      const principal = principalOf(request);
      const ownerId = requireUser(principal);
      requireWrite(principal);
      await ctx.quotas.checkSessions(ownerId);
      const body = request.body ?? {};
      const task = body.spec_task_id ? await loadVisibleTask(ctx, principal, body.spec_task_id) : null;
      const session = await ctx.store.sessions.create({
        ownerId,
        name: body.name ?? task?.name,
        specTaskId: task?.id,
      });
      request.log.info({ session_id: session.id, user_id: ownerId }, "session created");
      return reply.code(201).send(viewOf(ctx, session));
    },
  );

  app.get<{ Querystring: ListQuery }>(
    "/api/v1/sessions",
    {
      preHandler: ctx.auth.preHandler,
      schema: { querystring: listQuery, response: { 200: { type: "array", items: sessionSchema } } },
    },
    async (request) => {
      const principal = principalOf(request);
      const userId = requireUser(principal);
      const { status, older_than, owner } = request.query;
      const ownerId = !principal.admin || owner === "me" ? userId : owner;
      const sessions = await ctx.store.sessions.list({
        ownerId,
        status,
        createdBefore: olderThanCutoff(older_than),
      });
      return sessions.map((s) => viewOf(ctx, s));
    },
  );

  app.get<{ Params: { id: string } }>(
    "/api/v1/sessions/:id",
    { preHandler: ctx.auth.preHandler, schema: { params: idParams, response: { 200: sessionSchema } } },
    async (request) => viewOf(ctx, await ctx.auth.loadOwnedSession(principalOf(request), request.params.id)),
  );
}
