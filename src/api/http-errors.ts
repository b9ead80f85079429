// How the API turns errors into HTTP answers. Errors carry a stable code; this module maps codes to
// status in one table and writes the one error shape every endpoint uses:
//   {"error":{"code":"RD_ERR_...","message":"..."}}
// Handlers throw; they never format error bodies themselves.
//
// Fastify's own errors (a body that is not JSON, an unsupported media type, a schema violation, a
// bad URL) are translated to RD_ERR_* codes in the table below, so a client never sees an FST_*
// code. A 5xx never shows internal details: store failures answer with a fixed text per code (the
// driver's message, with addresses, paths or SQL, goes to the log only), a foreign error with
// "internal error".

import { RevdialError } from "../common/errors.ts";

/** An error that knows its HTTP status: for input, auth and lookup failures raised by handlers. */
export class ApiError extends RevdialError {
  readonly statusCode: number;
  /** Sent as Retry-After (seconds) when set: for 429 and 503. */
  readonly retryAfterSeconds: number | undefined;

  constructor(
    statusCode: number,
    code: string,
    message: string,
    options?: { cause?: unknown; retryAfterSeconds?: number },
  ) {
    super(code, message, options);
    this.statusCode = statusCode;
    this.retryAfterSeconds = options?.retryAfterSeconds;
  }
}

/** Status for error codes raised below the API (tunnel, store, desktop), by code. */
const STATUS_BY_CODE: Readonly<Record<string, number>> = Object.freeze({
  RD_ERR_TUNNEL_NOT_CONNECTED: 503,
  RD_ERR_TUNNEL_QUEUE_FULL: 503,
  RD_ERR_TUNNEL_EVICTED: 503,
  RD_ERR_TUNNEL_CLOSED: 502,
  RD_ERR_TUNNEL_STREAM_FAILED: 502,
  RD_ERR_TUNNEL_TIMEOUT: 504,
  RD_ERR_TUNNEL_ABORTED: 499,
  RD_ERR_BODY_TOO_LARGE: 413,
  RD_ERR_INVALID_OPTION: 400,
  RD_ERR_STORE_CONFLICT: 409,
  RD_ERR_STORE_UNAVAILABLE: 503,
  RD_ERR_STORE_FULL: 507,
  // The store closes last during a shutdown: a request still running then may retry elsewhere.
  RD_ERR_STORE_CLOSED: 503,
});

/** What a client reads for a 5xx store error: a fixed text, never the driver's message. */
const PUBLIC_MESSAGE_BY_CODE: Readonly<Record<string, string>> = Object.freeze({
  RD_ERR_STORE_UNAVAILABLE: "the store is unavailable; retry later",
  RD_ERR_STORE_FULL: "the store is out of disk space; retry later",
  RD_ERR_STORE_CLOSED: "the server is shutting down; retry",
});

/** Retry-After (seconds) for error codes raised below the API. */
const RETRY_AFTER_BY_CODE: Readonly<Record<string, number>> = Object.freeze({
  RD_ERR_STORE_UNAVAILABLE: 5,
  RD_ERR_STORE_FULL: 60,
  RD_ERR_STORE_CLOSED: 1,
});

/** Fastify's errors, by their FST_* code: our code, and the status when Fastify's is not the one. */
const FASTIFY_ERRORS: Readonly<Record<string, { code: string; status?: number }>> = Object.freeze({
  FST_ERR_CTP_INVALID_JSON_BODY: { code: "RD_ERR_BAD_JSON" },
  FST_ERR_CTP_EMPTY_JSON_BODY: { code: "RD_ERR_BAD_JSON" },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: { code: "RD_ERR_UNSUPPORTED_MEDIA_TYPE" },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: { code: "RD_ERR_BAD_REQUEST" },
  FST_ERR_CTP_BODY_TOO_LARGE: { code: "RD_ERR_BODY_TOO_LARGE" },
  FST_ERR_VALIDATION: { code: "RD_ERR_VALIDATION" },
  FST_ERR_BAD_URL: { code: "RD_ERR_BAD_URL" },
  FST_ERR_INVALID_URL: { code: "RD_ERR_BAD_URL" },
  FST_ERR_MAX_PARAM_LENGTH: { code: "RD_ERR_BAD_URL" },
  FST_ERR_NOT_FOUND: { code: "RD_ERR_NOT_FOUND" },
  FST_ERR_HANDLER_TIMEOUT: { code: "RD_ERR_TIMEOUT" },
});

export interface ErrorBody {
  error: { code: string; message: string };
}

function fastifyCodeOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown })?.code;
  return typeof code === "string" && code.startsWith("FST_") ? code : undefined;
}

/** A 4xx/5xx status carried by a foreign error (Fastify's, or a body parser's SyntaxError). */
function carriedStatus(err: unknown): number | undefined {
  const status = (err as { statusCode?: unknown; status?: unknown })?.statusCode;
  return typeof status === "number" && status >= 400 && status < 600 ? status : undefined;
}

export function statusOf(err: unknown): number {
  if (err instanceof ApiError) return err.statusCode;
  if (err instanceof RevdialError) return STATUS_BY_CODE[err.code] ?? 500;
  const fastify = fastifyCodeOf(err);
  const mapped = fastify ? FASTIFY_ERRORS[fastify]?.status : undefined;
  return mapped ?? carriedStatus(err) ?? 500;
}

/** Seconds for Retry-After, or undefined when the error does not call for one. */
export function retryAfterOf(err: unknown): number | undefined {
  if (err instanceof ApiError) return err.retryAfterSeconds;
  if (err instanceof RevdialError) return RETRY_AFTER_BY_CODE[err.code];
  return undefined;
}

/** The code a client sees for an error that is not ours: Fastify's mapped, else by status. */
function foreignCode(err: unknown, status: number): string {
  const fastify = fastifyCodeOf(err);
  if (fastify && FASTIFY_ERRORS[fastify]) return FASTIFY_ERRORS[fastify].code;
  // A content-type parser's own error (a JSON SyntaxError from a custom parser) has no FST_ code.
  if (err instanceof SyntaxError && status === 400) return "RD_ERR_BAD_JSON";
  if (status === 404) return "RD_ERR_NOT_FOUND";
  if (status === 413) return "RD_ERR_BODY_TOO_LARGE";
  if (status === 415) return "RD_ERR_UNSUPPORTED_MEDIA_TYPE";
  return status >= 500 ? "RD_ERR_INTERNAL" : "RD_ERR_BAD_REQUEST";
}

export function errorBody(err: unknown): ErrorBody {
  const status = statusOf(err);
  if (err instanceof RevdialError) {
    // A store error's message names the database's address, files or SQL: never shown.
    const internal = status >= 500 && err.code.startsWith("RD_ERR_STORE_");
    const message = PUBLIC_MESSAGE_BY_CODE[err.code] ?? (internal ? "internal error" : err.message);
    return { error: { code: err.code, message } };
  }
  const message = status >= 500 ? "internal error" : (err as Error)?.message || "bad request";
  return { error: { code: foreignCode(err, status), message } };
}

/**
 * Any error as an ApiError a client may see: its status, code, public message and Retry-After.
 * For answers written outside Fastify's error handler (the tunnel handshake), so a store outage
 * there is a 503 with Retry-After and no internal details too.
 */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  const { code, message } = errorBody(err).error;
  return new ApiError(statusOf(err), code, message, { cause: err, retryAfterSeconds: retryAfterOf(err) });
}
