// The tunnel's HTTP surface in Fastify: the tunnel endpoint itself (an upgrade, handled on the raw
// server) and the admin's view of live tunnels. The admin proxy that passes any request through a
// runner's tunnel (/api/v1/revdial/{runnerId}/proxy/{path}) answers ahead of Fastify: admin-proxy.ts.

import type { FastifyInstance } from "fastify";
import { TUNNEL_PATH } from "../../tunnel/constants.ts";
import { UPGRADE_STRIPPED_CODE, UPGRADE_STRIPPED_SERVER_MESSAGE } from "../../tunnel/upgrade-diagnosis.ts";
import { principalOf, requireAdmin } from "../auth.ts";
import type { ApiContext } from "../context.ts";
import { ApiError } from "../http-errors.ts";
import type { TunnelEndpoint } from "../tunnel/tunnel-endpoint.ts";

export interface RevdialRouteOptions {
  ctx: ApiContext;
  endpoint: TunnelEndpoint;
}

export async function revdialRoutes(
  app: FastifyInstance,
  { ctx, endpoint }: RevdialRouteOptions,
): Promise<void> {
  app.server.on("upgrade", (req, socket, head) => {
    if (endpoint.matches(req)) void endpoint.handleUpgrade(req, socket, head);
    else if (ctx.sync?.matches(req)) void ctx.sync.handleUpgrade(req, socket, head);
    else {
      socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    }
  });

  // A plain GET here is either the seed's hijacked v1 control connection (the endpoint takes the
  // socket) or a handshake whose Upgrade header a proxy dropped: name that cause (426
  // RD_ERR_TUNNEL_UPGRADE_STRIPPED) instead of a bare 404, so the agent's log says it. The rule that
  // tells them apart is in src/api/tunnel/legacy-hijack.ts.
  app.get(TUNNEL_PATH, async (request, reply) => {
    if (endpoint.handlePlainRequest(request.raw, reply.raw)) return reply.hijack();
    throw new ApiError(426, UPGRADE_STRIPPED_CODE, UPGRADE_STRIPPED_SERVER_MESSAGE);
  });

  app.get("/api/v1/revdial/connections", { preHandler: ctx.auth.preHandler }, async (request) => {
    requireAdmin(principalOf(request));
    return describeConnections(ctx);
  });
}

async function describeConnections(ctx: ApiContext) {
  // A cluster's replica lists every replica's tunnels, each with its `replica`.
  const stats = ctx.dialer.listAll ? await ctx.dialer.listAll() : ctx.dialer.list();
  return Promise.all(
    stats.map(async (s) => {
      const sessionId = s.runner_id.startsWith("sandbox-") ? s.runner_id.slice("sandbox-".length) : null;
      const session = sessionId ? await ctx.store.sessions.get(sessionId).catch(() => null) : null;
      return { ...s, session_id: session ? session.id : null, owner: session ? session.ownerId : null };
    }),
  );
}
