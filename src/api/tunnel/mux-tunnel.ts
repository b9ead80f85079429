// The API's end of one protocol-v3 tunnel (docs/protocol.md, v3): a MuxSession over the agent's
// link, and an HTTP/1.1 client of its own (mux-http-client.ts) whose connections are v3 streams the
// agent pipes to its targets. Connections are pooled per target and reused while the target keeps them alive, so a
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
import type { Duplex } from "node:stream";
import type { Logger } from "../../common/logger.ts";
import { CLOSE, DEFAULT_TARGET } from "../../tunnel/constants.ts";
import { TunnelClosedError, TunnelStreamError } from "../../tunnel/errors.ts";
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

import { type LinkFailure, LinkWatch } from "./link-watch.ts";
import { type Acquired, MuxHttpClient, type Pending } from "./mux-http-client.ts";

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
  readonly #http: MuxHttpClient;
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
        this.#http.dropIdle();
      },
      onProtocolError: (message) => this.#log.warn({ err: message }, "tunnel protocol error"),
      windowFor: () => this.#windowFor(),
    });
    this.#http = new MuxHttpClient({
      runnerId: this.runnerId,
      callTimeoutMs: this.#timings.callTimeoutMs,
      now: this.#now,
      openStream: (target) => this.#session.open(target),
      closing: () => this.#closing || this.#closed,
      closeReason: () => this.#link.closeReason ?? "tunnel is closing",
      failure: (code, message) => this.#streamFailure(code, message),
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
    if (this.#session.streamCount - this.#http.idleCount > 1) this.#sharedAt = now;
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
      active_streams: this.#session.streamCount - this.#http.idleCount,
      bytes_in: this.#link.bytesIn,
      bytes_out: this.#link.bytesOut,
    };
  }

  request(req: TunnelRequest): Promise<TunnelResponse> {
    return this.#http.request(req, req.target ?? DEFAULT_TARGET);
  }

  open(target: string, options: OpenOptions = {}): Promise<Duplex> {
    return this.#http.open(target, options);
  }

  /**
   * A connection to `target` for a caller that speaks HTTP over it itself (a forwarded call's
   * splice, ../cluster/peer.ts): pooled unless `fresh`. Give it back with release() once its
   * exchange is complete, or reset it.
   */
  acquire(target: string, track: (p: Pending) => void, fresh: boolean): Promise<Acquired> {
    return this.#http.acquire(target, track, fresh);
  }

  /** A connection from acquire() whose exchange is complete: back to the pool. */
  release(target: string, stream: MuxStream, host: string): void {
    this.#http.release(target, stream, host);
  }

  #streamFailure(code: number, message: string): Error {
    if (code === LINK_LOST || this.#closed)
      return new TunnelClosedError(this.runnerId, this.#link.closeReason ?? (message || "link lost"));
    return new TunnelStreamError(this.runnerId, message || `stream reset by the agent (code ${code})`);
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
      this.#http.dropIdle();
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
    this.#http.forget();
    this.emit("close", reason);
    this.#session.close(code, reason);
  }
}
