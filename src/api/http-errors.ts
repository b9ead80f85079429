// How the API turns errors into HTTP answers. Errors carry a stable code; this module maps codes to
// status in one table and writes the one error shape every endpoint uses:
//   {"error":{"code":"RD_ERR_...","message":"..."}}
// Handlers throw; they never format error bodies themselves.

import { RevdialError } from "../common/errors.ts";

/** An error that knows its HTTP status: for input, auth and lookup failures raised by handlers. */
export class ApiError extends RevdialError {
  readonly statusCode: number;

  constructor(statusCode: number, code: string, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.statusCode = statusCode;
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
});

export interface ErrorBody {
  error: { code: string; message: string };
}

export function statusOf(err: unknown): number {
  if (err instanceof ApiError) return err.statusCode;
  if (err instanceof RevdialError) return STATUS_BY_CODE[err.code] ?? 500;
  const status = (err as { statusCode?: unknown })?.statusCode;
  return typeof status === "number" && status >= 400 && status < 600 ? status : 500;
}

export function errorBody(err: unknown): ErrorBody {
  if (err instanceof RevdialError) return { error: { code: err.code, message: err.message } };
  const fastifyCode = (err as { code?: unknown })?.code;
  const status = statusOf(err);
  const message = status >= 500 ? "internal error" : (err as Error)?.message || "bad request";
  return { error: { code: typeof fastifyCode === "string" ? fastifyCode : "RD_ERR_INTERNAL", message } };
}
