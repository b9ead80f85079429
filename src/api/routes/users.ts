// Users: an admin creates users (each gets its first key, shown once), lists them and manages their
// keys; anyone asks who they are.

import type { FastifyInstance } from "fastify";
import { hasCode } from "../../common/errors.ts";
import { type ApiKey, STORE_ERROR_CODES } from "../../store/index.ts";
import { principalOf, requireAdmin, requireWrite } from "../auth.ts";
import type { ApiContext } from "../context.ts";
import { ApiError } from "../http-errors.ts";
import type { KeyView, MeView } from "../views.ts";
import { userView } from "./route-views.ts";

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
    async (request): Promise<MeView> => {
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

const userIdParams = {
  type: "object",
  required: ["id"],
  properties: { id: { type: "string", minLength: 1, maxLength: 64 } },
} as const;

const keyParams = {
  type: "object",
  required: ["id", "keyId"],
  properties: {
    id: { type: "string", minLength: 1, maxLength: 64 },
    keyId: { type: "string", minLength: 1, maxLength: 64 },
  },
} as const;

const createKeyBody = {
  type: ["object", "null"],
  properties: {
    name: { type: "string", maxLength: 200 },
    access: { type: "string", enum: ["read", "write"] },
  },
  additionalProperties: false,
} as const;

function keyView(key: ApiKey): KeyView {
  return {
    id: key.id,
    user_id: key.userId,
    prefix: key.keyPrefix,
    name: key.name,
    scope: key.scope,
    access: key.access,
    session_id: key.sessionId,
    host_id: key.hostId,
    created_at: key.createdAt.toISOString(),
    last_used_at: key.lastUsedAt ? key.lastUsedAt.toISOString() : null,
    expires_at: key.expiresAt ? key.expiresAt.toISOString() : null,
  };
}

async function loadUser(ctx: ApiContext, id: string) {
  const user = await ctx.store.users.get(id);
  if (!user) throw new ApiError(404, "RD_ERR_USER_NOT_FOUND", `user ${id} not found`);
  return user;
}

/**
 * Users and their keys, for admins (the dashboard's users page):
 *   GET    /api/v1/users                     -> [{id, name, admin, created_at}]
 *   GET    /api/v1/users/{id}/keys           -> [{id, prefix, name, scope, access, ...}] (never a key)
 *   POST   /api/v1/users/{id}/keys {name?, access?} -> 201 {...key, api_key}: shown once
 *   DELETE /api/v1/users/{id}/keys/{keyId}   -> 200 {message, id}; refused at once from then on
 * Listing needs an admin key; creating and revoking an admin write key. 404 for an unknown user or
 * a key that is not that user's.
 */
export async function userKeyRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  app.get("/api/v1/users", { preHandler: ctx.auth.preHandler }, async (request) => {
    requireAdmin(principalOf(request));
    return (await ctx.store.users.list()).map(userView);
  });

  app.get<{ Params: { id: string } }>(
    "/api/v1/users/:id/keys",
    { preHandler: ctx.auth.preHandler, schema: { params: userIdParams } },
    async (request) => {
      requireAdmin(principalOf(request));
      const user = await loadUser(ctx, request.params.id);
      return (await ctx.store.apiKeys.listForUser(user.id)).map(keyView);
    },
  );

  app.post<{ Params: { id: string }; Body: { name?: string; access?: "read" | "write" } | null }>(
    "/api/v1/users/:id/keys",
    { preHandler: ctx.auth.preHandler, schema: { params: userIdParams, body: createKeyBody } },
    async (request, reply) => {
      const principal = principalOf(request);
      requireAdmin(principal);
      requireWrite(principal);
      const user = await loadUser(ctx, request.params.id);
      const body = request.body ?? {};
      const { keyId, apiKey } = await ctx.auth.createUserKey(user.id, {
        access: body.access,
        name: body.name,
      });
      const key = (await ctx.store.apiKeys.listForUser(user.id)).find((k) => k.id === keyId);
      request.log.info(
        { user_id: user.id, key_id: keyId, access: body.access ?? "write" },
        "user key created",
      );
      return reply.code(201).send({ ...(key ? keyView(key) : { id: keyId }), api_key: apiKey });
    },
  );

  app.delete<{ Params: { id: string; keyId: string } }>(
    "/api/v1/users/:id/keys/:keyId",
    { preHandler: ctx.auth.preHandler, schema: { params: keyParams } },
    async (request) => {
      const principal = principalOf(request);
      requireAdmin(principal);
      requireWrite(principal);
      const { id, keyId } = request.params;
      const user = await loadUser(ctx, id);
      const owned = (await ctx.store.apiKeys.listForUser(user.id)).some((k) => k.id === keyId);
      if (!owned || !(await ctx.store.apiKeys.revoke(keyId))) {
        throw new ApiError(404, "RD_ERR_KEY_NOT_FOUND", `key ${keyId} of user ${id} not found`);
      }
      ctx.auth.forgetKey(keyId);
      // Tunnels the key registered go with it, on whichever replica holds them.
      const tunnels = (await ctx.dialer.evictOwnedBy?.(keyId, "key revoked")) ?? 0;
      request.log.info({ user_id: id, key_id: keyId, tunnels_cut: tunnels }, "user key revoked");
      return { message: "key revoked", id: keyId };
    },
  );
}
