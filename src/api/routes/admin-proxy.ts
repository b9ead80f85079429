// The admin proxy: GET|HEAD|POST|PUT|PATCH|DELETE /api/v1/revdial/{runnerId}/proxy/{path} passes
// any request through the runner's tunnel, bodies streamed both ways. It is the API's hot path, so
// it answers on the raw node:http server, ahead of Fastify (http-server.ts offers it every request
// first; it takes only its own): per call, Fastify's router, hooks and reply cost more CPU than
// everything else the API does in front of the tunnel.
//
// What a caller sees is what the Fastify route gave, in this order:
//   - 503 RD_ERR_SHUTTING_DOWN (Retry-After: 1, Connection: close) once the app is closing;
//   - authentication before the body is read, from the principal Auth remembers for the key (no
//     store lookup per call; a store outage on a lookup is 503 RD_ERR_STORE_UNAVAILABLE); a refusal
//     while a body is still on the way closes the connection, so that body is never read;
//   - admin only (403); read-only keys may GET and HEAD only (403 RD_ERR_AUTH_READ_ONLY);
//   - one of the caller's call slots (quotas.ts) until the answer is sent (429 RD_ERR_QUOTA_CALLS);
//   - the runner id percent-decoded once, as Fastify's router decodes a parameter, then validated
//     (400); the agent receives the raw remainder after `/proxy`, query included;
//   - the body streamed under bodyLimit (413 RD_ERR_BODY_TOO_LARGE, declared or streamed); a body
//     cut off resets the tunnel stream (the target sees an aborted request, never a short complete
//     one); a caller gone before the answer cancels the call;
//   - the caller's end-to-end headers only, without its API key; the answer's end-to-end headers;
//   - errors as the seed's plain text (`Sandbox not connected: no connection`) or, for callers that
//     accept JSON only, {"error":{"code","message"}}, with the status and Retry-After of
//     http-errors.ts (504 past the call deadline, 502 a broken stream);
//   - one log line (debug; warn for a 5xx) and one count in /metrics per answer (request-log.ts).
// A URL Fastify's router would refuse (a malformed percent-encoding) is left to Fastify, which
// answers it as before (400 RD_ERR_BAD_URL).

import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http";
import { type Readable, Transform, type TransformCallback } from "node:stream";
import type { Logger } from "../../common/logger.ts";
import { pump } from "../../common/pump.ts";
import { RUNNER_ID_PATTERN } from "../../tunnel/constants.ts";
import { BodyTooLargeError, TunnelAbortedError, TunnelStreamError } from "../../tunnel/errors.ts";
import { copyEndToEnd } from "../../tunnel/headers.ts";
import type { TunnelResponse } from "../../tunnel/types.ts";
import { hasUnreadBody, type Principal, requireAdmin, requireWrite, unauthenticated } from "../auth.ts";
import type { ApiContext } from "../context.ts";
import { type ClosingState, shuttingDown } from "../error-handler.ts";
import { ApiError, errorBody, retryAfterOf, statusOf } from "../http-errors.ts";
import type { RequestLog } from "../request-log.ts";
import { readBounded } from "./sandbox-call.ts";

/** The route's pattern, as /metrics and the log name it. */
export const PROXY_ROUTE = "/api/v1/revdial/:runnerId/proxy/*";
const PROXY_PREFIX = "/api/v1/revdial/";
const PROXY_METHODS: ReadonlySet<string> = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]);
/** Bytes of a large answer buffered towards the caller before the tunnel stream is paused (pump). */
const ANSWER_BUFFER = 1024 * 1024;

const EMPTY = Buffer.alloc(0);

/** Answers up to this size leave in one write, not as a piped stream (most calls are small). */
const SMALL_ANSWER = 64 * 1024;
const JSON_TYPE = "application/json; charset=utf-8";
const TEXT_TYPE = "text/plain; charset=utf-8";

export interface AdminProxyOptions {
  ctx: ApiContext;
  requestLog: RequestLog;
  /** The app's closing state (error-handler.ts refuseWhileClosing): true once it closes. */
  closing: ClosingState;
}

/**
 * The runner id parameter of a proxy URL, percent-decoded once as Fastify's router decodes it (not
 * yet validated), or null when the URL is not the proxy route. A URL whose path holds a malformed
 * percent-encoding is null too: Fastify answers it. Never throws.
 */
export function proxyRouteParam(url: string): string | null {
  if (!url.startsWith(PROXY_PREFIX)) return null;
  const slash = url.indexOf("/", PROXY_PREFIX.length);
  if (slash < 0 || !url.startsWith("/proxy/", slash)) return null;
  // The router's path ends at the first `?` or `#`: one inside the id means another route.
  const end = pathEnd(url);
  if (end < slash) return null;
  const segment = url.slice(PROXY_PREFIX.length, slash);
  const path = end === url.length ? url : url.slice(0, end);
  if (!path.includes("%")) return segment;
  try {
    decodeURI(path);
    return decodeURIComponent(segment);
  } catch {
    return null;
  }
}

function pathEnd(url: string): number {
  const query = url.indexOf("?");
  const hash = url.indexOf("#");
  if (query < 0) return hash < 0 ? url.length : hash;
  return hash < 0 ? query : Math.min(query, hash);
}

/** The proxy route's raw path: the runner id segment as sent, and everything after `/proxy`. */
const PROXY_PATH = /^\/api\/v1\/revdial\/([^/?#]*)\/proxy(\/[^#]*)$/;

/**
 * The runner id and the path the agent receives, from the URL as the caller sent it. The id is
 * the route's parameter (percent-decoded once), validated; the path is the raw remainder after
 * `/proxy`, byte for byte, so it never carries the runner id however the id was encoded. Throws
 * 400 RD_ERR_TUNNEL_INVALID_RUNNER_ID.
 */
export function proxyTarget(rawUrl: string, decodedId: string): { runnerId: string; path: string } {
  const match = PROXY_PATH.exec(rawUrl);
  if (!match || !RUNNER_ID_PATTERN.test(decodedId)) {
    throw new ApiError(400, "RD_ERR_TUNNEL_INVALID_RUNNER_ID", "invalid runner ID format");
  }
  return { runnerId: decodedId, path: match[2] };
}

/**
 * Headers the sandbox sees: the caller's end-to-end headers (copyEndToEnd drops the hop-by-hop
 * ones, those named in Connection, and Proxy-Authorization), minus its credentials for this API.
 */
export function forwardHeaders(req: IncomingMessage): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = copyEndToEnd(req.headers, {}, CREDENTIALS);
  const ip = req.socket.remoteAddress;
  if (ip) out["x-forwarded-for"] = ip;
  return out;
}

/** The caller's credentials for this API, never passed to the sandbox. */
const CREDENTIALS: ReadonlySet<string> = new Set(["authorization", "x-api-key"]);

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

/** JSON for a caller that accepts JSON and no text (`Accept: application/json`), else text. */
export function acceptsJsonOnly(accept: string | undefined): boolean {
  if (!accept) return false;
  const types = accept.split(",").map((t) => t.split(";")[0].trim().toLowerCase());
  return types.includes("application/json") && !types.some((t) => t.startsWith("text/") || t === "*/*");
}

/** The whole small answer, bounded by its declared length and the call deadline. */
async function readWhole(body: Readable, length: number, runnerId: string, deadlineMs: number) {
  const whole = await readBounded(body, length, deadlineMs);
  if (whole.length !== length) {
    throw new TunnelStreamError(runnerId, `sandbox sent ${whole.length} bytes, declared ${length}`);
  }
  return whole;
}

/** An answer that has no body by definition (RFC 9110 §6.4.1): its headers are all there is. */
function hasNoBody(method: string, status: number): boolean {
  return method === "HEAD" || status < 200 || status === 204 || status === 304;
}

/**
 * The proxy's handler. One instance per app; it keeps no state between calls. Each call's own state
 * (its call slot, its cancellation, the answer being sent) lives in ProxyCall.
 */
export class AdminProxy {
  readonly #ctx: ApiContext;
  readonly #requestLog: RequestLog;
  readonly #closing: ClosingState;
  readonly #logger: Logger;

  constructor(options: AdminProxyOptions) {
    this.#ctx = options.ctx;
    this.#requestLog = options.requestLog;
    this.#closing = options.closing;
    this.#logger = options.ctx.logger;
  }

  /** Answers the request when it is the proxy's and returns true; else returns false. Never throws. */
  readonly handle = (req: IncomingMessage, res: ServerResponse): boolean => {
    if (!PROXY_METHODS.has(req.method as string)) return false;
    const param = proxyRouteParam(req.url as string);
    if (param === null) return false;
    const call = new ProxyCall(req, res, param, this.#requestLog);
    this.#serve(call).catch((err: unknown) => call.fail(err, this.#logger));
    return true;
  };

  async #serve(call: ProxyCall): Promise<void> {
    const { req } = call;
    if (this.#closing.closing) return call.fail(shuttingDown(), this.#logger, true);
    const { auth, quotas, config } = this.#ctx;
    const known = auth.authenticateKnown(req.headers);
    const principal: Principal | null = known !== undefined ? known : await auth.authenticate(req.headers);
    if (!principal) throw unauthenticated(req.headers);
    requireAdmin(principal);
    if (req.method !== "GET" && req.method !== "HEAD") requireWrite(principal);
    call.holdSlot(quotas.acquireCall(principal));
    const { runnerId, path } = proxyTarget(req.url as string, call.param);
    const limit = config.bodyLimit;
    const declared = Number(req.headers["content-length"] ?? 0);
    if (declared > limit) throw new BodyTooLargeError(limit);
    const hasBody = declared > 0 || req.headers["transfer-encoding"] !== undefined;
    // A caller that is gone before the call starts (its body cut off while auth ran) never reaches
    // the sandbox: nothing is sent on its behalf.
    if (req.destroyed && !req.complete) throw new TunnelAbortedError();
    const body = hasBody ? call.streamBody(limitBytes(limit)) : null;
    let answer: TunnelResponse;
    try {
      answer = await this.#ctx.dialer.request(runnerId, {
        method: req.method as string,
        path,
        headers: forwardHeaders(req),
        body,
        signal: call.signal,
      });
    } catch (err) {
      // A body cut off at the limit resets the stream; the caller should hear why.
      throw body?.errored instanceof BodyTooLargeError ? body.errored : err;
    }
    await call.send(answer, runnerId, config.callTimeoutMs, this.#logger);
  }
}

/**
 * One call through the proxy, from the request to the answer's close. Its one `close` listener on
 * the response releases the call slot, and then either records the answer (log line and metric, as
 * Fastify's onResponse did: answered requests only) or, for a caller gone before the answer was
 * complete, cancels the call and resets the answer's tunnel stream.
 */
class ProxyCall {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  /** The runner id parameter as routed (decoded, not validated): the log's runner_id. */
  readonly param: string;
  readonly #requestLog: RequestLog;
  readonly #started = performance.now();
  readonly #abort = new AbortController();
  #release: () => void = noRelease;
  #answerBody: Readable | null = null;
  #closed = false;

  constructor(req: IncomingMessage, res: ServerResponse, param: string, requestLog: RequestLog) {
    this.req = req;
    this.res = res;
    this.param = param;
    this.#requestLog = requestLog;
    res.once("close", this.#onClose);
  }

  get signal(): AbortSignal {
    return this.#abort.signal;
  }

  readonly #onClose = (): void => {
    this.#closed = true;
    this.#release();
    const res = this.res;
    if (res.writableFinished) {
      this.#requestLog.record({
        method: this.req.method as string,
        url: this.req.url as string,
        status: res.statusCode,
        durationMs: performance.now() - this.#started,
        route: PROXY_ROUTE,
        runnerId: this.param,
      });
      return;
    }
    this.#abort.abort(new Error("client went away"));
    if (this.#answerBody && !this.#answerBody.readableEnded) this.#answerBody.destroy();
  };

  /** Keeps a call slot until the response closes (at once when it already has). */
  holdSlot(release: () => void): void {
    this.#release = release;
    if (this.#closed) release();
  }

  /**
   * The request body piped through `limiter`. A body cut off (its connection gone before its end)
   * destroys the limiter, so the tunnel stream is reset, never ended: an ended stream would deliver
   * a truncated upload as complete.
   */
  streamBody(limiter: Transform): Transform {
    const req = this.req;
    req.once("close", () => {
      if (req.complete) return;
      limiter.destroy(new TunnelAbortedError());
      if (!this.res.writableEnded) this.#abort.abort(new Error("client went away"));
    });
    return req.pipe(limiter);
  }

  /** Sends the sandbox's answer: at once when it has no body, in one write when small, else piped. */
  async send(answer: TunnelResponse, runnerId: string, deadlineMs: number, logger: Logger): Promise<void> {
    const { status, headers } = answer;
    if (answer.whole && !this.#closed && answer.whole.length <= SMALL_ANSWER) {
      this.#sendWhole(status, headers, answer.whole);
      return;
    }
    const body = answer.body;
    this.#answerBody = body;
    if (this.#closed) return void body.destroy();
    if (hasNoBody(this.req.method as string, status)) {
      body.on("error", noop);
      body.resume();
      this.#sendWhole(status, headers, EMPTY);
      return;
    }
    const length = Number(headers["content-length"]);
    if (length <= SMALL_ANSWER) {
      const whole = await readWhole(body, length, runnerId, deadlineMs);
      if (this.#closed) return;
      this.#sendWhole(status, headers, whole);
      return;
    }
    this.#pipe(answer, logger);
  }

  /** A whole answer in one write (the tunnel's `whole`, or a small body read to its end). */
  #sendWhole(status: number, headers: OutgoingHttpHeaders, whole: Buffer): void {
    if (hasNoBody(this.req.method as string, status)) {
      if (status === 204 || status < 200) {
        delete headers["content-type"];
        delete headers["content-length"];
      }
      this.res.writeHead(status, headers);
      this.res.end();
      return;
    }
    headers["content-type"] ??= "application/octet-stream";
    headers["content-length"] = whole.length;
    this.res.writeHead(status, headers);
    this.res.end(whole);
  }

  /**
   * A large or undeclared answer, piped. Its headers leave with the first bytes: a stream that fails
   * before them still gets an error answer, one that fails after cuts the connection.
   */
  #pipe({ status, headers, body }: TunnelResponse, logger: Logger): void {
    const res = this.res;
    res.statusCode = status;
    for (const name in headers) res.setHeader(name, headers[name]);
    body.once("error", (err) => this.fail(err, logger));
    // One writev per turn towards the caller (pump.ts: its socket corked for the turn).
    pump(body, res, ANSWER_BUFFER, () => res.socket);
  }

  /**
   * Answers `err` in the proxy's error shape (see the module header), or cuts the connection when
   * the answer has begun. `close` forces Connection: close. Never throws.
   */
  fail(err: unknown, logger: Logger, close = false): void {
    const status = statusOf(err);
    if (status >= 500 && status !== 502 && status !== 503 && status !== 504) {
      logger.error({ err, runner_id: this.param }, "proxy call failed");
    }
    const { req, res } = this;
    if (res.headersSent || this.#closed) {
      res.destroy();
      return;
    }
    try {
      for (const name of res.getHeaderNames()) res.removeHeader(name);
      const json = acceptsJsonOnly(req.headers.accept);
      const body = errorBody(err);
      const payload = json ? JSON.stringify(body) : body.error.message;
      const out: OutgoingHttpHeaders = {};
      const retryAfter = retryAfterOf(err);
      if (retryAfter !== undefined) out["retry-after"] = String(retryAfter);
      // A body left unread (refused early, or cut off) would be parsed as the next request.
      if (close || hasUnreadBody(req)) out.connection = "close";
      out["content-type"] = json ? JSON_TYPE : TEXT_TYPE;
      out["content-length"] = String(Buffer.byteLength(payload));
      res.writeHead(status, out);
      res.end(payload);
    } catch (writeErr) {
      logger.error({ err: writeErr, runner_id: this.param }, "could not answer a proxy call");
      res.destroy();
    }
  }
}

function noRelease(): void {}
function noop(): void {}
