// Sandbox hosts ("Wolf instances"): registration and heartbeats from the hosts (runner token or an
// admin key), the list, removal (admin), and a host's report that a sandbox ended on its own.
//
//   POST   /api/v1/wolf-instances/register        {id?, name, address?, max_sandboxes?, labels?}
//   POST   /api/v1/wolf-instances/{id}/heartbeat  -> 200; 404 for an unknown host
//   GET    /api/v1/wolf-instances                 -> [{id, name, status, last_heartbeat, ...}]
//   DELETE /api/v1/wolf-instances/{id}            -> 200 {message, id}
//   POST   /api/v1/wolf-instances/{id}/lobbies/{lobbyID}/exited  {session_id, exit_code?, signal?}
// A user key may do none of the writes: hosts are infrastructure, not tenants' property.

import type { FastifyInstance } from "fastify";
import type { WolfInstance } from "../../store/index.ts";
import { AUTH_ERROR_CODES, type Principal, principalOf } from "../auth.ts";
import type { ApiContext } from "../context.ts";
import { ApiError } from "../http-errors.ts";
import { Scheduler, wolfRunnerId } from "../scheduler.ts";

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

export function wolfInstanceView(host: WolfInstance, tunnelConnected: boolean) {
  return {
    id: host.id,
    name: host.name,
    address: host.address,
    status: host.status,
    last_heartbeat: host.lastHeartbeat ? host.lastHeartbeat.toISOString() : null,
    connected_sandboxes: host.connectedSandboxes,
    max_sandboxes: host.maxSandboxes,
    labels: host.labels,
    tunnel_connected: tunnelConnected,
    created_at: host.createdAt.toISOString(),
    updated_at: host.updatedAt.toISOString(),
  };
}

/** The runner token or an admin key: what hosts and operators use. */
function requireHostAuthority(principal: Principal): void {
  if (principal.scope === "runner" || principal.admin) return;
  throw new ApiError(403, AUTH_ERROR_CODES.forbidden, "Wolf instances need the runner token or an admin key");
}

function notFound(id: string): ApiError {
  return new ApiError(404, "RD_ERR_WOLF_NOT_FOUND", `Wolf instance ${id} not found`);
}

export async function wolfInstanceRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  const scheduler = new Scheduler(ctx);
  const view = (host: WolfInstance) => wolfInstanceView(host, ctx.dialer.isConnected(wolfRunnerId(host.id)));

  app.post<{ Body: RegisterBody }>(
    "/api/v1/wolf-instances/register",
    { preHandler: ctx.auth.preHandler, schema: { body: registerBody } },
    async (request) => {
      requireHostAuthority(principalOf(request));
      const b = request.body;
      const id = b.id ?? b.name;
      if (!new RegExp(HOST_ID).test(id))
        throw new ApiError(400, "RD_ERR_WOLF_INVALID_ID", `invalid Wolf instance id "${id}"`);
      const host = await ctx.store.wolfInstances.register({
        id,
        name: b.name,
        address: b.address,
        maxSandboxes: b.max_sandboxes,
        labels: b.labels,
      });
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
      requireHostAuthority(principalOf(request));
      if (!(await ctx.store.wolfInstances.heartbeat(request.params.id))) throw notFound(request.params.id);
      request.log.debug({ wolf_id: request.params.id }, "Wolf heartbeat");
      return { status: "ok" };
    },
  );

  app.get("/api/v1/wolf-instances", { preHandler: ctx.auth.preHandler }, async (request) => {
    requireHostAuthority(principalOf(request));
    return (await ctx.store.wolfInstances.list()).map(view);
  });

  app.delete<{ Params: { id: string } }>(
    "/api/v1/wolf-instances/:id",
    { preHandler: ctx.auth.preHandler, schema: { params: hostParams } },
    async (request) => {
      requireHostAuthority(principalOf(request));
      if (!(await ctx.store.wolfInstances.delete(request.params.id))) throw notFound(request.params.id);
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
      requireHostAuthority(principalOf(request));
      const { id, lobbyID } = request.params;
      const session = await ctx.store.sessions.get(request.body.session_id);
      const fields = { wolf_id: id, lobby_id: lobbyID, session_id: request.body.session_id };
      if (!session || session.wolfInstanceId !== id || session.lobbyId !== lobbyID) {
        request.log.warn(fields, "exit reported for a lobby the API does not place on this host");
        return { session_id: request.body.session_id, status: session?.status ?? null };
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
