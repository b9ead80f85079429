// Replica-to-replica calls: one HTTP/2 connection per peer (h2c for an http:// advertise URL, TLS
// for https://), pooled and reused by every forwarded call, each call one HTTP/2 stream streamed
// both ways.
//
// The peer endpoint (PeerServer) serves a forwarded call from its LOCAL registry only: it never
// forwards again (the loop guard), so a call crosses at most one hop. A peer that does not hold the
// tunnel answers 503 RD_ERR_PEER_NOT_HELD, and the calling replica decides what to do (wait for the
// directory to say where the runner went, within the call's deadline). Every stream is
// authenticated first with the shared peer secret (`revdial-peer-secret`, compared in constant
// time): without it 401, with a wrong one 403, and nothing reaches a tunnel.
//
// Wire (all POST unless said): :path /peer/v1/call, /peer/v1/open, /peer/v1/evict, GET
// /peer/v1/tunnels; the call's parts in `revdial-*` headers (the caller's headers as JSON, so
// repeated and odd names cross unchanged). A call's answer is :status 200 with the sandbox's status
// and headers in `revdial-status` / `revdial-headers`, then its body; a failure is the API's status
// with `revdial-error: {"code","message","retryAfter"}`. A request body ends with the trailer
// `revdial-body-end: complete`: a body that ends without it was cut off, and the tunnel stream is
// reset, never ended (as on the tunnel itself, BODY_END_HEADER).

import { createHash, timingSafeEqual } from "node:crypto";
import http2, {
  type ClientHttp2Session,
  type ClientHttp2Stream,
  type Http2SecureServer,
  type Http2Server,
  type IncomingHttpHeaders,
  type ServerHttp2Stream,
} from "node:http2";
import type { AddressInfo } from "node:net";
import { type Duplex, PassThrough, type Readable } from "node:stream";
import { rootCertificates } from "node:tls";
import type { Logger } from "../../common/logger.ts";
import { CONNECTION_WINDOW, MAX_FRAME_SIZE, STREAM_WINDOW } from "../../tunnel/constants.ts";
import { TunnelAbortedError, TunnelStreamError, TunnelTimeoutError } from "../../tunnel/errors.ts";
import type { OpenOptions, TunnelRequest, TunnelResponse, TunnelStats } from "../../tunnel/types.ts";
import { ApiError, errorBody, retryAfterOf, statusOf } from "../http-errors.ts";
import { wholeAnswer } from "../tunnel/http1-exchange.ts";
import type { TunnelRegistry } from "../tunnel/tunnel-registry.ts";

export const PEER_SECRET_HEADER = "revdial-peer-secret";
/** The loop guard: the replica a call was forwarded from. A call carrying it is never forwarded. */
export const FORWARDED_HEADER = "revdial-forwarded-by";
export const REPLICA_HEADER = "revdial-replica";
const BODY_END = "revdial-body-end";
/** On an answer whose body the peer had whole: its length. The caller reads it whole too. */
const WHOLE = "revdial-whole";
/** Answers up to this size, sent whole, are collected by the caller before it resolves. */
const WHOLE_MAX = 64 * 1024;

const { NGHTTP2_CANCEL, NGHTTP2_INTERNAL_ERROR } = http2.constants;

/** The peer does not hold the runner's tunnel (it moved, or is reconnecting). */
export class PeerNotHeldError extends ApiError {
  constructor(message: string) {
    super(503, "RD_ERR_PEER_NOT_HELD", message, { retryAfterSeconds: 1 });
  }
}

/** The peer could not be reached (dead, or its link broke before an answer). */
export class PeerUnreachableError extends ApiError {
  constructor(replicaId: string, cause?: unknown) {
    super(503, "RD_ERR_PEER_UNREACHABLE", `replica ${replicaId} is unreachable`, {
      cause,
      retryAfterSeconds: 1,
    });
  }
}

function digest(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}

/** Compared as digests: equal lengths, so timingSafeEqual never throws and the length does not leak. */
function sameSecret(given: string, expected: Buffer): boolean {
  return timingSafeEqual(digest(given), expected);
}

function one(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

export interface PeerServerOptions {
  replicaId: string;
  secret: string;
  registry: TunnelRegistry;
  logger: Logger;
  /** TLS for an https:// advertise URL. */
  tls?: { key: Buffer; cert: Buffer } | null;
  /** Counts a call served for another replica. */
  onForwardedIn?: () => void;
  /** False while this replica drains: its tunnels take no new call (the caller waits for the move). */
  serving?: () => boolean;
}

/** The peer endpoint: serves forwarded calls from the local registry. */
export class PeerServer {
  readonly #o: PeerServerOptions;
  readonly #secret: Buffer;
  readonly #server: Http2Server | Http2SecureServer;
  readonly #sessions = new Set<http2.ServerHttp2Session>();
  /**
   * The secret a session's first authenticated stream carried: its later streams (the same TCP
   * connection, from a peer that proved it knows the secret) are checked against it without hashing.
   */
  readonly #accepted = new WeakMap<http2.ServerHttp2Session, string>();

  constructor(options: PeerServerOptions) {
    this.#o = options;
    this.#secret = digest(options.secret);
    const settings = {
      initialWindowSize: STREAM_WINDOW,
      maxFrameSize: MAX_FRAME_SIZE,
      maxConcurrentStreams: 100_000,
    };
    this.#server = options.tls
      ? http2.createSecureServer({ ...options.tls, settings, maxSessionMemory: 256 })
      : http2.createServer({ settings, maxSessionMemory: 256 });
    this.#server.on("session", (session) => {
      this.#sessions.add(session);
      session.once("close", () => this.#sessions.delete(session));
      session.once("connect", () => session.setLocalWindowSize(CONNECTION_WINDOW));
      session.on("error", () => {});
    });
    this.#server.on("stream", (stream, headers) => this.#serve(stream, headers));
  }

  async listen(host: string, port: number): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once("error", reject);
      this.#server.listen(port, host, () => {
        this.#server.off("error", reject);
        resolve();
      });
    });
    return (this.#server.address() as AddressInfo).port;
  }

  #serve(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): undefined {
    stream.on("error", () => {});
    const secret = one(headers[PEER_SECRET_HEADER]);
    if (secret === undefined)
      return this.#fail(stream, new ApiError(401, "RD_ERR_PEER_AUTH_REQUIRED", "peer secret required"));
    const session = stream.session as http2.ServerHttp2Session;
    if (this.#accepted.get(session) !== secret) {
      if (!sameSecret(secret, this.#secret))
        return this.#fail(stream, new ApiError(403, "RD_ERR_PEER_AUTH_FAILED", "wrong peer secret"));
      this.#accepted.set(session, secret);
    }
    const path = headers[":path"];
    const runnerId = one(headers["revdial-runner"]) ?? "";
    const from = one(headers[FORWARDED_HEADER]) ?? "?";
    try {
      if (path === "/peer/v1/tunnels") {
        stream.respond({ ":status": 200, "content-type": "application/json" });
        stream.end(JSON.stringify(this.#o.registry.list()));
        return;
      }
      if (path === "/peer/v1/evict") {
        const evicted = this.#o.registry.evict(runnerId, one(headers["revdial-reason"]) ?? "evicted");
        stream.respond({ ":status": 200, "content-type": "application/json" });
        stream.end(JSON.stringify({ evicted }));
        return;
      }
      if (path !== "/peer/v1/call" && path !== "/peer/v1/open")
        return this.#fail(stream, new ApiError(404, "RD_ERR_NOT_FOUND", "no such peer route"));
      if (this.#o.serving && !this.#o.serving()) {
        return this.#fail(
          stream,
          new PeerNotHeldError(
            `replica ${this.#o.replicaId} is draining; ${runnerId} is moving to another replica`,
          ),
        );
      }
      if (!this.#o.registry.isConnected(runnerId)) {
        return this.#fail(
          stream,
          new PeerNotHeldError(
            `${runnerId} is not connected to replica ${this.#o.replicaId} either (forwarded from ${from}; a forwarded call is not forwarded again)`,
          ),
        );
      }
      this.#o.onForwardedIn?.();
      if (path === "/peer/v1/call") void this.#call(stream, headers, runnerId);
      else void this.#open(stream, headers, runnerId);
    } catch (err) {
      this.#fail(stream, err);
    }
  }

  async #call(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, runnerId: string): Promise<void> {
    const abort = new AbortController();
    stream.once("close", () => {
      if (!stream.writableFinished) abort.abort(new Error("caller went away"));
    });
    let body: Readable | null = null;
    if (one(headers["revdial-has-body"]) === "1") {
      const pass = new PassThrough();
      let complete = false;
      stream.once("trailers", (t: IncomingHttpHeaders) => {
        if (t[BODY_END] === "complete") complete = true;
      });
      stream.on("data", (chunk: Buffer) => {
        if (!pass.write(chunk)) {
          stream.pause();
          pass.once("drain", () => stream.resume());
        }
      });
      stream.once("end", () => {
        if (complete) pass.end();
        else pass.destroy(new TunnelAbortedError());
      });
      stream.once("aborted", () => pass.destroy(new TunnelAbortedError()));
      body = pass;
      if (headers.expect === "100-continue") stream.additionalHeaders({ ":status": 100 });
    }
    try {
      const res = await this.#o.registry.request(runnerId, {
        method: one(headers["revdial-method"]) ?? "GET",
        path: one(headers["revdial-path"]) ?? "/",
        headers: JSON.parse(one(headers["revdial-headers"]) ?? "{}"),
        body,
        target: one(headers["revdial-target"]) || undefined,
        timeoutMs: Number(one(headers["revdial-timeout-ms"])) || undefined,
        signal: abort.signal,
      });
      if (stream.destroyed) return void res.body.destroy();
      const head: http2.OutgoingHttpHeaders = {
        ":status": 200,
        "revdial-status": String(res.status),
        "revdial-headers": JSON.stringify(res.headers),
      };
      if (res.whole) {
        // All of it is here: the caller may collect it and hand it on whole (no body stream).
        head[WHOLE] = String(res.whole.length);
        if (res.whole.length === 0) return void stream.respond(head, { endStream: true });
        stream.respond(head);
        stream.end(res.whole);
        return;
      }
      stream.respond(head);
      res.body.once("error", () => stream.close(NGHTTP2_INTERNAL_ERROR));
      stream.once("close", () => res.body.destroy());
      res.body.pipe(stream);
    } catch (err) {
      this.#fail(stream, err);
    }
  }

  async #open(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, runnerId: string): Promise<void> {
    const abort = new AbortController();
    stream.once("close", () => abort.abort(new Error("caller went away")));
    try {
      const inner = await this.#o.registry.open(runnerId, one(headers["revdial-target"]) ?? "desktop", {
        timeoutMs: Number(one(headers["revdial-timeout-ms"])) || undefined,
        signal: abort.signal,
      });
      if (stream.destroyed) return void inner.destroy();
      stream.respond({ ":status": 200 });
      inner.once("error", () => stream.close(NGHTTP2_INTERNAL_ERROR));
      stream.once("close", () => inner.destroy());
      stream.pipe(inner);
      inner.pipe(stream);
    } catch (err) {
      this.#fail(stream, err);
    }
  }

  #fail(stream: ServerHttp2Stream, err: unknown): undefined {
    if (stream.destroyed || stream.closed) return undefined;
    if (stream.headersSent) {
      stream.close(NGHTTP2_INTERNAL_ERROR);
      return undefined;
    }
    const { code, message } = errorBody(err).error;
    const status = statusOf(err);
    stream.respond({
      ":status": status >= 400 && status < 600 ? status : 500,
      "content-type": "application/json",
      "revdial-error": JSON.stringify({ code, message, retryAfter: retryAfterOf(err) ?? null }),
    });
    stream.end(JSON.stringify({ error: { code, message } }));
  }

  async close(): Promise<void> {
    for (const s of this.#sessions) s.close();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  destroy(): void {
    for (const s of this.#sessions) s.destroy();
    this.#server.close();
  }
}

export interface PeerPoolOptions {
  replicaId: string;
  secret: string;
  logger: Logger;
  /** Extra CA for https:// peers (the replicas' own certificate, typically). */
  ca?: Buffer | null;
  /** Deadline to connect to a peer. Default 2 s. */
  connectTimeoutMs?: number;
  /** Counts a call sent to another replica. */
  onForwardedOut?: () => void;
}

/** The calling side: one pooled HTTP/2 session per peer URL. */
export class PeerPool {
  readonly #o: PeerPoolOptions;
  readonly #sessions = new Map<string, ClientHttp2Session>();
  #closed = false;

  constructor(options: PeerPoolOptions) {
    this.#o = options;
  }

  #session(url: string, replicaId: string): ClientHttp2Session {
    const existing = this.#sessions.get(url);
    if (existing && !existing.closed && !existing.destroyed) return existing;
    const session = http2.connect(url, {
      settings: { initialWindowSize: STREAM_WINDOW, enablePush: false, maxFrameSize: MAX_FRAME_SIZE },
      maxSessionMemory: 256,
      peerMaxConcurrentStreams: 100_000,
      ...(url.startsWith("https:") && this.#o.ca ? { ca: [...rootCertificates, this.#o.ca.toString()] } : {}),
    });
    const timer = setTimeout(
      () => session.destroy(new PeerUnreachableError(replicaId, new Error("connect timeout"))),
      this.#o.connectTimeoutMs ?? 2000,
    );
    timer.unref();
    let connected = false;
    session.once("connect", () => {
      connected = true;
      clearTimeout(timer);
      session.setLocalWindowSize(CONNECTION_WINDOW);
    });
    const forget = () => {
      clearTimeout(timer);
      if (this.#sessions.get(url) === session) this.#sessions.delete(url);
    };
    session.on("error", (err) => {
      // A link that never came up (refused, a certificate not trusted) is a misconfiguration or a
      // dead peer: the operator should see it. A link that broke later is a peer going away.
      if (connected) this.#o.logger.debug({ err: err.message, peer: replicaId }, "peer link failed");
      else this.#o.logger.warn({ err: err.message, peer: replicaId, url }, "peer link could not be set up");
      forget();
    });
    session.once("close", forget);
    session.once("goaway", forget);
    this.#sessions.set(url, session);
    return session;
  }

  #stream(
    url: string,
    replicaId: string,
    headers: Record<string, string>,
    options: http2.ClientSessionRequestOptions,
  ): ClientHttp2Stream {
    if (this.#closed) throw new PeerUnreachableError(replicaId, new Error("closing"));
    const session = this.#session(url, replicaId);
    headers[PEER_SECRET_HEADER] = this.#o.secret;
    headers[FORWARDED_HEADER] = this.#o.replicaId;
    return session.request(headers, options);
  }

  /**
   * Forwards a call to the replica at `url`. Resolves with the sandbox's answer (its body streamed
   * from the peer), or rejects with the peer's error, PeerNotHeldError, PeerUnreachableError, or a
   * TunnelTimeoutError/TunnelAbortedError of its own. A Readable body is only read once the peer has
   * accepted the call (100 Continue), so a call the peer refused can be sent elsewhere.
   */
  request(
    url: string,
    replicaId: string,
    runnerId: string,
    req: TunnelRequest,
    timeoutMs: number,
  ): Promise<TunnelResponse> {
    this.#o.onForwardedOut?.();
    const body = req.body ?? null;
    const streamed = body !== null && typeof body !== "string" && !Buffer.isBuffer(body);
    const headers: Record<string, string> = {
      ":method": "POST",
      ":path": "/peer/v1/call",
      "revdial-runner": runnerId,
      "revdial-method": req.method,
      "revdial-path": req.path,
      "revdial-headers": JSON.stringify(req.headers ?? {}),
      "revdial-timeout-ms": String(timeoutMs),
    };
    if (req.target) headers["revdial-target"] = req.target;
    if (body !== null) headers["revdial-has-body"] = "1";
    if (streamed) headers.expect = "100-continue";
    return new Promise<TunnelResponse>((resolve, reject) => {
      let stream: ClientHttp2Stream;
      try {
        stream = this.#stream(url, replicaId, headers, {
          endStream: body === null,
          waitForTrailers: body !== null,
        });
      } catch (err) {
        return reject(err);
      }
      let settled = false;
      let bodySent = false;
      /** The peer answered 200: the call was served, whatever happens to its answer now. */
      let served = false;
      const settle = (err: Error | null, res?: TunnelResponse) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        req.signal?.removeEventListener("abort", onAbort);
        if (err) {
          stream.close(NGHTTP2_CANCEL);
          // A body not yet read stays with the caller (it may send the call elsewhere).
          if (bodySent && streamed) (body as Readable).destroy();
          reject(err);
        } else resolve(res as TunnelResponse);
      };
      const timer = setTimeout(() => settle(new TunnelTimeoutError(runnerId, timeoutMs)), timeoutMs);
      const onAbort = () => settle(new TunnelAbortedError({ cause: req.signal?.reason }));
      if (req.signal?.aborted) return onAbort();
      req.signal?.addEventListener("abort", onAbort, { once: true });
      if (body !== null) stream.on("wantTrailers", () => stream.sendTrailers({ [BODY_END]: "complete" }));
      const sendBody = () => {
        if (bodySent || settled) return;
        bodySent = true;
        if (!streamed) {
          stream.end(body as Buffer | string);
          return;
        }
        const src = body as Readable;
        src.once("error", () => stream.close(NGHTTP2_CANCEL));
        src.pipe(stream);
      };
      if (body !== null && !streamed) sendBody();
      if (streamed) stream.once("continue", sendBody);
      stream.once("response", (h) => {
        const status = Number(h[":status"]);
        if (status === 200) {
          // The peer accepted: a streamed body it did not ask for (no 100) goes now.
          if (body !== null) sendBody();
          let resHeaders: Record<string, string | string[]> = {};
          try {
            resHeaders = JSON.parse(one(h["revdial-headers"]) ?? "{}");
          } catch {}
          const resStatus = Number(h["revdial-status"]) || 502;
          const wholeLength = Number(one(h[WHOLE]) ?? Number.NaN);
          if (wholeLength >= 0 && wholeLength <= WHOLE_MAX) {
            // Collected here, and handed on whole: no body stream for the caller to read. A stream
            // cut before its end fails the call (the call was served: it is not sent again).
            const chunks: Buffer[] = [];
            let size = 0;
            stream.on("data", (c: Buffer) => {
              chunks.push(c);
              size += c.length;
            });
            stream.once("end", () => {
              if (size !== wholeLength)
                return settle(
                  new TunnelStreamError(
                    runnerId,
                    `replica ${replicaId} sent ${size} of ${wholeLength} bytes`,
                  ),
                );
              settle(
                null,
                wholeAnswer(resStatus, resHeaders, chunks.length === 1 ? chunks[0] : Buffer.concat(chunks)),
              );
            });
            stream.once("error", (err) => settle(new TunnelStreamError(runnerId, err.message)));
            served = true;
            return;
          }
          stream.on("error", () => {});
          return settle(null, { status: resStatus, headers: resHeaders, body: stream });
        }
        settle(peerError(status, h, replicaId));
        stream.resume();
      });
      stream.once("error", (err) => {
        if (!served) settle(new PeerUnreachableError(replicaId, err));
      });
      stream.once("close", () => {
        if (settled) return;
        const cause = new Error(`stream closed (code ${stream.rstCode})`);
        settle(
          served
            ? new TunnelStreamError(runnerId, cause.message)
            : new PeerUnreachableError(replicaId, cause),
        );
      });
    });
  }

  /** Opens a raw byte stream to `target` in the runner, through the replica at `url`. */
  open(
    url: string,
    replicaId: string,
    runnerId: string,
    target: string,
    options: OpenOptions & { timeoutMs: number },
  ): Promise<Duplex> {
    this.#o.onForwardedOut?.();
    return new Promise<Duplex>((resolve, reject) => {
      let stream: ClientHttp2Stream;
      try {
        stream = this.#stream(
          url,
          replicaId,
          {
            ":method": "POST",
            ":path": "/peer/v1/open",
            "revdial-runner": runnerId,
            "revdial-target": target,
            "revdial-timeout-ms": String(options.timeoutMs),
          },
          {},
        );
      } catch (err) {
        return reject(err);
      }
      let settled = false;
      const settle = (err: Error | null) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        options.signal?.removeEventListener("abort", onAbort);
        if (err) {
          stream.close(NGHTTP2_CANCEL);
          reject(err);
        } else resolve(stream as unknown as Duplex);
      };
      const timer = setTimeout(
        () => settle(new TunnelTimeoutError(runnerId, options.timeoutMs)),
        options.timeoutMs,
      );
      const onAbort = () => settle(new TunnelAbortedError({ cause: options.signal?.reason }));
      if (options.signal?.aborted) return onAbort();
      options.signal?.addEventListener("abort", onAbort, { once: true });
      stream.once("response", (h) => {
        const status = Number(h[":status"]);
        if (status === 200) return settle(null);
        settle(peerError(status, h, replicaId));
      });
      stream.once("error", (err) => settle(new PeerUnreachableError(replicaId, err)));
      stream.once("close", () => settle(new PeerUnreachableError(replicaId, new Error("stream closed"))));
    });
  }

  /** A small JSON exchange with a peer (tunnel list, eviction). */
  async json<T>(
    url: string,
    replicaId: string,
    path: string,
    headers: Record<string, string> = {},
    timeoutMs = 3000,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let stream: ClientHttp2Stream;
      try {
        stream = this.#stream(
          url,
          replicaId,
          { ":method": path === "/peer/v1/tunnels" ? "GET" : "POST", ":path": path, ...headers },
          { endStream: true },
        );
      } catch (err) {
        return reject(err);
      }
      const timer = setTimeout(() => {
        stream.close(NGHTTP2_CANCEL);
        reject(new PeerUnreachableError(replicaId, new Error("timeout")));
      }, timeoutMs);
      const chunks: Buffer[] = [];
      let status = 0;
      let h: IncomingHttpHeaders = {};
      stream.once("response", (r) => {
        status = Number(r[":status"]);
        h = r;
      });
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.once("end", () => {
        clearTimeout(timer);
        if (status !== 200) return reject(peerError(status, h, replicaId));
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString("utf8")) as T);
        } catch (err) {
          reject(err);
        }
      });
      stream.once("error", (err) => {
        clearTimeout(timer);
        reject(new PeerUnreachableError(replicaId, err));
      });
    });
  }

  tunnels(url: string, replicaId: string): Promise<TunnelStats[]> {
    return this.json<TunnelStats[]>(url, replicaId, "/peer/v1/tunnels");
  }

  close(): void {
    this.#closed = true;
    for (const s of this.#sessions.values()) s.close();
    this.#sessions.clear();
  }
}

function peerError(status: number, h: IncomingHttpHeaders, replicaId: string): ApiError {
  let parsed: { code?: string; message?: string; retryAfter?: number | null } = {};
  try {
    parsed = JSON.parse(one(h["revdial-error"]) ?? "{}");
  } catch {}
  const code = parsed.code ?? "RD_ERR_PEER_FAILED";
  const message = parsed.message ?? `replica ${replicaId} answered ${status}`;
  if (code === "RD_ERR_PEER_NOT_HELD") return new PeerNotHeldError(message);
  return new ApiError(status || 502, code, message, { retryAfterSeconds: parsed.retryAfter ?? undefined });
}
