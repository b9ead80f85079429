// The Fastify error and not-found handlers: every failure leaves as {"error":{"code","message"}},
// Fastify's own errors included (see http-errors.ts), with Retry-After where the error calls for
// one. A store outage is logged at warn without a stack: it is the database's state, not a bug,
// and at load every request would otherwise print one.

import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { isStoreOutage } from "../store/index.ts";
import { errorBody, retryAfterOf, statusOf } from "./http-errors.ts";

export function installErrorHandlers(app: FastifyInstance): void {
  app.setErrorHandler((err, request, reply) => {
    const status = statusOf(err);
    const body = errorBody(err);
    if (isStoreOutage(err))
      request.log.warn({ code: body.error.code, cause: (err as Error).message }, "store outage");
    else if (status >= 500) request.log.error({ err }, "request failed");
    const retryAfter = retryAfterOf(err);
    if (retryAfter !== undefined) reply.header("retry-after", String(retryAfter));
    reply.code(status).send(body);
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

/**
 * Fastify's `frameworkErrors` option: the errors its router raises before any handler exists
 * (FST_ERR_BAD_URL for a malformed percent-encoding, FST_ERR_ASYNC_CONSTRAINT), which
 * setErrorHandler never sees. They get the same shape.
 */
export function answerFrameworkError(err: Error, _request: FastifyRequest, reply: FastifyReply): void {
  reply.code(statusOf(err)).send(errorBody(err));
}
