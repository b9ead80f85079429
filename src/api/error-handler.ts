// The Fastify error and not-found handlers: every failure leaves as {"error":{"code","message"}}.

import type { FastifyInstance } from "fastify";
import { errorBody, statusOf } from "./http-errors.ts";

export function installErrorHandlers(app: FastifyInstance): void {
  app.setErrorHandler((err, request, reply) => {
    const status = statusOf(err);
    if (status >= 500) request.log.error({ err }, "request failed");
    const retryAfter = (err as { retryAfter?: unknown }).retryAfter;
    if (typeof retryAfter === "number") reply.header("retry-after", String(retryAfter));
    reply.code(status).send(errorBody(err));
  });
  app.setNotFoundHandler((request, reply) => {
    reply.code(404).send({
      error: {
        code: "RD_ERR_NOT_FOUND",
        message: `no route ${request.method} ${request.url.split("?")[0]}`,
      },
    });
  });
}
