// The session's sandbox, reached only through its `sandbox-{sessionID}` tunnel: screenshot and
// clipboard. Ownership first (404 for a session that is missing or someone else's), then one call
// through the tunnel; there is no other path to a sandbox and no branch on where it runs.
//
// Screenshot and ETag. The tag must be in the headers, before the body. When the sandbox sends an
// ETag (the desktop service tags its images), the image is STREAMED from the tunnel to the client
// without buffering, and If-None-Match is passed to the sandbox so an unchanged image need not
// cross the tunnel at all. When it sends none, the API reads up to ETAG_BUFFER_BYTES (4 MiB: a full-HD
// PNG of a desktop fits) to hash it; a larger untagged image is streamed WITHOUT an ETag (no 304 for
// it). Either way the first bytes decide the Content-Type, so it is true to the bytes.
//
// Memory stays bounded whatever a sandbox answers: a screenshot over ctx.config.screenshotLimit
// (16 MiB by default) is refused with 502 RD_ERR_SANDBOX_BAD_RESPONSE naming the limit when its
// length is declared, and cut off at the limit (the client's body ends early) when it is not; in both
// cases the tunnel stream is reset, never drained. A call holds at most ETAG_BUFFER_BYTES plus the
// stream buffers; the clipboard answer is read up to MAX_CLIPBOARD_ANSWER_BYTES.

import { type Readable, Transform, type TransformCallback } from "node:stream";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { Session } from "../../store/index.ts";
import type { TunnelResponse } from "../../tunnel/types.ts";
import { principalOf, requireWrite } from "../auth.ts";
import type { ApiContext } from "../context.ts";
import { ApiError } from "../http-errors.ts";
import { etagOf, ifNoneMatchHits } from "./etag.ts";
import { IMAGE_SIGNATURE_BYTES, sniffImageType } from "./image-type.ts";
import { sessionIdParams } from "./route-schemas.ts";
import { callSandbox, peekHead, readBounded, SANDBOX_ERROR_CODES, sandboxFailed } from "./sandbox-call.ts";

/** Largest untagged screenshot held in memory to compute its ETag; larger ones stream untagged. */
export const ETAG_BUFFER_BYTES = 4 * 1024 * 1024;
/** Largest clipboard a client may set: the whole JSON body. */
export const MAX_CLIPBOARD_BYTES = 10 * 1024 * 1024;
/** Largest clipboard answer read from a sandbox (base64 of 10 MiB plus the envelope). */
const MAX_CLIPBOARD_ANSWER_BYTES = 16 * 1024 * 1024;
const CACHE_CONTROL = "private, no-cache, must-revalidate";
/** Statuses in which a stored final screenshot is served instead of asking the sandbox. */
const PAUSED_STATUSES = new Set(["stopping", "stopped", "failed"]);

interface ScreenshotQuery {
  format?: "png" | "jpeg";
  quality?: number;
}

interface Clipboard {
  type: "text" | "image";
  data: string;
}

const screenshotQuery = {
  type: "object",
  properties: {
    format: { type: "string", enum: ["png", "jpeg"] },
    quality: { type: "integer", minimum: 1, maximum: 100 },
  },
  additionalProperties: false,
} as const;

const clipboardSchema = {
  type: "object",
  required: ["type", "data"],
  properties: { type: { type: "string", enum: ["text", "image"] }, data: { type: "string" } },
  additionalProperties: false,
} as const;

function header(res: TunnelResponse, name: string): string | undefined {
  const value = res.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function screenshotPath(query: ScreenshotQuery): string {
  const params = new URLSearchParams();
  if (query.format) params.set("format", query.format);
  if (query.quality !== undefined) params.set("quality", String(query.quality));
  const qs = params.toString();
  return qs ? `/screenshot?${qs}` : "/screenshot";
}

function sendImage(request: FastifyRequest, reply: FastifyReply, bytes: Buffer, fallbackType: string) {
  const etag = etagOf(bytes);
  reply.header("ETag", etag).header("Cache-Control", CACHE_CONTROL);
  if (ifNoneMatchHits(request.headers["if-none-match"], etag)) return reply.code(304).send();
  return reply.type(sniffImageType(bytes) ?? fallbackType).send(bytes);
}

async function servePausedScreenshot(
  ctx: ApiContext,
  request: FastifyRequest,
  reply: FastifyReply,
  session: Session,
) {
  const shot = await ctx.store.sessions.getFinalScreenshot(session.id);
  if (!shot) return null;
  reply.header("X-Paused-Screenshot", "true");
  return sendImage(request, reply, shot.bytes, shot.contentType);
}

async function relayScreenshot(
  ctx: ApiContext,
  request: FastifyRequest,
  reply: FastifyReply,
  session: Session,
) {
  const query = request.query as ScreenshotQuery;
  const ifNoneMatch = request.headers["if-none-match"];
  const res = await callSandbox(ctx, reply, session.id, {
    method: "GET",
    path: screenshotPath(query),
    headers: ifNoneMatch ? { "if-none-match": ifNoneMatch } : {},
  });
  const sandboxType = header(res, "content-type") ?? "application/octet-stream";
  const sandboxTag = header(res, "etag");
  if (res.status === 304 && sandboxTag) {
    res.body.destroy();
    return reply.code(304).header("ETag", sandboxTag).header("Cache-Control", CACHE_CONTROL).send();
  }
  if (res.status !== 200) {
    request.log.warn({ session_id: session.id, sandbox_status: res.status }, "sandbox screenshot failed");
    throw await sandboxFailed(res);
  }
  const limit = ctx.config.screenshotLimit;
  const length = header(res, "content-length");
  if (length !== undefined && !(Number(length) <= limit)) {
    res.body.destroy(); // resets the tunnel stream: the rest is never read
    throw new ApiError(
      502,
      SANDBOX_ERROR_CODES.badResponse,
      `sandbox screenshot is ${length} bytes, over the limit of ${limit} bytes`,
    );
  }
  const deadline = ctx.config.callTimeoutMs;
  if (!sandboxTag) {
    const peeked = await peekHead(res.body, ETAG_BUFFER_BYTES + 1, deadline);
    if (peeked.ended) return sendImage(request, reply, peeked.head, sandboxType);
    reply.header("Cache-Control", CACHE_CONTROL);
    if (length) reply.header("Content-Length", length);
    return reply.type(sniffImageType(peeked.head) ?? sandboxType).send(capped(peeked.body, limit));
  }
  reply.header("ETag", sandboxTag).header("Cache-Control", CACHE_CONTROL);
  if (ifNoneMatchHits(ifNoneMatch, sandboxTag)) {
    res.body.destroy();
    return reply.code(304).send();
  }
  const { head, body } = await peekHead(res.body, IMAGE_SIGNATURE_BYTES, deadline);
  if (length) reply.header("Content-Length", length);
  return reply.type(sniffImageType(head) ?? sandboxType).send(capped(body, limit));
}

/**
 * The body, failed once more than `limit` bytes went through: the reply is cut off (the client sees
 * an incomplete body, never a silently truncated image) and the tunnel stream is reset.
 */
function capped(body: Readable, limit: number): Readable {
  let seen = 0;
  const out = new Transform({
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      seen += chunk.length;
      if (seen > limit) {
        cb(new ApiError(502, SANDBOX_ERROR_CODES.badResponse, `sandbox screenshot over ${limit} bytes`));
      } else cb(null, chunk);
    },
  });
  body.on("error", (err) => out.destroy(err));
  out.once("close", () => {
    if (!body.readableEnded) body.destroy();
  });
  return body.pipe(out);
}

function isClipboard(value: unknown): value is Clipboard {
  const v = value as Partial<Clipboard> | null;
  return !!v && (v.type === "text" || v.type === "image") && typeof v.data === "string";
}

/**
 * The clipboard body is checked exactly: the app's validator coerces types (1 -> "1") and strips
 * unknown fields, but "another shape" must be a 400, so this route validates without either.
 */
function strictClipboardValidator() {
  return (body: unknown) => {
    const exact = isClipboard(body) && Object.keys(body).length === 2;
    if (exact) return { value: body };
    return { error: new Error('body must be {"type": "text" | "image", "data": string} and nothing else') };
  };
}

async function readClipboard(ctx: ApiContext, reply: FastifyReply, session: Session): Promise<Clipboard> {
  const res = await callSandbox(ctx, reply, session.id, { method: "GET", path: "/clipboard" });
  if (res.status !== 200) throw await sandboxFailed(res);
  const length = header(res, "content-length");
  if (length !== undefined && !(Number(length) <= MAX_CLIPBOARD_ANSWER_BYTES)) {
    res.body.destroy();
    throw new ApiError(
      502,
      SANDBOX_ERROR_CODES.badResponse,
      `sandbox clipboard is ${length} bytes, over the limit of ${MAX_CLIPBOARD_ANSWER_BYTES} bytes`,
    );
  }
  const raw = await readBounded(res.body, MAX_CLIPBOARD_ANSWER_BYTES, ctx.config.callTimeoutMs);
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.toString("utf8"));
  } catch {
    parsed = null;
  }
  if (!isClipboard(parsed)) {
    throw new ApiError(502, SANDBOX_ERROR_CODES.badResponse, "sandbox answered with an invalid clipboard");
  }
  return { type: parsed.type, data: parsed.data };
}

async function writeClipboard(
  ctx: ApiContext,
  reply: FastifyReply,
  session: Session,
  clip: Clipboard,
): Promise<void> {
  const body = JSON.stringify({ type: clip.type, data: clip.data });
  const res = await callSandbox(ctx, reply, session.id, {
    method: "POST",
    path: "/clipboard",
    headers: { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)) },
    body,
  });
  if (res.status < 200 || res.status >= 300) throw await sandboxFailed(res);
  res.body.resume();
}

export async function externalAgentRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  app.get<{ Params: { sessionID: string }; Querystring: ScreenshotQuery }>(
    "/api/v1/external-agents/:sessionID/screenshot",
    { preHandler: ctx.auth.preHandler, schema: { params: sessionIdParams, querystring: screenshotQuery } },
    async (request, reply) => {
      const session = await ctx.auth.loadOwnedSession(principalOf(request), request.params.sessionID);
      if (PAUSED_STATUSES.has(session.status) && session.hasFinalScreenshot) {
        const served = await servePausedScreenshot(ctx, request, reply, session);
        if (served) return served;
      }
      return relayScreenshot(ctx, request, reply, session);
    },
  );

  app.get<{ Params: { sessionID: string } }>(
    "/api/v1/external-agents/:sessionID/clipboard",
    {
      preHandler: ctx.auth.preHandler,
      schema: { params: sessionIdParams, response: { 200: clipboardSchema } },
    },
    async (request, reply) => {
      const session = await ctx.auth.loadOwnedSession(principalOf(request), request.params.sessionID);
      return readClipboard(ctx, reply, session);
    },
  );

  app.post<{ Params: { sessionID: string }; Body: Clipboard }>(
    "/api/v1/external-agents/:sessionID/clipboard",
    {
      preHandler: ctx.auth.preHandler,
      bodyLimit: MAX_CLIPBOARD_BYTES,
      schema: { params: sessionIdParams, body: clipboardSchema },
      validatorCompiler: ({ httpPart }) => (httpPart === "body" ? strictClipboardValidator() : () => true),
    },
    async (request, reply) => {
      const principal = principalOf(request);
      const session = await ctx.auth.loadOwnedSession(principal, request.params.sessionID);
      requireWrite(principal);
      await writeClipboard(ctx, reply, session, request.body);
      await ctx.store.sessions.touchActivity(session.id);
      request.log.debug({ session_id: session.id, runner_id: `sandbox-${session.id}` }, "clipboard set");
      return reply.code(204).send();
    },
  );
}
