// Sandbox hosts ("Wolf instances"): an admin creates a host and gets its key; the host registers,
// heartbeats and reports sandboxes that ended on their own, for its own id only.
//
//   POST   /api/v1/wolf-instances                 {id, name?, max_sandboxes?, labels?} -> 201 {...host, key}
//          admin, write key. 409 RD_ERR_WOLF_EXISTS when the id is taken. The key (`rdh-…`) is
//          shown once; it registers that host and its `wolf-{id}` tunnel and nothing else.
//   POST   /api/v1/wolf-instances/{id}/rotate-key -> 200 {id, key}: a new key, every earlier one
//          revoked and the host's live tunnel cut (admin, write key).
//   POST   /api/v1/wolf-instances/register        {id?, name, address?, max_sandboxes?, labels?}
//          an admin key creates or refreshes any host. A host key (its own id only) or the runner
//          token (ids an admin created only, else 403 RD_ERR_WOLF_NOT_CREATED) refreshes name,
//          address and labels, and sets the capacity to what it asks for, capped at the admin's
//          max_sandboxes: a host can lower its capacity, never raise it.
//   POST   /api/v1/wolf-instances/{id}/heartbeat  -> 200; 404 for an unknown host
//   GET    /api/v1/wolf-instances                 -> [{id, name, status, last_heartbeat, ...}]; a host
//          key sees only its own record
//   DELETE /api/v1/wolf-instances/{id}            -> 200 {message, id} (admin, write key); the host's
//          keys go with it and its live tunnel is cut
//   POST   /api/v1/wolf-instances/{id}/lobbies/{lobbyID}/exited  {session_id, exit_code?, signal?}
//          only for a session the API placed on that host and lobby; 404 otherwise.
// A user key may do none of these: hosts are infrastructure, not tenants' property. Every write
// needs a write key, an admin's included.

import type { FastifyInstance } from "fastify";
import { hasCode } from "../../common/errors.ts";
import { isSessionId, STORE_ERROR_CODES, type WolfInstance } from "../../store/index.ts";
import {
  AUTH_ERROR_CODES,
  hostNotCreated,
  type Principal,
  principalOf,
  requireAdmin,
  requireWrite,
} from "../auth.ts";
import type { ApiContext } from "../context.ts";
import { ApiError } from "../http-errors.ts";
import { evictTunnel, Scheduler, wolfRunnerId } from "../scheduler.ts";
import type { WolfInstanceView } from "../views.ts";

/** A host id: what follows `wolf-` in its runner id. */
const HOST_ID = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";

interface RegisterBody {
  id?: string;
  name: string;
  address?: string;
  max_sandboxes?: number;
  labels?: Record<string, string>;
}

const registerBody = {
  type: "object",
  required: ["name"],
  properties: {
    id: { type: "string", pattern: HOST_ID },
    name: { type: "string", minLength: 1, maxLength: 200 },
    address: { type: "string", maxLength: 500 },
    max_sandboxes: { type: "integer", minimum: 1, maximum: 10_000 },
    labels: { type: "object", additionalProperties: { type: "string", maxLength: 500 }, maxProperties: 64 },
  },
  additionalProperties: false,
} as const;

interface CreateBody {
  id: string;
  name?: string;
  max_sandboxes?: number;
  labels?: Record<string, string>;
}

const createBody = {
  type: "object",
  required: ["id"],
  properties: {
    id: { type: "string", pattern: HOST_ID },
    name: { type: "string", minLength: 1, maxLength: 200 },
    max_sandboxes: { type: "integer", minimum: 1, maximum: 10_000 },
    labels: registerBody.properties.labels,
  },
  additionalProperties: false,
} as const;

const hostParams = {
  type: "object",
  required: ["id"],
  properties: { id: { type: "string", pattern: HOST_ID } },
} as const;

const exitedParams = {
  type: "object",
  required: ["id", "lobbyID"],
  properties: {
    id: { type: "string", pattern: HOST_ID },
    lobbyID: { type: "string", minLength: 1, maxLength: 64 },
  },
} as const;

const exitedBody = {
  type: "object",
  required: ["session_id"],
  properties: {
    session_id: { type: "string", minLength: 1, maxLength: 64 },
    exit_code: { type: ["integer", "null"] },
    signal: { type: ["string", "null"], maxLength: 32 },
  },
} as const;

export function wolfInstanceView(host: WolfInstance, tunnelConnected: boolean): WolfInstanceView {
  return {
    id: host.id,
    name: host.name,
    address: host.address,
    status: host.status,
    last_heartbeat: host.lastHeartbeat ? host.lastHeartbeat.toISOString() : null,
    connected_sandboxes: host.connectedSandboxes,
    max_sandboxes: host.maxSandboxes,
    max_sandboxes_limit: host.maxSandboxesLimit,
    labels: host.labels,
    tunnel_connected: tunnelConnected,
    created_at: host.createdAt.toISOString(),
    updated_at: host.updatedAt.toISOString(),
  };
}

/**
 * May `principal` act for host `hostId` (register, heartbeat, report an exit)? An admin for any host;
 * the runner token for any host (an admin must have created it); a host key for its own only.
 * Everyone else gets 403. Every such call writes, so a read-only key gets 403 too.
 */
function requireHostAuthority(principal: Principal, hostId: string | null): void {
  const mayAct =
    principal.scope === "runner" ||
    principal.admin ||
    (principal.scope === "host" && (hostId === null || hostId === principal.hostId));
  if (!mayAct) {
    const message =
      principal.scope === "host"
        ? `a host key may act only for its own host (${principal.hostId})`
        : "Wolf instances need a host key or an admin key";
    throw new ApiError(403, AUTH_ERROR_CODES.forbidden, message);
  }
  requireWrite(principal);
}

/** Reading the host list: admins, the runner token, and host keys (their own record only). */
function requireHostReader(principal: Principal): void {
  if (principal.scope === "runner" || principal.scope === "host" || principal.admin) return;
  throw new ApiError(403, AUTH_ERROR_CODES.forbidden, "Wolf instances need a host key or an admin key");
}

function requireAdminWrite(principal: Principal): void {
  requireAdmin(principal);
  requireWrite(principal);
}

/** Cuts a host's live tunnel at once (its keys are gone); a no-op until the registry has evict(). */
function evictHost(ctx: ApiContext, hostId: string, reason: string): Promise<void> {
  return evictTunnel(ctx.dialer, wolfRunnerId(hostId), reason);
}

function notFound(id: string): ApiError {
  return new ApiError(404, "RD_ERR_WOLF_NOT_FOUND", `Wolf instance ${id} not found`);
}

export async function wolfInstanceRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  const scheduler = new Scheduler(ctx);
  const view = (host: WolfInstance) => wolfInstanceView(host, ctx.dialer.isConnected(wolfRunnerId(host.id)));

  app.post<{ Body: CreateBody }>(
    "/api/v1/wolf-instances",
    { preHandler: ctx.auth.preHandler, schema: { body: createBody } },
    async (request, reply) => {
      const principal = principalOf(request);
      requireAdminWrite(principal);
      const b = request.body;
      let host: WolfInstance;
      try {
        host = await ctx.store.wolfInstances.create({
          id: b.id,
          name: b.name ?? b.id,
          maxSandboxes: b.max_sandboxes,
          labels: b.labels,
        });
      } catch (err) {
        if (hasCode(err, STORE_ERROR_CODES.conflict)) {
          throw new ApiError(409, "RD_ERR_WOLF_EXISTS", `Wolf instance ${b.id} already exists`);
        }
        throw err;
      }
      const { apiKey } = await ctx.auth.createHostKey(host.id, principal.userId as string);
      request.log.info({ wolf_id: host.id, max_sandboxes: host.maxSandboxes }, "Wolf instance created");
      return reply.code(201).send({ ...view(host), key: apiKey });
    },
  );

  app.post<{ Params: { id: string } }>(
    "/api/v1/wolf-instances/:id/rotate-key",
    { preHandler: ctx.auth.preHandler, schema: { params: hostParams } },
    async (request) => {
      const principal = principalOf(request);
      requireAdminWrite(principal);
      const { id } = request.params;
      if (!(await ctx.store.wolfInstances.get(id))) throw notFound(id);
      const { apiKey } = await ctx.auth.createHostKey(id, principal.userId as string, { replace: true });
      await evictHost(ctx, id, "host key rotated");
      request.log.info({ wolf_id: id }, "Wolf instance key rotated");
      return { id, key: apiKey };
    },
  );

  app.post<{ Body: RegisterBody }>(
    "/api/v1/wolf-instances/register",
    { preHandler: ctx.auth.preHandler, schema: { body: registerBody } },
    async (request) => {
      const principal = principalOf(request);
      const b = request.body;
      const id = b.id ?? (principal.scope === "host" ? principal.hostId : null) ?? b.name;
      requireHostAuthority(principal, id);
      if (!new RegExp(HOST_ID).test(id))
        throw new ApiError(400, "RD_ERR_WOLF_INVALID_ID", `invalid Wolf instance id "${id}"`);
      const registration = {
        id,
        name: b.name,
        address: b.address,
        maxSandboxes: b.max_sandboxes,
        labels: b.labels,
      };
      const host = principal.admin
        ? await ctx.store.wolfInstances.register(registration)
        : await ctx.store.wolfInstances.registerKnown(registration);
      if (!host) throw hostNotCreated(id);
      request.log.info(
        { wolf_id: id, max_sandboxes: host.maxSandboxes, current_load: host.connectedSandboxes },
        "Wolf instance registered",
      );
      return view(host);
    },
  );

  app.post<{ Params: { id: string } }>(
    "/api/v1/wolf-instances/:id/heartbeat",
    { preHandler: ctx.auth.preHandler, schema: { params: hostParams } },
    async (request) => {
      requireHostAuthority(principalOf(request), request.params.id);
      if (!(await ctx.store.wolfInstances.heartbeat(request.params.id))) throw notFound(request.params.id);
      request.log.debug({ wolf_id: request.params.id }, "Wolf heartbeat");
      return { status: "ok" };
    },
  );

  app.get("/api/v1/wolf-instances", { preHandler: ctx.auth.preHandler }, async (request) => {
    const principal = principalOf(request);
    requireHostReader(principal);
    if (principal.scope === "host") {
      const own = await ctx.store.wolfInstances.get(principal.hostId as string);
      return own ? [view(own)] : [];
    }
    return (await ctx.store.wolfInstances.list()).map(view);
  });

  app.delete<{ Params: { id: string } }>(
    "/api/v1/wolf-instances/:id",
    { preHandler: ctx.auth.preHandler, schema: { params: hostParams } },
    async (request) => {
      requireAdminWrite(principalOf(request));
      if (!(await ctx.store.wolfInstances.delete(request.params.id))) throw notFound(request.params.id);
      ctx.auth.forgetHost(request.params.id);
      await evictHost(ctx, request.params.id, "host deleted");
      request.log.info({ wolf_id: request.params.id }, "Wolf instance deleted");
      return { message: "Wolf instance deleted", id: request.params.id };
    },
  );

  app.post<{
    Params: { id: string; lobbyID: string };
    Body: { session_id: string; exit_code?: number | null; signal?: string | null };
  }>(
    "/api/v1/wolf-instances/:id/lobbies/:lobbyID/exited",
    { preHandler: ctx.auth.preHandler, schema: { params: exitedParams, body: exitedBody } },
    async (request) => {
      const { id, lobbyID } = request.params;
      requireHostAuthority(principalOf(request), id);
      const session = isSessionId(request.body.session_id)
        ? await ctx.store.sessions.get(request.body.session_id)
        : null;
      const fields = { wolf_id: id, lobby_id: lobbyID, session_id: request.body.session_id };
      if (!session || session.wolfInstanceId !== id || session.lobbyId !== lobbyID) {
        // A host sees only the sessions placed on it: any other looks like one that does not exist.
        request.log.warn(fields, "exit reported for a lobby the API does not place on this host");
        throw new ApiError(
          404,
          AUTH_ERROR_CODES.sessionNotFound,
          `no session ${request.body.session_id} in lobby ${lobbyID} of host ${id}`,
        );
      }
      const released = await scheduler.release(session.id, "failed");
      request.log.warn(
        { ...fields, exit_code: request.body.exit_code, signal: request.body.signal },
        "sandbox exited on its own",
      );
      return { session_id: session.id, status: released?.status ?? session.status };
    },
  );
}
