// The tunnel's HTTP surface: the tunnel endpoint itself (an upgrade, handled on the raw server),
// the admin's view of live tunnels, and the admin proxy that passes any request through a runner's
// tunnel: GET|POST|PUT|PATCH|DELETE /api/v1/revdial/{runnerId}/proxy/{path}.

import { type Readable, Transform, type TransformCallback } from "node:stream";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { RUNNER_ID_PATTERN, TUNNEL_PATH } from "../../tunnel/constants.ts";
import { BodyTooLargeError, TunnelAbortedError, TunnelStreamError } from "../../tunnel/errors.ts";
import { copyEndToEnd } from "../../tunnel/headers.ts";
import { UPGRADE_STRIPPED_CODE, UPGRADE_STRIPPED_SERVER_MESSAGE } from "../../tunnel/upgrade-diagnosis.ts";
import { principalOf, requireAdmin, requireWrite } from "../auth.ts";
import type { ApiContext } from "../context.ts";
import { ApiError, errorBody, statusOf } from "../http-errors.ts";
import type { TunnelEndpoint } from "../tunnel/tunnel-endpoint.ts";
import { readBounded } from "./sandbox-call.ts";

export interface RevdialRouteOptions {
  ctx: ApiContext;
  endpoint: TunnelEndpoint;
}

const PROXY_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"] as const;

export async function revdialRoutes(
  app: FastifyInstance,
  { ctx, endpoint }: RevdialRouteOptions,
): Promise<void> {
  app.server.on("upgrade", (req, socket, head) => {
    if (endpoint.matches(req)) void endpoint.handleUpgrade(req, socket, head);
    else if (ctx.sync?.matches(req)) void ctx.sync.handleUpgrade(req, socket, head);
    else {
      socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    }
  });

  // A plain GET here is either the seed's hijacked v1 control connection (the endpoint takes the
  // socket) or a handshake whose Upgrade header a proxy dropped: name that cause (426
  // RD_ERR_TUNNEL_UPGRADE_STRIPPED) instead of a bare 404, so the agent's log says it. The rule that
  // tells them apart is in src/api/tunnel/legacy-hijack.ts.
  app.get(TUNNEL_PATH, async (request, reply) => {
    if (endpoint.handlePlainRequest(request.raw, reply.raw)) return reply.hijack();
    throw new ApiError(426, UPGRADE_STRIPPED_CODE, UPGRADE_STRIPPED_SERVER_MESSAGE);
  });

  app.get("/api/v1/revdial/connections", { preHandler: ctx.auth.preHandler }, async (request) => {
    requireAdmin(principalOf(request));
    return describeConnections(ctx);
  });

  await app.register(async (scope) => {
    // Bodies pass through as streams: no parsing, no buffering.
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser("*", (_req, _payload, done) => done(null));
    scope.route({
      method: [...PROXY_METHODS],
      url: "/api/v1/revdial/:runnerId/proxy/*",
      preHandler: ctx.auth.preHandler,
      errorHandler: (err, request, reply) => sendProxyError(request, reply, err),
      handler: (request, reply) => proxy(ctx, request, reply),
    });
  });
}

async function describeConnections(ctx: ApiContext) {
  const stats = ctx.dialer.list();
  return Promise.all(
    stats.map(async (s) => {
      const sessionId = s.runner_id.startsWith("sandbox-") ? s.runner_id.slice("sandbox-".length) : null;
      const session = sessionId ? await ctx.store.sessions.get(sessionId).catch(() => null) : null;
      return { ...s, session_id: session ? session.id : null, owner: session ? session.ownerId : null };
    }),
  );
}

/** The proxy route's raw path: the runner id segment as sent, and everything after `/proxy`. */
const PROXY_PATH = /^\/api\/v1\/revdial\/([^/?#]*)\/proxy(\/[^#]*)$/;

/**
 * The runner id and the path the agent receives, from the URL as the caller sent it. The id is
 * percent-decoded once (Fastify's param) and then validated; the path is the raw remainder after
 * `/proxy`, byte for byte, so it never carries the runner id however the id was encoded.
 */
export function proxyTarget(rawUrl: string, decodedId: string): { runnerId: string; path: string } {
  const match = PROXY_PATH.exec(rawUrl);
  if (!match || !RUNNER_ID_PATTERN.test(decodedId)) {
    throw new ApiError(400, "RD_ERR_TUNNEL_INVALID_RUNNER_ID", "invalid runner ID format");
  }
  return { runnerId: decodedId, path: match[2] };
}

async function proxy(ctx: ApiContext, request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
  const principal = principalOf(request);
  requireAdmin(principal);
  if (request.method !== "GET" && request.method !== "HEAD") requireWrite(principal);
  ctx.quotas.holdCallFor(principal, reply);
  const { runnerId, path } = proxyTarget(
    request.raw.url ?? "/",
    (request.params as { runnerId: string }).runnerId,
  );
  const limit = ctx.config.bodyLimit;
  const declared = Number(request.headers["content-length"] ?? 0);
  if (declared > limit) throw new BodyTooLargeError(limit);
  const raw = request.raw;
  const hasBody = declared > 0 || request.headers["transfer-encoding"] !== undefined;
  // A caller that is gone before the call starts (its body cut off while auth ran) never reaches the
  // sandbox: nothing is sent on its behalf.
  if (raw.destroyed && !raw.complete) throw new TunnelAbortedError();
  const abort = new AbortController();
  const limiter = hasBody ? raw.pipe(limitBytes(limit)) : null;
  raw.once("close", () => {
    if (raw.complete) return;
    // The body was cut off: the stream towards the sandbox is reset, never ended (an ended stream
    // would deliver a truncated upload as complete).
    limiter?.destroy(new TunnelAbortedError());
    if (!reply.sent) abort.abort(new Error("client went away"));
  });
  // A caller gone before the answer (its body complete or none) cancels the call all the same.
  reply.raw.once("close", () => {
    if (!reply.raw.writableFinished) abort.abort(new Error("client went away"));
  });
  let res: Awaited<ReturnType<typeof ctx.dialer.request>>;
  try {
    res = await ctx.dialer.request(runnerId, {
      method: request.method,
      path,
      headers: forwardHeaders(request),
      body: limiter,
      signal: abort.signal,
    });
  } catch (err) {
    // A body cut off at the limit resets the stream; the caller should hear why.
    throw limiter?.errored instanceof BodyTooLargeError ? limiter.errored : err;
  }
  reply.code(res.status);
  reply.headers(res.headers);
  const length = Number(res.headers["content-length"]);
  if (length <= SMALL_ANSWER)
    return reply.send(await readWhole(res.body, length, runnerId, ctx.config.callTimeoutMs));
  return reply.send(res.body);
}

/** Answers up to this size leave in one write, not as a piped stream (most calls are small). */
const SMALL_ANSWER = 64 * 1024;

/** The whole small answer, bounded by its declared length and the call deadline. */
async function readWhole(
  body: Readable,
  length: number,
  runnerId: string,
  deadlineMs: number,
): Promise<Buffer> {
  const whole = await readBounded(body, length, deadlineMs);
  if (whole.length !== length) {
    throw new TunnelStreamError(runnerId, `sandbox sent ${whole.length} bytes, declared ${length}`);
  }
  return whole;
}

/**
 * Headers the sandbox sees: the caller's end-to-end headers (copyEndToEnd drops the hop-by-hop
 * ones, those named in Connection, and Proxy-Authorization), minus its credentials for this API.
 */
export function forwardHeaders(request: {
  headers: Record<string, string | string[] | undefined>;
  ip: string;
}): Record<string, string | string[]> {
  const out = copyEndToEnd(request.headers);
  delete out.authorization;
  delete out["x-api-key"];
  out["x-forwarded-for"] = request.ip;
  return out;
}

/** Fails the stream once more than `limit` bytes went through. */
function limitBytes(limit: number): Transform {
  let seen = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      seen += chunk.length;
      if (seen > limit) cb(new BodyTooLargeError(limit));
      else cb(null, chunk);
    },
  });
}

/**
 * Proxy errors keep the seed's plain-text form (`Sandbox not connected: no connection`) unless the
 * caller accepts JSON only, in which case it gets the usual {"error":{"code","message"}}.
 */
function sendProxyError(request: FastifyRequest, reply: FastifyReply, err: unknown): FastifyReply {
  const status = statusOf(err);
  if (status >= 500 && status !== 503 && status !== 502 && status !== 504) {
    request.log.error({ err }, "proxy call failed");
  }
  const body = errorBody(err);
  if (reply.sent || reply.raw.headersSent) {
    reply.raw.destroy();
    return reply;
  }
  reply.code(status);
  // A body left unread (refused as too large, or cut off) would be parsed as the next request.
  if (!request.raw.complete) reply.header("connection", "close");
  if (acceptsJsonOnly(request.headers.accept)) return reply.send(body);
  return reply.type("text/plain; charset=utf-8").send(body.error.message);
}

function acceptsJsonOnly(accept: string | undefined): boolean {
  if (!accept) return false;
  const types = accept.split(",").map((t) => t.split(";")[0].trim().toLowerCase());
  return types.includes("application/json") && !types.some((t) => t.startsWith("text/") || t === "*/*");
}
