// The agent's side of each call: one incoming HTTP/2 stream is forwarded to a local target and the
// answer streamed back. HTTP calls go through a keep-alive agent per target (no per-call socket or
// session setup); CONNECT streams become raw byte pipes. Unknown target: 403. Unreachable: 502.

import http from "node:http";
import type { IncomingHttpHeaders, ServerHttp2Stream } from "node:http2";
import http2 from "node:http2";
import net from "node:net";
import type { Logger } from "../common/logger.ts";
import { pump } from "../common/pump.ts";
import { BODY_END_HEADER } from "../tunnel/constants.ts";
import { copyEndToEnd } from "../tunnel/headers.ts";
import { formatTargetAddress, type TargetAddress, type TargetMap } from "./target-map.ts";

export interface TargetProxyOptions {
  targets: TargetMap;
  logger: Logger;
  /** Sockets kept per target. Default 256. */
  maxSocketsPerTarget?: number;
}

const { NGHTTP2_INTERNAL_ERROR, NGHTTP2_CANCEL } = http2.constants;

/** Bytes of a large answer the agent buffers per stream before it pauses the target (see pump). */
const STREAM_BUFFER = 1024 * 1024;

/** Errors that mean the target could not be reached at all (not a failure mid-request). */
const UNREACHABLE_CODES: ReadonlySet<string> = new Set([
  "ECONNREFUSED",
  "ENOENT",
  "EACCES",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ETIMEDOUT",
  "ENOTFOUND",
  "EAI_AGAIN",
]);

/** Answers with a declared length up to this many bytes are sent whole (see sendWhole). */
const SMALL_BODY = 64 * 1024;

export class TargetProxy {
  readonly #targets: TargetMap;
  readonly #log: Logger;
  readonly #maxSockets: number;
  readonly #agents = new Map<string, http.Agent>();

  constructor(options: TargetProxyOptions) {
    this.#targets = options.targets;
    this.#log = options.logger;
    this.#maxSockets = options.maxSocketsPerTarget ?? 256;
  }

  /** Serves one stream. Never throws: failures become a status or a stream reset. */
  handle(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    stream.on("error", () => {});
    const authority = headers[":authority"];
    const target = this.#targets.resolve(authority);
    if (!target) {
      respondError(stream, 403, `target "${authority ?? ""}" is not allowed by this agent`);
      return;
    }
    if (headers[":method"] === "CONNECT") this.#pipe(stream, target);
    else this.#forward(stream, headers, target);
  }

  #agentFor(target: TargetAddress): http.Agent {
    const key = formatTargetAddress(target);
    let agent = this.#agents.get(key);
    if (!agent) {
      agent = new http.Agent({
        keepAlive: true,
        maxSockets: this.#maxSockets,
        maxFreeSockets: 64,
        scheduling: "lifo",
      });
      this.#agents.set(key, agent);
    }
    return agent;
  }

  #forward(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, target: TargetAddress): void {
    const outHeaders = copyEndToEnd<http.OutgoingHttpHeaders>(headers);
    outHeaders.host = target.kind === "tcp" ? `${target.host}:${target.port}` : "localhost";
    const req = http.request({
      ...(target.kind === "tcp" ? { host: target.host, port: target.port } : { socketPath: target.path }),
      method: headers[":method"],
      path: headers[":path"],
      headers: outHeaders,
      agent: this.#agentFor(target),
    });
    let answered = false;
    let responded = false;
    req.on("response", (res) => {
      responded = true;
      res.once("end", () => {
        answered = true;
      });
      if (stream.destroyed) {
        res.destroy();
        return;
      }
      const status: Record<string, string | string[] | number> = { ":status": res.statusCode ?? 502 };
      const h = copyEndToEnd(res.headers, status);
      res.on("error", () => stream.close(NGHTTP2_INTERNAL_ERROR));
      // An answer the target cut short (a chunked body without its last chunk, a length not met)
      // ends all the same: it must reach the caller as a reset stream, never as a complete answer.
      res.once("end", () => {
        if (!res.complete && !stream.destroyed) stream.close(NGHTTP2_INTERNAL_ERROR);
      });
      const length = Number(res.headers["content-length"]);
      if (length <= SMALL_BODY) sendWhole(stream, h, res);
      else {
        // The stream's END_STREAM waits for the answer to be complete: it goes on an empty trailers
        // frame, sent only then. Without it, closing the stream on a cut answer would end its
        // writable side first (Node sends END_STREAM, then the reset), and the caller would see
        // the cut body end as if it were whole.
        stream.respond(h, { waitForTrailers: true });
        stream.once("wantTrailers", () => {
          if (res.complete) stream.sendTrailers({});
          else stream.close(NGHTTP2_INTERNAL_ERROR);
        });
        pump(res, stream, STREAM_BUFFER);
      }
    });
    req.on("error", (err) => {
      // A target that answered before reading the whole upload (an early 413) and closed: the write
      // of the rest fails (EPIPE), but its answer is what the caller must get.
      if (responded) return;
      if (!stream.headersSent) {
        const name = formatTargetAddress(target);
        const code = (err as NodeJS.ErrnoException).code ?? "";
        // Refused or absent: unreachable. Anything else (a reset mid-request): the target failed.
        const what = UNREACHABLE_CODES.has(code) ? "unreachable" : "failed";
        this.#log.debug({ err: err.message, target: name }, `target ${what}`);
        respondError(stream, 502, `target ${name} ${what}: ${err.message}`);
      } else if (!stream.destroyed) stream.close(NGHTTP2_INTERNAL_ERROR);
    });
    stream.on("close", () => {
      // Node ends a stream's writable side when the API resets it (deadline, abort), so
      // writableFinished cannot tell a delivered answer from a cancelled call: the target's own
      // response can. A cancelled call must free the target, not leave its request hanging.
      if (!answered || !req.writableFinished) req.destroy();
    });
    forwardBody(stream, headers, req);
  }

  #pipe(stream: ServerHttp2Stream, target: TargetAddress): void {
    const socket = target.kind === "tcp" ? net.connect(target.port, target.host) : net.connect(target.path);
    socket.setNoDelay(true);
    socket.once("connect", () => {
      if (stream.destroyed) return socket.destroy();
      stream.respond({ ":status": 200 });
      socket.pipe(stream);
      stream.pipe(socket);
    });
    socket.on("error", (err) => {
      if (!stream.headersSent)
        respondError(stream, 502, `target ${formatTargetAddress(target)} unreachable: ${err.message}`);
      else if (!stream.destroyed) stream.close(NGHTTP2_CANCEL);
    });
    stream.on("close", () => socket.destroy());
  }

  /** Closes idle target sockets. */
  close(): void {
    for (const agent of this.#agents.values()) agent.destroy();
    this.#agents.clear();
  }
}

/**
 * Passes the request body to the target. When the API frames the body (BODY_END_HEADER), the
 * target's request is ended only after the closing trailer came: Node's HTTP/2 server reports a
 * stream reset mid-body as a plain end of data first, so ending on `end` alone would hand the target
 * a cut-off upload as complete. An unframed body (an older API) ends on `end`, as before.
 */
function forwardBody(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, req: http.ClientRequest): void {
  if (headers[BODY_END_HEADER] !== "trailer") {
    stream.pipe(req);
    return;
  }
  let complete = false;
  stream.once("trailers", (trailers: IncomingHttpHeaders) => {
    complete = trailers[BODY_END_HEADER] === "complete";
  });
  stream.pipe(req, { end: false });
  stream.once("end", () => {
    if (complete) req.end();
    else req.destroy();
  });
}

/**
 * A small answer leaves as one write (HEADERS, DATA and END_STREAM together) once it is complete:
 * fewer frames on the link and no per-chunk stream work, which is most of the cost of a small call.
 */
function sendWhole(
  stream: ServerHttp2Stream,
  headers: Record<string, string | string[] | number>,
  res: http.IncomingMessage,
): void {
  const chunks: Buffer[] = [];
  res.on("data", (c: Buffer) => chunks.push(c));
  res.on("end", () => {
    if (stream.destroyed || stream.headersSent || !res.complete) return;
    stream.respond(headers);
    stream.end(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks));
  });
}

function respondError(stream: ServerHttp2Stream, status: number, message: string): void {
  if (stream.destroyed || stream.headersSent) return;
  stream.respond({ ":status": status, "content-type": "text/plain; charset=utf-8" });
  stream.end(message);
}
