// One log line and one count in /metrics per HTTP request answered, whichever handler answered it:
// Fastify's routes (the onResponse hook in app.ts) and the admin proxy, which answers on the raw
// server ahead of Fastify (routes/admin-proxy.ts). The line carries method, path (without the
// query), status, duration_ms and, where the route names them, session_id and runner_id. Calls
// through the tunnel are hot: they log at debug so a load does not flood the log; every 5xx logs
// at warn.

import type { Logger } from "../common/logger.ts";
import type { ApiMetrics } from "./metrics.ts";

/** What one answered request leaves in the log and the metrics. */
export interface AnsweredRequest {
  method: string;
  /** The URL as the caller sent it; the query is not logged. */
  url: string;
  status: number;
  durationMs: number;
  /** The route's pattern (`/api/v1/revdial/:runnerId/proxy/*`), or `unmatched`. */
  route: string;
  sessionId?: string;
  runnerId?: string;
}

/** Where a line goes: the app's logger, or a request's child logger (which carries its reqId). */
export type LineLogger = Pick<Logger, "debug" | "info" | "warn">;

export class RequestLog {
  readonly #logger: Logger;
  readonly #metrics: ApiMetrics;

  constructor(options: { logger: Logger; metrics: ApiMetrics }) {
    this.#logger = options.logger;
    this.#metrics = options.metrics;
  }

  /** Counts the request and logs its line, on `log` (a request's child logger) when given. Never throws. */
  record(request: AnsweredRequest, log: LineLogger = this.#logger): void {
    const { route, status } = request;
    this.#metrics.countRequest(route, status);
    const hot = route.includes("/proxy/");
    const level = status >= 500 ? "warn" : hot ? "debug" : "info";
    if (!this.#logger.isLevelEnabled(level)) return;
    const fields: Record<string, unknown> = {
      method: request.method,
      path: request.url.split("?")[0],
      status,
      duration_ms: Math.round(request.durationMs * 100) / 100,
    };
    if (request.sessionId) fields.session_id = request.sessionId;
    if (request.runnerId) fields.runner_id = request.runnerId;
    log[level](fields, "request");
  }
}
