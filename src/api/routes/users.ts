// Users: an admin creates users (each gets its first key, shown once); anyone asks who they are.

import type { FastifyInstance } from "fastify";
import { hasCode } from "../../common/errors.ts";
import { STORE_ERROR_CODES } from "../../store/index.ts";
import { principalOf, requireAdmin, requireWrite } from "../auth.ts";
import type { ApiContext } from "../context.ts";
import { ApiError } from "../http-errors.ts";

const createUserBody = {
  type: "object",
  required: ["name"],
  properties: {
    name: { type: "string", minLength: 1, maxLength: 64, pattern: "^[A-Za-z0-9][A-Za-z0-9._@-]*$" },
    admin: { type: "boolean", default: false },
  },
  additionalProperties: false,
} as const;

const createdUser = {
  type: "object",
  properties: {
    id: { type: "string" },
    name: { type: "string" },
    admin: { type: "boolean" },
    api_key: { type: "string" },
  },
} as const;

const me = {
  type: "object",
  properties: {
    id: { type: ["string", "null"] },
    name: { type: ["string", "null"] },
    admin: { type: "boolean" },
    scope: { type: "string" },
    access: { type: "string" },
    session_id: { type: ["string", "null"] },
  },
} as const;

export async function userRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  app.post<{ Body: { name: string; admin?: boolean } }>(
    "/api/v1/users",
    { preHandler: ctx.auth.preHandler, schema: { body: createUserBody, response: { 201: createdUser } } },
    async (request, reply) => {
      const principal = principalOf(request);
      requireAdmin(principal);
      requireWrite(principal);
      const { name, admin } = request.body;
      try {
        const { user, apiKey } = await ctx.auth.createUser({ name, admin });
        return reply.code(201).send({ id: user.id, name: user.name, admin: user.admin, api_key: apiKey });
      } catch (err) {
        if (hasCode(err, STORE_ERROR_CODES.conflict)) {
          throw new ApiError(409, "RD_ERR_USER_EXISTS", `a user named ${name} already exists`);
        }
        throw err;
      }
    },
  );

  app.get(
    "/api/v1/users/me",
    { preHandler: ctx.auth.preHandler, schema: { response: { 200: me } } },
    async (request) => {
      const principal = principalOf(request);
      const user = principal.userId ? await ctx.store.users.get(principal.userId) : null;
      return {
        id: user?.id ?? null,
        name: user?.name ?? null,
        admin: principal.admin,
        scope: principal.scope,
        access: principal.access,
        session_id: principal.sessionId,
      };
    },
  );
}
