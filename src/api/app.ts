// Assembles the control plane's HTTP app: error handling, request logging, health (/healthz for
// liveness, /readyz for readiness: the store answers), metrics, the
// tunnel routes and the control-plane routes, in Fastify; and, ahead of Fastify on the same server,
// the admin proxy (routes/admin-proxy.ts), which answers its hot path without it. The parts are built by the caller (server.ts) and
// passed in, so tests can assemble an app around their own store or registry.

import Fastify, { type FastifyInstance, LogController } from "fastify";
import type { Logger } from "../common/logger.ts";
import { authenticateBeforeBody } from "./auth.ts";
import type { ApiContext } from "./context.ts";
import {
  answerClientError,
  answerFrameworkError,
  type ClosingState,
  installErrorHandlers,
  refuseWhileClosing,
} from "./error-handler.ts";
import { frontedServer } from "./http-server.ts";
import type { ApiMetrics } from "./metrics.ts";
import { addOpenApiRoute, registerOpenApi } from "./openapi.ts";
import { RequestLog } from "./request-log.ts";
import { AdminProxy } from "./routes/admin-proxy.ts";
import { controlPlaneRoutes } from "./routes/control-plane.ts";
import { revdialRoutes } from "./routes/revdial.ts";
import { webAppRoutes } from "./routes/web-app.ts";
import type { TunnelEndpoint } from "./tunnel/tunnel-endpoint.ts";

/** How long /readyz waits for the store's answer. */
const READY_PING_TIMEOUT_MS = 2000;

export interface AppParts {
  ctx: ApiContext;
  endpoint: TunnelEndpoint;
  metrics: ApiMetrics;
  logger: Logger;
  https?: { key: Buffer; cert: Buffer } | null;
  /** A cluster replica's id: every response carries it as `revdial-replica`. */
  replicaId?: string | null;
}

/**
 * Largest body of a JSON route (1 MiB). Routes that need more say so themselves: the clipboard
 * (10 MiB, external-agents.ts); the admin proxy streams its body under ctx.config.bodyLimit
 * (admin-proxy.ts).
 */
export const JSON_BODY_LIMIT = 1024 * 1024;

export async function buildApp(parts: AppParts): Promise<FastifyInstance> {
  const { ctx, metrics } = parts;
  const requestLog = new RequestLog({ logger: parts.logger, metrics });
  const closing: ClosingState = { closing: false };
  // The admin proxy, the hot path, answers on the raw server before Fastify sees the request.
  const proxy = new AdminProxy({ ctx, requestLog, closing });
  const app = Fastify({
    loggerInstance: parts.logger,
    // One line per request comes from logEveryRequest below (request-log.ts), with the fields we want.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: JSON_BODY_LIMIT,
    requestIdHeader: false,
    // Requests during close get 503 from refuseWhileClosing, in the usual error shape.
    return503OnClosing: false,
    frameworkErrors: answerFrameworkError,
    clientErrorHandler: answerClientError,
    forceCloseConnections: "idle",
    serverFactory: frontedServer(proxy.handle, parts.https, parts.replicaId),
    ...(parts.https ? { https: parts.https } : {}),
  }) as unknown as FastifyInstance;
  app.decorateRequest("principal", null);
  installErrorHandlers(app);
  refuseWhileClosing(app, closing);
  authenticateBeforeBody(app, ctx.auth);
  logEveryRequest(app, requestLog);
  await registerOpenApi(app, ctx.auth.preHandler);
  addOpenApiRoute(app);

  // Liveness: the process answers. It never touches the store, so an outage does not get a
  // healthy server (and its live tunnels) restarted.
  app.get("/healthz", async () => ({ status: "ok", tunnels: ctx.dialer.list().length }));
  // Readiness: the store answers a SELECT 1 within READY_PING_TIMEOUT_MS; else 503
  // RD_ERR_STORE_UNAVAILABLE with Retry-After, through the error handler.
  app.get("/readyz", async () => {
    await ctx.store.ping(READY_PING_TIMEOUT_MS);
    return { status: "ready" };
  });
  app.get("/metrics", async (_request, reply) => {
    reply.type(metrics.registry.contentType);
    return metrics.registry.metrics();
  });
  await app.register(revdialRoutes, { ctx, endpoint: parts.endpoint });
  await app.register(async (scope) => controlPlaneRoutes(scope, ctx));
  await app.register(async (scope) => webAppRoutes(scope, ctx));
  return app;
}

/** One log line and count per request Fastify answers (request-log.ts), with the route's ids. */
function logEveryRequest(app: FastifyInstance, requestLog: RequestLog): void {
  app.addHook("onResponse", async (request, reply) => {
    const params = (request.params ?? {}) as Record<string, string | undefined>;
    const id = params.sessionID ?? params.sessionId ?? params.id;
    const sessionId = id?.startsWith("ses_") ? id : undefined;
    requestLog.record(
      {
        method: request.method,
        url: request.url,
        status: reply.statusCode,
        durationMs: reply.elapsedTime,
        route: request.routeOptions.url ?? "unmatched",
        sessionId,
        runnerId: params.runnerId || (sessionId ? `sandbox-${sessionId}` : undefined),
      },
      request.log,
    );
  });
}
