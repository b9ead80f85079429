// The API's end of one protocol-v2 tunnel: an HTTP/2 CLIENT session over the agent's link (a
// WebSocket, or the raw upgraded socket; see tunnel-link.ts) — cloudflared's reversed roles: the
// agent dialed out, and now serves. Each call is one HTTP/2 stream, so calls cost no extra round trip
// and any number run at once without crossing.
//
// Liveness: every pingInterval the tunnel sends an HTTP/2 PING (its RTT is recorded) and a WebSocket
// ping (keeps proxies from idling the link out). Only HTTP/2 counts as life: the agent's SETTINGS
// and its PING answers. A WebSocket pong proves only that a WebSocket library is running, so a peer
// that upgrades and never speaks HTTP/2 would otherwise hold a "live" tunnel forever. A link whose
// agent has not sent its SETTINGS within prefaceTimeout is closed; after deadLinkTimeout without a
// PING answer, the tunnel is destroyed. Either failure is reported through `onLinkFailure`.
// close() sends GOAWAY and lets calls in flight finish within the drain; destroy() cuts at once.
// Both are idempotent; `close` is emitted once.

import { EventEmitter } from "node:events";
import http2, { type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders } from "node:http2";
import { type Duplex, PassThrough, type Readable } from "node:stream";
import type { Logger } from "../../common/logger.ts";
import {
  BODY_END_HEADER,
  CLOSE,
  CONNECTION_WINDOW,
  DEFAULT_TARGET,
  MAX_FRAME_SIZE,
  STREAM_WINDOW,
} from "../../tunnel/constants.ts";
import {
  TunnelAbortedError,
  TunnelClosedError,
  TunnelStreamError,
  TunnelTimeoutError,
} from "../../tunnel/errors.ts";
import { copyEndToEnd } from "../../tunnel/headers.ts";
import type { Tunnel, TunnelTimings } from "../../tunnel/tunnel.ts";
import type { TunnelLink } from "../../tunnel/tunnel-link.ts";
import type { OpenOptions, TunnelRequest, TunnelResponse, TunnelStats } from "../../tunnel/types.ts";
import { type LinkFailure, LinkWatch } from "./link-watch.ts";

export interface H2TunnelOptions {
  runnerId: string;
  link: TunnelLink;
  remoteAddress: string;
  logger: Logger;
  timings: TunnelTimings;
  now?: () => number;
  /** Told when the link is dropped for want of HTTP/2 (for counters). */
  onLinkFailure?: (kind: LinkFailure) => void;
}

const { NGHTTP2_CANCEL, NGHTTP2_NO_ERROR } = http2.constants;

/** Longest a close without a drain waits for its GOAWAY and resets to be written. */
const FLUSH_MS = 1000;

export class H2Tunnel extends EventEmitter implements Tunnel {
  readonly runnerId: string;
  readonly protocol = "h2" as const;
  readonly connectedAt = new Date();
  readonly remoteAddress: string;
  readonly #log: Logger;
  readonly #timings: TunnelTimings;
  readonly #now: () => number;
  readonly #link: TunnelLink;
  readonly #session: ClientHttp2Session;
  readonly #watch: LinkWatch;
  readonly #onLinkFailure: (kind: LinkFailure) => void;
  #lastFrameAt: number;
  #rttMs: number | null = null;
  /** Streams in flight (for stats, and so that a close without a drain can reset them). */
  readonly #streams = new Set<ClientHttp2Stream>();
  #closing = false;
  #closed = false;

  constructor(options: H2TunnelOptions) {
    super();
    this.runnerId = options.runnerId;
    this.remoteAddress = options.remoteAddress;
    this.#log = options.logger;
    this.#timings = options.timings;
    this.#now = options.now ?? Date.now;
    this.#lastFrameAt = this.#now();
    this.#link = options.link;
    this.#onLinkFailure = options.onLinkFailure ?? (() => {});
    this.#link.onClose((reason) => this.#finish(reason));
    this.#session = http2.connect("http://revdial.tunnel", {
      createConnection: () => this.#link.stream,
      settings: { initialWindowSize: STREAM_WINDOW, enablePush: false, maxFrameSize: MAX_FRAME_SIZE },
      maxSessionMemory: 256,
      peerMaxConcurrentStreams: 100_000,
    });
    this.#session.on("connect", () => {
      if (this.#session.destroyed) return;
      this.#session.setLocalWindowSize(CONNECTION_WINDOW);
      this.#ping(); // an RTT from the start, not after the first interval
    });
    this.#session.once("remoteSettings", () => {
      this.#watch.prefaceDone();
      this.#lastFrameAt = this.#now();
    });
    this.#session.on("error", (err) => {
      // The agent broke HTTP/2 (garbage, a bad preface): the tunnel's close reason says so. nghttp2
      // has already told the agent in a GOAWAY carrying the HTTP/2 error code.
      this.#log.warn({ err: err.message }, "tunnel session error");
      this.#link.closeReason ??= `HTTP/2 error: ${err.message}`;
    });
    this.#session.on("goaway", (_code: number, _last: number, data?: Buffer) => {
      // An agent that leaves in order says why (a raw link has no close frame to carry it).
      if (data && data.length > 0) this.#link.closeReason ??= data.subarray(0, 120).toString("utf8");
    });
    this.#session.on("close", () => this.#finish(this.#link.closeReason ?? "session closed"));
    this.#watch = new LinkWatch({
      timings: this.#timings,
      logger: this.#log,
      now: this.#now,
      prefaceName: "HTTP/2 preface",
      lastFrameAt: () => this.#lastFrameAt,
      ping: () => this.#ping(),
      fail: (kind, reason) => this.#cutFor(kind, reason),
    });
  }

  #ping(): void {
    if (this.#closed) return;
    if (!this.#session.destroyed) {
      this.#session.ping((err, duration) => {
        if (err) return;
        this.#lastFrameAt = this.#now();
        this.#rttMs = Math.round(duration * 1000) / 1000;
      });
    }
    this.#link.ping();
  }

  #cutFor(kind: LinkFailure, reason: string): void {
    this.#link.closeReason = reason;
    this.#onLinkFailure(kind);
    this.#link.terminate();
    this.destroy(new Error(reason));
  }

  stats(): TunnelStats {
    return {
      runner_id: this.runnerId,
      protocol: this.protocol,
      transport: this.#link.transport,
      connected_at: this.connectedAt.toISOString(),
      remote_address: this.remoteAddress,
      rtt_ms: this.#rttMs,
      active_streams: this.#streams.size,
      bytes_in: this.#link.bytesIn,
      bytes_out: this.#link.bytesOut,
    };
  }

  get closed(): boolean {
    return this.#closed;
  }

  request(req: TunnelRequest): Promise<TunnelResponse> {
    const headers = toH2Headers(req);
    const hasBody = req.body != null;
    if (hasBody) headers[BODY_END_HEADER] = "trailer";
    return new Promise((resolve, reject) => {
      const stream = this.#startStream(headers, !hasBody, reject, hasBody);
      if (!stream) return;
      const settle = this.#deadline(stream, req.timeoutMs ?? this.#timings.callTimeoutMs, req.signal, reject);
      stream.once("response", (h) => {
        settle();
        resolve({
          status: Number(h[":status"]),
          headers: fromH2Headers(h),
          body: bodyOf(stream, this.runnerId),
        });
      });
      writeBody(stream, req.body);
    });
  }

  open(target: string, options: OpenOptions = {}): Promise<Duplex> {
    return new Promise((resolve, reject) => {
      const stream = this.#startStream({ ":method": "CONNECT", ":authority": target }, false, reject);
      if (!stream) return;
      const settle = this.#deadline(
        stream,
        options.timeoutMs ?? this.#timings.callTimeoutMs,
        options.signal,
        reject,
      );
      stream.once("response", (h) => {
        settle();
        const status = Number(h[":status"]);
        if (status === 200) return resolve(stream);
        stream.close(NGHTTP2_CANCEL);
        reject(new TunnelStreamError(this.runnerId, `agent answered ${status} to CONNECT ${target}`));
      });
    });
  }

  #startStream(
    headers: http2.OutgoingHttpHeaders,
    endStream: boolean,
    reject: (err: Error) => void,
    waitForTrailers = false,
  ): ClientHttp2Stream | null {
    if (this.#closed || this.#closing || this.#session.destroyed || this.#session.closed) {
      reject(new TunnelClosedError(this.runnerId, "tunnel is closing"));
      return null;
    }
    let stream: ClientHttp2Stream;
    try {
      stream = this.#session.request(headers, { endStream, waitForTrailers });
    } catch (err) {
      reject(new TunnelClosedError(this.runnerId, (err as Error).message, { cause: err }));
      return null;
    }
    this.#streams.add(stream);
    stream.once("close", () => this.#streams.delete(stream));
    return stream;
  }

  /** Bounds the wait for response headers; returns a function that disarms it once they came. */
  #deadline(
    stream: ClientHttp2Stream,
    timeoutMs: number,
    signal: AbortSignal | undefined,
    reject: (err: Error) => void,
  ): () => void {
    let done = false;
    const fail = (err: Error) => {
      if (done) return;
      done = true;
      cleanup();
      if (!stream.destroyed) stream.close(NGHTTP2_CANCEL);
      reject(err);
    };
    const timer = setTimeout(() => fail(new TunnelTimeoutError(this.runnerId, timeoutMs)), timeoutMs);
    const onAbort = () => fail(new TunnelAbortedError({ cause: signal?.reason }));
    const onError = (err: Error) =>
      fail(
        this.#closed
          ? new TunnelClosedError(this.runnerId, this.#link.closeReason ?? err.message, { cause: err })
          : new TunnelStreamError(this.runnerId, err.message, { cause: err }),
      );
    const onClose = () =>
      fail(
        this.#closed || this.#session.destroyed
          ? new TunnelClosedError(this.runnerId, this.#link.closeReason ?? "link lost")
          : new TunnelStreamError(this.runnerId, `stream closed before a response (code ${stream.rstCode})`),
      );
    const cleanup = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      stream.off("error", onError);
      stream.off("close", onClose);
    };
    if (signal?.aborted) queueMicrotask(onAbort);
    signal?.addEventListener("abort", onAbort, { once: true });
    stream.on("error", onError);
    stream.on("close", onClose);
    return () => {
      done = true;
      cleanup();
      // After the headers, errors surface on the body stream the caller reads.
      stream.on("error", () => {});
    };
  }

  /** Sends GOAWAY, lets calls in flight finish within the drain timeout, then closes the link. */
  close(
    code: number = CLOSE.SHUTDOWN,
    reason = "server shutting down",
    drainMs = this.#timings.drainTimeoutMs,
  ): Promise<void> {
    if (this.#closed) return Promise.resolve();
    // A session already destroyed under us (its link died first) has nothing to drain: GOAWAY on
    // it would throw ERR_HTTP2_INVALID_SESSION out of a graceful close.
    if (!this.#closing && this.#session.destroyed) this.destroy(new Error(reason));
    if (!this.#closing && !this.#closed) {
      this.#closing = true;
      // Without a drain, the calls in flight are reset below and the link closes once the GOAWAY and
      // the resets are out; FLUSH_MS bounds that.
      const cut = setTimeout(() => this.#link.close(code, reason), drainMs > 0 ? drainMs : FLUSH_MS);
      cut.unref();
      // The session ends the link once GOAWAY is out and its last stream is done. A WebSocket cannot
      // half-close, so that is when to close it: the session's own `close` waits for the peer to
      // close the link, which it never does, and would hold every close() for the whole drain.
      this.#link.onWritesDone(() => {
        clearTimeout(cut);
        this.#link.close(code, reason);
      });
      // The reason rides in the GOAWAY too: a raw link has no close code to carry "replaced".
      this.#session.goaway(NGHTTP2_NO_ERROR, 0, Buffer.from(reason));
      if (drainMs > 0) this.#session.close();
      else {
        for (const stream of [...this.#streams]) stream.close(NGHTTP2_CANCEL);
        // The PING's answer proves the agent has read the GOAWAY (frames arrive in order): on a raw
        // link it is the only carrier of the reason, and closing first can lose it.
        let sent = false;
        try {
          sent = this.#session.ping(() => this.#session.close());
        } catch {
          // The session is already going; close() below is a no-op then.
        }
        if (!sent) this.#session.close();
      }
    }
    return new Promise((resolve) => {
      if (this.#closed) resolve();
      else this.once("close", () => resolve());
    });
  }

  destroy(err?: Error): void {
    if (this.#closed) return;
    this.#link.closeReason ??= err?.message ?? "destroyed";
    this.#session.destroy();
    this.#link.terminate();
    this.#finish(this.#link.closeReason ?? "destroyed");
  }

  #finish(reason: string): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#watch.stop();
    if (!this.#session.destroyed) this.#session.destroy();
    this.emit("close", reason);
  }
}

function toH2Headers(req: TunnelRequest): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = {
    ":method": req.method.toUpperCase(),
    ":path": req.path.startsWith("/") ? req.path : `/${req.path}`,
    ":authority": req.target ?? DEFAULT_TARGET,
    ":scheme": "http",
  };
  return copyEndToEnd(req.headers, out);
}

function fromH2Headers(h: IncomingHttpHeaders): Record<string, string | string[]> {
  return copyEndToEnd(h);
}

/**
 * The response body as the caller sees it. Node ends an HTTP/2 stream on the tick after its last
 * frame, before an awaiting caller can attach; piping in the `response` handler keeps every byte and
 * the end. Destroying the returned body resets the stream (the agent stops sending).
 */
function bodyOf(stream: ClientHttp2Stream, runnerId: string): Readable {
  const body = new PassThrough({ highWaterMark: 256 * 1024 });
  // Readers get a failure through their own listeners or the body's errored state: the caller may
  // still be on its way to its first read when the agent resets a cut answer.
  body.on("error", () => {});
  // A plain pipe, not pipeline(): pipeline allocates an error and an AbortController per call.
  stream.pipe(body);
  stream.on("error", (err) => body.destroy(new TunnelStreamError(runnerId, err.message, { cause: err })));
  body.on("close", () => {
    if (!stream.destroyed && !stream.readableEnded) stream.close(NGHTTP2_CANCEL);
  });
  return body;
}

/**
 * Sends the request body. A complete body ends with the BODY_END_HEADER trailer (the agent ends the
 * target's request only then); a source that fails or is destroyed before its end resets the stream
 * (RST_STREAM CANCEL), so the target sees an aborted request, never a truncated complete one.
 */
function writeBody(stream: ClientHttp2Stream, body: TunnelRequest["body"]): void {
  if (body == null) return;
  stream.once("wantTrailers", () => {
    if (!stream.destroyed) stream.sendTrailers({ [BODY_END_HEADER]: "complete" });
  });
  if (typeof body === "string" || Buffer.isBuffer(body)) {
    stream.end(body);
    return;
  }
  const source = body as Readable;
  const cancel = () => {
    if (!source.readableEnded && !stream.destroyed) stream.close(NGHTTP2_CANCEL);
  };
  source.on("error", cancel);
  source.once("close", cancel);
  stream.on("close", () => {
    if (!source.readableEnded) source.destroy();
  });
  source.pipe(stream);
}
