// Errors of the tunnel part, each with a stable code. The API maps them to HTTP status in
// src/api/http-errors.ts; callers match on `code`, never on the message.

import { RevdialError } from "../common/errors.ts";
import { UPGRADE_FIX } from "./upgrade-diagnosis.ts";

export class TunnelError extends RevdialError {}

/** No live tunnel for the runner id and none expected back (grace period over or never seen). */
export class TunnelNotConnectedError extends TunnelError {
  readonly runnerId: string;
  constructor(runnerId: string, options?: { cause?: unknown }) {
    super("RD_ERR_TUNNEL_NOT_CONNECTED", "Sandbox not connected: no connection", options);
    this.runnerId = runnerId;
  }
}

/** The runner was evicted (its session stopped, its keys revoked): waiting for it is pointless. */
export class TunnelEvictedError extends TunnelError {
  readonly runnerId: string;
  constructor(runnerId: string, reason: string) {
    super("RD_ERR_TUNNEL_EVICTED", `Sandbox not connected: ${runnerId} was evicted (${reason})`);
    this.runnerId = runnerId;
  }
}

/** Too many calls already wait for this runner's tunnel to come back. */
export class TunnelQueueFullError extends TunnelError {
  constructor(runnerId: string, limit: number) {
    super(
      "RD_ERR_TUNNEL_QUEUE_FULL",
      `Sandbox not connected: ${limit} calls already wait for ${runnerId} to reconnect`,
    );
  }
}

/** The call did not get its response headers within its deadline. */
export class TunnelTimeoutError extends TunnelError {
  constructor(runnerId: string, ms: number) {
    super("RD_ERR_TUNNEL_TIMEOUT", `no answer from ${runnerId} within ${ms} ms`);
  }
}

/** The caller gave up (its AbortSignal fired). */
export class TunnelAbortedError extends TunnelError {
  constructor(options?: { cause?: unknown }) {
    super("RD_ERR_TUNNEL_ABORTED", "the call was aborted", options);
  }
}

/** The tunnel closed while the call was in flight. */
export class TunnelClosedError extends TunnelError {
  constructor(runnerId: string, reason: string, options?: { cause?: unknown }) {
    super("RD_ERR_TUNNEL_CLOSED", `tunnel to ${runnerId} closed: ${reason}`, options);
  }
}

/** The stream for one call failed (reset by the agent, protocol error). */
export class TunnelStreamError extends TunnelError {
  constructor(runnerId: string, reason: string, options?: { cause?: unknown }) {
    super("RD_ERR_TUNNEL_STREAM_FAILED", `call through tunnel ${runnerId} failed: ${reason}`, options);
  }
}

/** A request body larger than the configured limit. */
export class BodyTooLargeError extends TunnelError {
  constructor(limit: number) {
    super("RD_ERR_BODY_TOO_LARGE", `request body exceeds the limit of ${limit} bytes`);
  }
}

/** The agent's handshake was refused (by status), with the server's message. */
export class HandshakeRejectedError extends TunnelError {
  readonly status: number;
  readonly retryAfterMs: number | null;
  constructor(status: number, message: string, retryAfterMs: number | null) {
    super("RD_ERR_TUNNEL_HANDSHAKE_REJECTED", `server refused the tunnel (${status}): ${message}`);
    this.status = status;
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * The answer to the agent's upgrade request was a plain HTTP answer that did not come from the
 * tunnel endpoint: most likely a reverse proxy in front of the server stripped the Upgrade and
 * Connection headers, so the server saw an ordinary GET.
 */
export class TunnelNotUpgradedError extends TunnelError {
  readonly status: number;
  readonly retryAfterMs: number | null;
  constructor(status: number, retryAfterMs: number | null) {
    super(
      "RD_ERR_TUNNEL_NOT_UPGRADED",
      `the server answered ${status} without upgrading: a proxy in front of it probably strips the ` +
        `Upgrade and Connection headers; ${UPGRADE_FIX}`,
    );
    this.status = status;
    this.retryAfterMs = retryAfterMs;
  }
}
