// The API's end of one protocol-v3 tunnel (docs/protocol.md, v3): a MuxSession over the agent's
// link, and an HTTP/1.1 client of its own whose connections are v3 streams the agent pipes to its
// targets. Connections are pooled per target and reused while the target keeps them alive, so a
// call costs one request written and one answer read: no stream set-up, no HTTP work at the agent.
//
// Contracts (the same as the v2 tunnel's, so the registry and the routes cannot tell them apart):
// - request() resolves with the answer's head and a streamed body, or rejects with a TunnelError;
//   a target the agent refuses is a 403 answer, an unreachable one a 502 answer, as under v2.
// - A call whose reused connection turns out closed by the target before any answer is retried
//   once on a fresh one, when its body can be sent again (none, or given whole).
// - Every call has a deadline for its answer's head and honours its AbortSignal; both reset its
//   stream, so the agent cuts the target's socket.
// - Liveness: a v3 PING every pingInterval (its RTT recorded) plus a WebSocket ping for proxies;
//   any v3 frame from the agent counts as life, WebSocket pongs do not. No HELLO within
//   prefaceTimeout, or no frame within deadLinkTimeout: the link is cut (onLinkFailure says why).
// - close() sends GOAWAY (its reason is what the agent acts on: "replaced", "evicted: …"), lets
//   calls in flight finish within the drain, then closes the link; destroy() cuts. Both idempotent;
//   `close` is emitted once.

import { EventEmitter } from "node:events";
import { Duplex, Readable } from "node:stream";
import type { Logger } from "../../common/logger.ts";
import { CLOSE, DEFAULT_TARGET } from "../../tunnel/constants.ts";
import {
  TunnelAbortedError,
  TunnelClosedError,
  TunnelStreamError,
  TunnelTimeoutError,
} from "../../tunnel/errors.ts";
import { MUX_CODE } from "../../tunnel/mux-frames.ts";
import type { MuxLink } from "../../tunnel/mux-link.ts";
import {
  LINK_LOST,
  MUX_WINDOW,
  MUX_WINDOW_ALONE,
  MuxSession,
  type MuxStream,
} from "../../tunnel/mux-session.ts";
import type { Tunnel, TunnelTimings } from "../../tunnel/tunnel.ts";
import type { OpenOptions, TunnelRequest, TunnelResponse, TunnelStats } from "../../tunnel/types.ts";

import { Http1Exchange, StaleConnectionError } from "./http1-exchange.ts";
import { type LinkFailure, LinkWatch } from "./link-watch.ts";

export interface MuxTunnelOptions {
  runnerId: string;
  link: MuxLink;
  remoteAddress: string;
  logger: Logger;
  timings: TunnelTimings;
  now?: () => number;
  onLinkFailure?: (kind: LinkFailure) => void;
}

/** How long one call must have had the link to itself before its window grows (#windowFor). */
const ALONE_AFTER_MS = 200;

/** Idle connections kept per target. */
const MAX_IDLE_PER_TARGET = 128;

/**
 * An idle pooled connection is closed after this long: under the keep-alive timeout of common
 * servers (Node's is 5 s), so the target rarely closes one just as a call reuses it.
 */
const IDLE_TIMEOUT_MS = 4000;

interface Conn {
  stream: MuxStream;
  host: string;
  idleSince: number;
}

/** What a call in progress can be cancelled through (the OPENED wait or the exchange). */
interface Pending {
  cancel(err: Error): void;
}

export class MuxTunnel extends EventEmitter implements Tunnel {
  readonly runnerId: string;
  readonly protocol = "mux" as const;
  readonly connectedAt = new Date();
  readonly remoteAddress: string;
  readonly #log: Logger;
  readonly #timings: TunnelTimings;
  readonly #now: () => number;
  readonly #link: MuxLink;
  readonly #session: MuxSession;
  readonly #watch: LinkWatch;
  readonly #onLinkFailure: (kind: LinkFailure) => void;
  readonly #idle = new Map<string, Conn[]>();
  #idleCount = 0;
  #idleTimer: NodeJS.Timeout | null = null;
  #rttMs: number | null = null;
  /** When two calls last shared the link (#windowFor). */
  #sharedAt = 0;
  #closing = false;
  #closed = false;
  #drained: (() => void) | null = null;

  constructor(options: MuxTunnelOptions) {
    super();
    this.runnerId = options.runnerId;
    this.remoteAddress = options.remoteAddress;
    this.#log = options.logger;
    this.#timings = options.timings;
    this.#now = options.now ?? Date.now;
    this.#link = options.link;
    this.#onLinkFailure = options.onLinkFailure ?? (() => {});
    this.#session = new MuxSession({
      link: options.link,
      role: "api",
      now: this.#now,
      onHello: () => {
        this.#watch.prefaceDone();
        this.#ping();
      },
      onGoaway: (_code, reason) => {
        // An agent that leaves in order says why; it takes no new calls from now on.
        if (reason) this.#link.closeReason ??= reason.slice(0, 120);
        this.#closing = true;
        this.#dropIdle();
      },
      onProtocolError: (message) => this.#log.warn({ err: message }, "tunnel protocol error"),
      windowFor: () => this.#windowFor(),
    });
    this.#link.onClose((reason) => this.#finish(reason));
    this.#watch = new LinkWatch({
      timings: this.#timings,
      logger: this.#log,
      now: this.#now,
      prefaceName: "HELLO",
      lastFrameAt: () => this.#session.lastFrameAt,
      ping: () => this.#ping(),
      fail: (kind, reason) => this.#cutFor(kind, reason),
    });
  }

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * The receive window for a stream's answer: MUX_WINDOW_ALONE while one call has had the link to
   * itself for ALONE_AFTER_MS, else MUX_WINDOW, so a small call never queues behind more than
   * MUX_WINDOW of a large one once they share the link (head-of-line) and a lone large body is not
   * held to small windows' round trips. The hysteresis keeps a stream of small calls, with gaps
   * between them, from letting the large one grow back in each gap.
   */
  #windowFor(): number {
    const now = this.#now();
    if (this.#session.streamCount - this.#idleCount > 1) this.#sharedAt = now;
    return now - this.#sharedAt >= ALONE_AFTER_MS ? MUX_WINDOW_ALONE : MUX_WINDOW;
  }

  #ping(): void {
    if (this.#closed) return;
    this.#session.ping((rtt) => {
      this.#rttMs = rtt;
    });
    this.#link.ping();
  }

  #cutFor(kind: LinkFailure, reason: string): void {
    this.#link.closeReason = reason;
    this.#onLinkFailure(kind);
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
      active_streams: this.#session.streamCount - this.#idleCount,
      bytes_in: this.#link.bytesIn,
      bytes_out: this.#link.bytesOut,
    };
  }

  request(req: TunnelRequest): Promise<TunnelResponse> {
    const target = req.target ?? DEFAULT_TARGET;
    const replayable = req.body == null || typeof req.body === "string" || Buffer.isBuffer(req.body);
    const isHead = req.method.toUpperCase() === "HEAD";
    // A streamed body may fail while the call still waits for its stream (OPENED): the exchange sees
    // that when it starts (http1-exchange.ts), so the error must not go unheard meanwhile.
    if (req.body instanceof Readable) req.body.on("error", () => {});
    return this.#withDeadline(req.timeoutMs ?? this.#timings.callTimeoutMs, req.signal, async (track) => {
      for (let attempt = 0; ; attempt++) {
        // A retry takes a fresh stream: the pooled one just failed as stale, and so may its neighbours.
        const conn = await this.#acquire(target, track, attempt > 0);
        if ("refused" in conn) return refusalAnswer(conn.refused, conn.message);
        const exchange = new Http1Exchange(
          conn.stream,
          {
            runnerId: this.runnerId,
            host: conn.host,
            reused: conn.reused,
            release: () => this.#release(target, conn.stream, conn.host),
            discard: () => {},
            failure: (code, message) => this.#streamFailure(code, message),
          },
          isHead,
        );
        track({ cancel: (err) => exchange.abort(err) });
        try {
          return await exchange.start(req);
        } catch (err) {
          if (err instanceof StaleConnectionError && attempt === 0 && replayable && !this.#closed) continue;
          if (err instanceof StaleConnectionError) throw this.#streamFailure(MUX_CODE.CANCEL, err.message);
          throw err;
        }
      }
    });
  }

  open(target: string, options: OpenOptions = {}): Promise<Duplex> {
    return this.#withDeadline(
      options.timeoutMs ?? this.#timings.callTimeoutMs,
      options.signal,
      async (track) => {
        const conn = await this.#acquire(target, track, true);
        if ("refused" in conn)
          throw new TunnelStreamError(this.runnerId, `agent answered ${conn.refused} to CONNECT ${target}`);
        return streamDuplex(conn.stream, (code, message) => this.#streamFailure(code, message));
      },
    );
  }

  /**
   * Runs `work` under a deadline and the caller's signal. `work` reports what can be cancelled now
   * through `track`; on the deadline or an abort that is cancelled and the call rejects.
   */
  #withDeadline<T>(
    timeoutMs: number,
    signal: AbortSignal | undefined,
    work: (track: (p: Pending) => void) => Promise<T>,
  ): Promise<T> {
    if (this.#closed || this.#closing)
      return Promise.reject(new TunnelClosedError(this.runnerId, "tunnel is closing"));
    if (signal?.aborted) return Promise.reject(new TunnelAbortedError({ cause: signal.reason }));
    return new Promise<T>((resolve, reject) => {
      let pending: Pending | null = null;
      let done = false;
      const finish = () => {
        done = true;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      };
      const fail = (err: Error) => {
        if (done) return;
        finish();
        pending?.cancel(err);
        reject(err);
      };
      const timer = setTimeout(() => fail(new TunnelTimeoutError(this.runnerId, timeoutMs)), timeoutMs);
      const onAbort = () => fail(new TunnelAbortedError({ cause: signal?.reason }));
      signal?.addEventListener("abort", onAbort, { once: true });
      work((p) => {
        pending = p;
      }).then(
        (value) => {
          if (done) {
            // Settled by the deadline meanwhile: what came late is not wanted.
            if (value instanceof Duplex) value.destroy();
            else (value as { body?: Readable }).body?.destroy();
            return;
          }
          finish();
          resolve(value);
        },
        (err: Error) => {
          if (done) return;
          finish();
          reject(err);
        },
      );
    });
  }

  /** A pooled connection to `target`, or a new stream once the agent says it is connected. */
  #acquire(
    target: string,
    track: (p: Pending) => void,
    fresh = false,
  ): Promise<{ stream: MuxStream; host: string; reused: boolean } | { refused: number; message: string }> {
    if (!fresh) {
      const list = this.#idle.get(target);
      const conn = list?.pop();
      if (conn) {
        this.#idleCount--;
        if (list?.length === 0) this.#idle.delete(target);
        return Promise.resolve({ stream: conn.stream, host: conn.host, reused: true });
      }
    }
    if (this.#closed || this.#closing)
      return Promise.reject(
        new TunnelClosedError(this.runnerId, this.#link.closeReason ?? "tunnel is closing"),
      );
    const stream = this.#session.open(target);
    if (!stream) return Promise.reject(new TunnelClosedError(this.runnerId, "tunnel takes no new streams"));
    return new Promise((resolve, reject) => {
      track({
        cancel: (err) => {
          stream.reset(MUX_CODE.CANCEL, "");
          reject(err);
        },
      });
      stream.onOpened = (host) => resolve({ stream, host: host || target, reused: false });
      stream.onReset = (code, message) => {
        if (code === MUX_CODE.REFUSED) resolve({ refused: 403, message });
        else if (code === MUX_CODE.UNREACHABLE) resolve({ refused: 502, message });
        else reject(this.#streamFailure(code, message));
      };
    });
  }

  #streamFailure(code: number, message: string): Error {
    if (code === LINK_LOST || this.#closed)
      return new TunnelClosedError(this.runnerId, this.#link.closeReason ?? (message || "link lost"));
    return new TunnelStreamError(this.runnerId, message || `stream reset by the agent (code ${code})`);
  }

  /** A connection whose exchange is complete: kept for the next call, or closed past the bound. */
  #release(target: string, stream: MuxStream, host: string): void {
    if (this.#closing || this.#closed || stream.closed) {
      stream.reset(MUX_CODE.CANCEL, "");
      return;
    }
    let list = this.#idle.get(target);
    if (!list) {
      list = [];
      this.#idle.set(target, list);
    }
    if (list.length >= MAX_IDLE_PER_TARGET) {
      stream.reset(MUX_CODE.CANCEL, "");
      return;
    }
    const conn: Conn = { stream, host, idleSince: this.#now() };
    const drop = () => this.#removeIdle(target, conn);
    // While idle, anything from the target ends the connection: it closed it, or broke HTTP/1.1.
    stream.onData = () => {
      drop();
      stream.reset(MUX_CODE.CANCEL, "");
    };
    stream.onEnd = () => {
      drop();
      stream.reset(MUX_CODE.CANCEL, "");
    };
    stream.onReset = drop;
    stream.onDrain = () => {};
    list.push(conn);
    this.#idleCount++;
    this.#armIdleTimer();
  }

  #removeIdle(target: string, conn: Conn): void {
    const list = this.#idle.get(target);
    if (!list) return;
    const i = list.indexOf(conn);
    if (i < 0) return;
    list.splice(i, 1);
    this.#idleCount--;
    if (list.length === 0) this.#idle.delete(target);
  }

  #armIdleTimer(): void {
    if (this.#idleTimer || this.#idleCount === 0) return;
    this.#idleTimer = setTimeout(() => {
      this.#idleTimer = null;
      const cutoff = this.#now() - IDLE_TIMEOUT_MS;
      for (const [target, list] of [...this.#idle]) {
        // Oldest first: the pool hands out the newest (LIFO), so the old ones are the spares.
        while (list.length > 0 && list[0].idleSince <= cutoff) {
          const conn = list.shift() as Conn;
          this.#idleCount--;
          conn.stream.reset(MUX_CODE.CANCEL, "");
        }
        if (list.length === 0) this.#idle.delete(target);
      }
      this.#armIdleTimer();
    }, IDLE_TIMEOUT_MS / 2);
    this.#idleTimer.unref();
  }

  #dropIdle(): void {
    for (const list of this.#idle.values()) for (const conn of list) conn.stream.reset(MUX_CODE.CANCEL, "");
    this.#idle.clear();
    this.#idleCount = 0;
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    this.#idleTimer = null;
  }

  /** Sends GOAWAY, lets calls in flight finish within the drain, then closes the link. */
  close(
    code: number = CLOSE.SHUTDOWN,
    reason = "server shutting down",
    drainMs = this.#timings.drainTimeoutMs,
  ): Promise<void> {
    if (this.#drained && drainMs <= 0) this.#drained();
    if (!this.#closed && !this.#drained) {
      this.#closing = true;
      this.#session.goaway(MUX_CODE.NONE, reason);
      this.#dropIdle();
      const finish = () => {
        clearTimeout(cut);
        this.#drained = () => {};
        this.#finish(this.#link.closeReason ?? reason, code);
      };
      this.#drained = finish;
      const cut = setTimeout(finish, drainMs > 0 ? drainMs : 0);
      cut.unref();
      if (drainMs <= 0) finish();
      else void this.#session.whenIdle().then(() => this.#drained?.());
    }
    return new Promise((resolve) => {
      if (this.#closed) resolve();
      else this.once("close", () => resolve());
    });
  }

  destroy(err?: Error): void {
    if (this.#closed) return;
    this.#link.closeReason ??= err?.message ?? "destroyed";
    this.#session.destroy(this.#link.closeReason ?? "destroyed");
    this.#finish(this.#link.closeReason ?? "destroyed");
  }

  /** The tunnel is over: `close` is emitted, then the session ends the link (if it has not gone). */
  #finish(reason: string, code: number = CLOSE.SHUTDOWN): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#watch.stop();
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    this.#idle.clear();
    this.#idleCount = 0;
    this.emit("close", reason);
    this.#session.close(code, reason);
  }
}

/** The answer the v2 agent itself gave for a refused (403) or unreachable (502) target. */
function refusalAnswer(status: number, message: string): TunnelResponse {
  return {
    status,
    headers: {
      "content-type": "text/plain; charset=utf-8",
      "content-length": String(Buffer.byteLength(message)),
    },
    body: Readable.from([Buffer.from(message)]),
  };
}

/** A raw stream (open()) as a Duplex, with backpressure both ways. */
function streamDuplex(stream: MuxStream, failure: (code: number, message: string) => Error): Duplex {
  let owed = 0;
  let waiting: ((err?: Error | null) => void) | null = null;
  const duplex = new Duplex({
    allowHalfOpen: true,
    highWaterMark: 256 * 1024,
    read() {
      if (owed > 0) {
        const n = owed;
        owed = 0;
        stream.consumed(n);
      }
    },
    write(chunk: Buffer, _enc, cb) {
      if (stream.closed) return cb(failure(LINK_LOST, "stream closed"));
      if (stream.write(chunk)) cb();
      else waiting = cb;
    },
    final(cb) {
      stream.end();
      cb();
    },
    destroy(err, cb) {
      if (!stream.closed) stream.reset(MUX_CODE.CANCEL, "");
      cb(err);
    },
  });
  stream.onData = (chunk) => {
    if (duplex.push(chunk)) stream.consumed(chunk.length);
    else owed += chunk.length;
  };
  stream.onEnd = () => duplex.push(null);
  stream.onDrain = () => {
    const cb = waiting;
    waiting = null;
    cb?.();
  };
  stream.onReset = (code, message) => {
    const cb = waiting;
    waiting = null;
    const err = failure(code, message || "stream reset");
    cb?.(err);
    if (!duplex.destroyed) duplex.destroy(duplex.readableEnded && duplex.writableFinished ? undefined : err);
  };
  stream.onClose = () => {
    if (duplex.readableEnded && duplex.writableFinished && !duplex.destroyed) duplex.destroy();
  };
  return duplex;
}
