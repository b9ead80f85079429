// Assembles the control plane's HTTP app: error handling, request logging, health (/healthz for
// liveness, /readyz for readiness: the store answers), metrics, the
// tunnel routes and the control-plane routes. The parts are built by the caller (server.ts) and
// passed in, so tests can assemble an app around their own store or registry.

import Fastify, { type FastifyInstance, LogController } from "fastify";
import type { Logger } from "../common/logger.ts";
import { authenticateBeforeBody } from "./auth.ts";
import type { ApiContext } from "./context.ts";
import {
  answerClientError,
  answerFrameworkError,
  installErrorHandlers,
  refuseWhileClosing,
} from "./error-handler.ts";
import type { ApiMetrics } from "./metrics.ts";
import { controlPlaneRoutes } from "./routes/control-plane.ts";
import { revdialRoutes } from "./routes/revdial.ts";
import type { TunnelEndpoint } from "./tunnel/tunnel-endpoint.ts";

/** How long /readyz waits for the store's answer. */
const READY_PING_TIMEOUT_MS = 2000;

export interface AppParts {
  ctx: ApiContext;
  endpoint: TunnelEndpoint;
  metrics: ApiMetrics;
  logger: Logger;
  https?: { key: Buffer; cert: Buffer } | null;
}

/**
 * Largest body of a JSON route (1 MiB). Routes that need more say so themselves: the clipboard
 * (10 MiB, external-agents.ts); the admin proxy streams its body under ctx.config.bodyLimit.
 */
export const JSON_BODY_LIMIT = 1024 * 1024;

export async function buildApp(parts: AppParts): Promise<FastifyInstance> {
  const { ctx, metrics } = parts;
  const app = Fastify({
    loggerInstance: parts.logger,
    // One line per request comes from logEveryRequest below, with the fields we want.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: JSON_BODY_LIMIT,
    requestIdHeader: false,
    // Requests during close get 503 from refuseWhileClosing, in the usual error shape.
    return503OnClosing: false,
    frameworkErrors: answerFrameworkError,
    clientErrorHandler: answerClientError,
    forceCloseConnections: "idle",
    ...(parts.https ? { https: parts.https } : {}),
  }) as unknown as FastifyInstance;
  app.decorateRequest("principal", null);
  installErrorHandlers(app);
  refuseWhileClosing(app);
  authenticateBeforeBody(app, ctx.auth);
  logEveryRequest(app, metrics, parts.logger);

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
  return app;
}

/**
 * One log line per request, with status and duration, and session_id / runner_id when the route
 * names one. Calls through the tunnel are hot: they log at debug so a load does not flood the log.
 */
function logEveryRequest(app: FastifyInstance, metrics: ApiMetrics, logger: Logger): void {
  app.addHook("onResponse", async (request, reply) => {
    const route = request.routeOptions.url ?? "unmatched";
    const status = reply.statusCode;
    metrics.httpRequests.inc({ route, status: `${Math.floor(status / 100)}xx` });
    const hot = route.includes("/proxy/");
    const level = status >= 500 ? "warn" : hot ? "debug" : "info";
    if (!logger.isLevelEnabled(level)) return;
    const params = (request.params ?? {}) as Record<string, string | undefined>;
    const fields: Record<string, unknown> = {
      method: request.method,
      path: request.url.split("?")[0],
      status,
      duration_ms: Math.round(reply.elapsedTime * 100) / 100,
    };
    const sessionId = params.sessionID ?? params.sessionId ?? params.id;
    if (sessionId?.startsWith("ses_")) {
      fields.session_id = sessionId;
      fields.runner_id = `sandbox-${sessionId}`;
    }
    if (params.runnerId) fields.runner_id = params.runnerId;
    request.log[level](fields, "request");
  });
}
