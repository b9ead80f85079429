// Calls into a session's sandbox through its tunnel, for the external-agents routes: the one path
// (`sandbox-{sessionID}`, no fallback), a deadline, cancellation when the client goes away, and
// bounded reads of the sandbox's answer. Tunnel failures keep their codes (503 not connected, 504
// deadline, 502 stream failed); a sandbox that answers with an error status becomes a 502 here.

import type { Readable } from "node:stream";
import type { FastifyReply } from "fastify";
import type { TunnelRequest, TunnelResponse } from "../../tunnel/types.ts";
import type { ApiContext } from "../context.ts";
import { ApiError } from "../http-errors.ts";

export const SANDBOX_ERROR_CODES = Object.freeze({
  /** The sandbox answered with a status the route does not accept. */
  status: "RD_ERR_SANDBOX_ERROR",
  /** The sandbox's answer was malformed or larger than its bound. */
  badResponse: "RD_ERR_SANDBOX_BAD_RESPONSE",
  /** The sandbox's body did not arrive within the call deadline. */
  timeout: "RD_ERR_TUNNEL_TIMEOUT",
});

export function sandboxRunnerId(sessionId: string): string {
  return `sandbox-${sessionId}`;
}

/**
 * Sends one request to the session's sandbox (the desktop target). The call is aborted when the
 * client's connection closes before the reply is done; the deadline for headers is callTimeoutMs.
 * It holds one of the caller's call slots (quotas.ts) until the reply is done: throws 429 when the
 * caller has none left.
 */
export function callSandbox(
  ctx: ApiContext,
  reply: FastifyReply,
  sessionId: string,
  req: Omit<TunnelRequest, "timeoutMs" | "signal">,
): Promise<TunnelResponse> {
  ctx.quotas.holdCallFor(reply.request.principal, reply.raw);
  const controller = new AbortController();
  reply.raw.once("close", () => {
    if (!reply.raw.writableFinished) controller.abort();
  });
  return ctx.dialer.request(sandboxRunnerId(sessionId), {
    target: "desktop",
    ...req,
    timeoutMs: ctx.config.callTimeoutMs,
    signal: controller.signal,
  });
}

/** Bytes of a failed sandbox answer read for its message; the rest is discarded. */
const FAILURE_MESSAGE_BYTES = 1024;

/**
 * The 502 for a sandbox that answered an error status, naming the status and the sandbox's own
 * message (`sandbox answered 501: no display available`), read within a short bound.
 */
export async function sandboxFailed(response: TunnelResponse): Promise<ApiError> {
  let text = "";
  try {
    text = (await readBounded(response.body, 64 * 1024, 1000))
      .subarray(0, FAILURE_MESSAGE_BYTES)
      .toString("utf8");
  } catch {
    // No message within the bound: the status alone says what happened.
  }
  let message = text.trim();
  try {
    message = (JSON.parse(message) as { error?: { message?: string } }).error?.message ?? message;
  } catch {
    // Plain text.
  }
  const detail = message ? `: ${message.replace(/\s+/g, " ").slice(0, 200)}` : "";
  return new ApiError(502, SANDBOX_ERROR_CODES.status, `sandbox answered ${response.status}${detail}`);
}

/**
 * Reads a body into memory, at most `limit` bytes and within `deadlineMs`; past either the stream
 * is destroyed and the call fails (502 too large, 504 too slow).
 */
export function readBounded(body: Readable, limit: number, deadlineMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const fail = (err: ApiError) => {
      clearTimeout(timer);
      body.destroy();
      reject(err);
    };
    const timer = setTimeout(
      () =>
        fail(
          new ApiError(
            504,
            SANDBOX_ERROR_CODES.timeout,
            `sandbox answer not complete within ${deadlineMs} ms`,
          ),
        ),
      deadlineMs,
    );
    body.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit)
        fail(new ApiError(502, SANDBOX_ERROR_CODES.badResponse, `sandbox answer exceeds ${limit} bytes`));
      else chunks.push(chunk);
    });
    body.once("end", () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
    body.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/**
 * Reads at least `n` bytes of `stream` (fewer if it ends first) without consuming them: the
 * returned body yields the whole stream from its first byte. Past `deadlineMs` the stream is
 * destroyed (its tunnel stream reset) and the call fails with 504.
 */
export function peekHead(
  stream: Readable,
  n: number,
  deadlineMs: number,
): Promise<{ head: Buffer; body: Readable; ended: boolean }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(() => {
      cleanup();
      stream.destroy();
      reject(
        new ApiError(504, SANDBOX_ERROR_CODES.timeout, `sandbox answer not complete within ${deadlineMs} ms`),
      );
    }, deadlineMs);
    const cleanup = () => {
      clearTimeout(timer);
      stream.off("readable", onReadable);
      stream.off("end", onEnd);
      stream.off("error", onError);
    };
    const finish = (ended: boolean) => {
      cleanup();
      const head = Buffer.concat(chunks);
      if (!ended) stream.unshift(head);
      resolve({ head, body: stream, ended });
    };
    function onReadable() {
      let chunk: Buffer | null = null;
      while (size < n) {
        chunk = stream.read() as Buffer | null;
        if (chunk === null) break;
        chunks.push(chunk);
        size += chunk.length;
      }
      if (size >= n) finish(false);
    }
    const onEnd = () => finish(true);
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    stream.on("readable", onReadable);
    stream.once("end", onEnd);
    stream.once("error", onError);
  });
}
