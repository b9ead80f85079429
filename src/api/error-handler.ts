// The Fastify error and not-found handlers: every failure leaves as {"error":{"code","message"}},
// Fastify's own errors included (see http-errors.ts), with Retry-After where the error calls for
// one. A store outage is logged at warn without a stack, at most once per 10 s with the count of
// the others: it is the database's state, not a bug, and at load every request would print one.

import type { Socket } from "node:net";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { isStoreOutage } from "../store/index.ts";
import { ApiError, errorBody, retryAfterOf, statusOf } from "./http-errors.ts";

/** A store outage is logged at most once per this interval, with the count of the ones not logged. */
const OUTAGE_LOG_INTERVAL_MS = 10_000;

export function installErrorHandlers(app: FastifyInstance): void {
  let outageLoggedAt = Number.NEGATIVE_INFINITY;
  let outagesNotLogged = 0;
  app.setErrorHandler((err, request, reply) => {
    const status = statusOf(err);
    const body = errorBody(err);
    if (isStoreOutage(err)) {
      const now = Date.now();
      if (now - outageLoggedAt < OUTAGE_LOG_INTERVAL_MS) outagesNotLogged++;
      else {
        const cause = (err as Error).message;
        request.log.warn({ code: body.error.code, cause, since_last: outagesNotLogged }, "store outage");
        outageLoggedAt = now;
        outagesNotLogged = 0;
      }
    } else if (status >= 500) request.log.error({ err }, "request failed");
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

/** Whether the app is closing: set by refuseWhileClosing, read by handlers outside Fastify too. */
export interface ClosingState {
  closing: boolean;
}

/** 503 RD_ERR_SHUTTING_DOWN, with Retry-After: 1, for a request that arrives while the server closes. */
export function shuttingDown(): ApiError {
  return new ApiError(503, "RD_ERR_SHUTTING_DOWN", "the server is shutting down; retry", {
    retryAfterSeconds: 1,
  });
}

/**
 * Requests that arrive while the server closes get 503 RD_ERR_SHUTTING_DOWN in the usual shape,
 * with Retry-After and Connection: close (Fastify's return503OnClosing answers in its own shape, so
 * the app turns it off and installs this instead). Register it before any other onRequest hook.
 * `state.closing` turns true when the app starts closing; handlers that answer outside Fastify (the
 * admin proxy) read it to refuse the same way.
 */
export function refuseWhileClosing(
  app: FastifyInstance,
  state: ClosingState = { closing: false },
): ClosingState {
  app.addHook("preClose", async () => {
    state.closing = true;
  });
  app.addHook("onRequest", async (_request, reply) => {
    if (!state.closing) return;
    reply.header("connection", "close");
    throw shuttingDown();
  });
  return state;
}

const CLIENT_ERRORS: Readonly<Record<string, { status: number; reason: string; message: string }>> =
  Object.freeze({
    ERR_HTTP_REQUEST_TIMEOUT: { status: 408, reason: "Request Timeout", message: "request timed out" },
    HPE_HEADER_OVERFLOW: {
      status: 431,
      reason: "Request Header Fields Too Large",
      message: "request headers too large",
    },
  });

/**
 * Fastify's `clientErrorHandler`: a request Node's parser rejects (malformed HTTP, headers too
 * large, too slow) is answered in the usual shape before the socket is closed.
 */
export function answerClientError(err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === "ECONNRESET" || socket.destroyed) return;
  const known = CLIENT_ERRORS[err.code ?? ""];
  const status = known?.status ?? 400;
  const body = JSON.stringify({
    error: {
      code:
        status === 400
          ? "RD_ERR_BAD_REQUEST"
          : status === 431
            ? "RD_ERR_HEADERS_TOO_LARGE"
            : "RD_ERR_TIMEOUT",
      message: known?.message ?? "malformed HTTP request",
    },
  });
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${known?.reason ?? "Bad Request"}\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy(err);
}
