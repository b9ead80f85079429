// The API's end of a legacy v1 tunnel (golang.org/x/build/revdial/v2 as forked by the seed's system),
// so that existing Go agents (`revdial-client -server URL -runner-id ID -token T`) keep working.
//
// v1 has no multiplexing: the CONTROL connection (a WebSocket, or a hijacked GET: legacy-control.ts)
// carries JSON lines, and a call needs a DIAL: the server sends `conn-ready` with a fresh request
// id, the agent opens a new DATA WebSocket to `/api/v1/revdial?revdial.dialer=D&revdial.req=R`, and
// that connection carries one raw byte stream to the agent's local address (HTTP/1.1 for request(),
// legacy-exchange.ts; the stream itself for open()).
//
// Keep-alive: the agent only pipes a data connection's bytes to and from its local address, so a
// data connection whose target keeps the HTTP/1.1 connection alive carries the next call too, as
// any HTTP client reuses a connection. After a complete exchange the connection is kept (at most
// MAX_IDLE, each for IDLE_TIMEOUT_MS, under the 5 s keep-alive of common servers), and a call whose
// request can be sent again takes one instead of dialing: no conn-ready, no WebSocket handshake, no
// new connection to the target. One that turns out closed before any answer is retried once on a
// new dial. Calls with a streamed body always dial.
//
// What this implementation does not copy from the Go one: each dial is matched by its own request
// id (no crossing when several run at once), has a deadline and an AbortSignal, and the dialer id
// lives in this tunnel, not in a process-global map; a replaced control connection is closed;
// destroy() cuts the calls in flight too.
//
// Cost per call, since every call is a connection: one timer (the call's deadline, covering the dial
// and the response head), a request id from randomUUID (no syscall), the conn-ready line joined from
// a prefix made once, and the data connection served by ws-data-connection.ts.

import { randomBytes, randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import { Duplex, type Readable } from "node:stream";
import type { Logger } from "../../common/logger.ts";
import { CLOSE } from "../../tunnel/constants.ts";
import {
  TunnelAbortedError,
  TunnelClosedError,
  TunnelStreamError,
  TunnelTimeoutError,
} from "../../tunnel/errors.ts";
import { endToEndHeader } from "../../tunnel/headers.ts";
import type { Tunnel, TunnelTimings } from "../../tunnel/tunnel.ts";
import type { OpenOptions, TunnelRequest, TunnelResponse, TunnelStats } from "../../tunnel/types.ts";
import { StaleConnectionError } from "./http1-exchange.ts";
import { type BodyFraming, requestHead } from "./http1-request.ts";
import type { LegacyControl } from "./legacy-control.ts";
import { type Dial, type ExchangeHost, LegacyExchange } from "./legacy-exchange.ts";
import { WsDataConnection } from "./ws-data-connection.ts";

/** The Go agent gives up after 60 s without a line; keep-alives go out well inside that. */
const KEEPALIVE_MS = 15_000;
/** Longest control line accepted from an agent. */
const MAX_LINE = 64 * 1024;
const KEEPALIVE_LINE = Buffer.from('{"command":"keep-alive"}\n');
/** Idle data connections kept at most. */
const MAX_IDLE = 64;
/** An idle data connection is ended after this long (Node's servers keep one alive for 5 s). */
const IDLE_TIMEOUT_MS = 4000;

export interface LegacyTunnelOptions {
  runnerId: string;
  control: LegacyControl;
  remoteAddress: string;
  logger: Logger;
  timings: TunnelTimings;
  /** conn-ready lines wait this long after the tunnel starts (a hijacked link's settle time). */
  holdDialsMs?: number;
}

export class LegacyTunnel extends EventEmitter implements Tunnel, ExchangeHost {
  readonly runnerId: string;
  readonly protocol = "v1" as const;
  /** Routes this tunnel's data connections to it (the `revdial.dialer` parameter). */
  readonly dialerId = randomBytes(16).toString("hex");
  readonly connectedAt = new Date();
  readonly remoteAddress: string;
  readonly #control: LegacyControl;
  readonly #log: Logger;
  readonly #timings: TunnelTimings;
  readonly #dials = new Map<string, Dial>();
  /** Data connections of calls in flight, and idle ones: destroy() cuts them. */
  readonly #conns = new Set<WsDataConnection>();
  /** Idle data connections kept for the next call, oldest first (handed out newest first). */
  #idle: Array<{ conn: WsDataConnection; since: number }> = [];
  #idleTimer: NodeJS.Timeout | null = null;
  readonly #timer: NodeJS.Timeout;
  /** `{"command":"conn-ready","connPath":"/revdial?revdial.dialer=D&revdial.req=`, made once. */
  readonly #readyPrefix: string;
  /** close() calls waiting for the calls in flight to finish. */
  readonly #drainWaiters: Array<() => void> = [];
  /**
   * conn-ready lines not yet written: they leave together once this turn of the event loop has
   * handled its I/O (setImmediate), one write for every call that arrived in it, or once a hijacked
   * link has settled.
   */
  #pending: string[] = [];
  #flushing = false;
  #settling = false;
  #partial = "";
  #lastFrameAt = Date.now();
  #bytes = { in: 0, out: 0 };
  #closed = false;

  constructor(options: LegacyTunnelOptions) {
    super();
    this.runnerId = options.runnerId;
    this.remoteAddress = options.remoteAddress;
    this.#control = options.control;
    this.#log = options.logger;
    this.#timings = options.timings;
    this.#readyPrefix = `{"command":"conn-ready","connPath":"/revdial?revdial.dialer=${this.dialerId}&revdial.req=`;
    // Liveness for v1 is whatever the seed's Go listener can give: its control lines, and the
    // WebSocket pongs its library (gorilla) sends for our pings. It never answers a keep-alive line
    // (it only writes pickup-failed), so requiring lines would drop every idle deployed agent. A
    // hijacked link has no pings at all: TCP keep-alive watches it (legacy-control.ts). v1 has no
    // HTTP/2 PING; v2 tunnels count only HTTP/2 frames (h2-tunnel.ts).
    this.#control.start({
      data: (chunk) => this.#onControl(chunk),
      alive: () => this.#alive(),
      close: (reason) => this.#finish(reason),
    });
    this.#send(KEEPALIVE_LINE);
    if (options.holdDialsMs) this.#holdDials(options.holdDialsMs);
    const every = Math.min(KEEPALIVE_MS, this.#timings.pingIntervalMs);
    this.#timer = setInterval(() => this.#tick(), every);
    this.#timer.unref();
  }

  get closed(): boolean {
    return this.#closed;
  }

  get transport(): "ws" | "raw" {
    return this.#control.transport;
  }

  #holdDials(ms: number): void {
    this.#settling = true;
    const release = setTimeout(() => {
      this.#settling = false;
      this.#flush();
    }, ms);
    release.unref();
  }

  readonly #flush = (): void => {
    this.#flushing = false;
    if (this.#settling || this.#pending.length === 0) return;
    const lines = this.#pending.length === 1 ? this.#pending[0] : this.#pending.join("");
    this.#pending = [];
    this.#send(Buffer.from(lines));
  };

  #alive(): void {
    this.#lastFrameAt = Date.now();
  }

  #tick(): void {
    if (this.#control.probes && Date.now() - this.#lastFrameAt > this.#timings.deadLinkTimeoutMs) {
      this.#log.warn("legacy tunnel dead: no control line or pong within the dead-link timeout");
      this.destroy(new Error("dead link"));
      return;
    }
    this.#send(KEEPALIVE_LINE);
    this.#control.ping();
  }

  #send(line: Buffer): void {
    if (!this.#control.open) return;
    this.#bytes.out += line.length;
    this.#control.send(line);
  }

  /** Control lines from the agent: split on newlines, not on message boundaries. */
  #onControl(data: Buffer): void {
    this.#alive();
    this.#bytes.in += data.length;
    this.#partial += data.toString("utf8");
    if (this.#partial.length > MAX_LINE && !this.#partial.includes("\n")) {
      this.destroy(new Error("control line too long"));
      return;
    }
    let nl = this.#partial.indexOf("\n");
    while (nl >= 0) {
      const line = this.#partial.slice(0, nl).trim();
      this.#partial = this.#partial.slice(nl + 1);
      if (line && !this.#onLine(line)) return;
      nl = this.#partial.indexOf("\n");
    }
  }

  /** Handles one control line; false when it closed the tunnel. */
  #onLine(line: string): boolean {
    let message: { command?: unknown; connPath?: unknown; err?: unknown } | null;
    try {
      message = JSON.parse(line);
    } catch {
      this.#log.warn("legacy tunnel: a control line is not JSON; closing");
      this.destroy(new Error("control line is not JSON"));
      return false;
    }
    // Any JSON may come (`null` included), and any connPath: an unparsable one matches no dial.
    if (message?.command === "pickup-failed" && typeof message.connPath === "string") {
      const reqId = URL.parse(message.connPath, "http://x")?.searchParams.get("revdial.req") ?? "";
      this.#dials
        .get(reqId)
        ?.fail(
          new TunnelStreamError(
            this.runnerId,
            `agent could not pick up the dial: ${String(message.err ?? "")}`,
          ),
        );
    }
    return true;
  }

  /**
   * Called by the endpoint with an accepted data connection's socket for `reqId` (the 101 not yet
   * written: `accept` is its Sec-WebSocket-Accept). Never throws. When no dial waits, the connection
   * is upgraded and closed at once, as PROTOCOL.md says.
   */
  pickup(
    reqId: string,
    socket: Socket,
    head: Buffer,
    accept: string,
    stillAuthorized: () => boolean = () => true,
  ): void {
    const conn = new WsDataConnection(socket, head, accept);
    conn.stillAuthorized = stillAuthorized;
    const dial = this.#dials.get(reqId);
    if (!dial || this.#closed) {
      conn.close(CLOSE.NORMAL, "no dial waits for this connection");
      return;
    }
    this.#conns.add(conn);
    dial.take(conn);
    // open() may not write at once: the 101 must not wait for it (the target may speak first).
    conn.sendAccept();
  }

  #forget(conn: WsDataConnection): void {
    if (!this.#conns.delete(conn)) return;
    this.#bytes.in += conn.bytesIn;
    this.#bytes.out += conn.bytesOut;
    this.#wakeDrained();
  }

  /** Data connections carrying a call now. */
  #active(): number {
    return this.#conns.size - this.#idle.length;
  }

  #wakeDrained(): void {
    if (this.#active() === 0) for (const wake of this.#drainWaiters.splice(0)) wake();
  }

  /** ExchangeHost: the newest idle data connection, or null. */
  takeIdle(): WsDataConnection | null {
    for (;;) {
      const entry = this.#idle.pop();
      if (!entry) return null;
      if (entry.conn.closed) continue;
      // Its credentials are due to be checked again: a new dial is.
      if (!entry.conn.stillAuthorized()) {
        entry.conn.end();
        continue;
      }
      return entry.conn;
    }
  }

  /** ExchangeHost: keeps a data connection whose exchange is complete, for the next call. */
  keep(conn: WsDataConnection): void {
    if (this.#closed || this.#idle.length >= MAX_IDLE) {
      conn.end();
      return;
    }
    const entry = { conn, since: Date.now() };
    conn.attach({
      // Bytes while idle: the target broke HTTP/1.1 (or is closing); the connection is not reused.
      data: () => conn.destroy(),
      drain: () => {},
      close: () => {
        const i = this.#idle.indexOf(entry);
        if (i >= 0) this.#idle.splice(i, 1);
        this.#forget(conn);
      },
    });
    conn.resume();
    this.#idle.push(entry);
    this.#wakeDrained();
    this.#idleTimer ??= setInterval(() => this.#sweepIdle(), IDLE_TIMEOUT_MS / 2);
    this.#idleTimer.unref();
  }

  #sweepIdle(): void {
    const cutoff = Date.now() - IDLE_TIMEOUT_MS;
    while (this.#idle.length > 0 && this.#idle[0].since <= cutoff) this.#idle.shift()?.conn.end();
    if (this.#idle.length === 0 && this.#idleTimer) {
      clearInterval(this.#idleTimer);
      this.#idleTimer = null;
    }
  }

  #dropIdle(): void {
    const idle = this.#idle;
    this.#idle = [];
    if (this.#idleTimer) clearInterval(this.#idleTimer);
    this.#idleTimer = null;
    for (const { conn } of idle) conn.end();
  }

  /**
   * Starts one dial: conn-ready out; `take` runs when the data connection arrives, `fail` when the
   * agent reports a pickup failure or the tunnel closes. Returns the request id (to cancel it).
   */
  #startDial(dial: Dial): string {
    const reqId = randomUUID().replaceAll("-", "");
    this.#dials.set(reqId, dial);
    this.#pending.push(`${this.#readyPrefix}${reqId}"}\n`);
    if (!this.#flushing && !this.#settling) {
      this.#flushing = true;
      setImmediate(this.#flush);
    }
    return reqId;
  }

  open(_target: string, options: OpenOptions = {}): Promise<Duplex> {
    // A v1 agent serves one local address; the target name has no meaning to it.
    const timeoutMs = options.timeoutMs ?? this.#timings.callTimeoutMs;
    const signal = options.signal;
    if (this.#closed) return Promise.reject(new TunnelClosedError(this.runnerId, "tunnel is closed"));
    if (signal?.aborted) return Promise.reject(new TunnelAbortedError({ cause: signal.reason }));
    return new Promise<Duplex>((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        this.#dials.delete(reqId);
      };
      const onAbort = () => {
        done();
        reject(new TunnelAbortedError({ cause: signal?.reason }));
      };
      const timer = setTimeout(() => {
        done();
        reject(new TunnelTimeoutError(this.runnerId, timeoutMs));
      }, timeoutMs);
      signal?.addEventListener("abort", onAbort, { once: true });
      const reqId = this.#startDial({
        take: (conn) => {
          done();
          resolve(this.#stream(conn));
        },
        fail: (err) => {
          done();
          reject(err);
        },
      });
    });
  }

  /** A data connection as a Duplex (open()): bytes both ways, backpressure both ways. */
  #stream(conn: WsDataConnection): Duplex {
    const stream = new Duplex({
      allowHalfOpen: false,
      read: () => conn.resume(),
      write: (chunk: Buffer, _enc, cb) => {
        if (conn.write(chunk)) cb();
        else waitingDrain = cb;
      },
      final: (cb) => cb(),
      destroy: (err, cb) => {
        if (err) conn.destroy(err);
        else conn.close();
        cb(err);
      },
    });
    let waitingDrain: ((err?: Error | null) => void) | null = null;
    conn.attach({
      data: (chunk) => {
        if (!stream.push(chunk)) conn.pause();
      },
      drain: () => {
        const cb = waitingDrain;
        waitingDrain = null;
        cb?.();
      },
      close: (_reason, err) => {
        this.#forget(conn);
        const cb = waitingDrain;
        waitingDrain = null;
        cb?.(err ?? new Error("data connection closed"));
        stream.push(null);
        if (err) stream.destroy(err);
      },
    });
    return stream;
  }

  request(req: TunnelRequest): Promise<TunnelResponse> {
    const timeoutMs = req.timeoutMs ?? this.#timings.callTimeoutMs;
    const signal = req.signal;
    if (this.#closed) return Promise.reject(new TunnelClosedError(this.runnerId, "tunnel is closed"));
    if (signal?.aborted) return Promise.reject(new TunnelAbortedError({ cause: signal.reason }));
    const body = req.body;
    const declared = endToEndHeader(req.headers, "content-length");
    const framing: BodyFraming =
      body == null ? "none" : typeof body === "string" || Buffer.isBuffer(body) ? "length" : "chunked";
    const inline = typeof body === "string" ? Buffer.from(body) : Buffer.isBuffer(body) ? body : null;
    const streamed = framing === "chunked" && declared !== undefined ? "length" : framing;
    // HTTP/1.1 keep-alive over the data connection (see the top of this file), and the Go client's
    // local address as the Host it always had.
    // requestHead sends the end-to-end headers only.
    const head = requestHead(
      req.method,
      req.path,
      req.headers,
      { framing: streamed, length: inline?.length },
      { host: "localhost:9876", keepAlive: true },
    );
    if (head instanceof Error) return Promise.reject(new TunnelStreamError(this.runnerId, head.message));
    const replayable = framing !== "chunked";
    const started = Date.now();
    const attempt = (reuse: boolean, ms: number) =>
      new Promise<TunnelResponse>((resolve, reject) => {
        new LegacyExchange({
          tunnel: this,
          runnerId: this.runnerId,
          method: req.method,
          head: Buffer.from(head, "latin1"),
          inline,
          stream: framing === "chunked" ? (body as Readable) : null,
          chunked: streamed === "chunked",
          declaredLength: Number(declared ?? 0),
          timeoutMs: ms,
          signal,
          reuse,
          resolve,
          reject,
        });
      });
    return attempt(replayable, timeoutMs).catch((err: Error) => {
      // A kept connection that was closed meanwhile: once more, on a new dial.
      if (!(err instanceof StaleConnectionError)) throw err;
      if (this.#closed) throw new TunnelClosedError(this.runnerId, "tunnel is closed");
      return attempt(false, Math.max(1, timeoutMs - (Date.now() - started)));
    });
  }

  /** ExchangeHost: registers a dial of a request(). */
  dialFor(dial: Dial): string {
    return this.#startDial(dial);
  }

  /** ExchangeHost: the dial is over (answered, failed or given up). */
  endDial(reqId: string): void {
    this.#dials.delete(reqId);
  }

  /** ExchangeHost: a request()'s data connection is done. */
  release(conn: WsDataConnection): void {
    this.#forget(conn);
  }

  stats(): TunnelStats {
    let inFlightIn = 0;
    let inFlightOut = 0;
    for (const c of this.#conns) {
      inFlightIn += c.bytesIn;
      inFlightOut += c.bytesOut;
    }
    return {
      runner_id: this.runnerId,
      protocol: this.protocol,
      transport: this.#control.transport,
      connected_at: this.connectedAt.toISOString(),
      remote_address: this.remoteAddress,
      rtt_ms: null,
      active_streams: this.#active(),
      bytes_in: this.#bytes.in + inFlightIn,
      bytes_out: this.#bytes.out + inFlightOut,
    };
  }

  /**
   * v1 has no GOAWAY: the control connection closes (new dials fail), calls in flight own their data
   * connections and finish within `drainMs`; what is left then is cut.
   */
  close(
    code: number = CLOSE.SHUTDOWN,
    reason = "server shutting down",
    drainMs = this.#timings.drainTimeoutMs,
  ): Promise<void> {
    this.#dropIdle();
    if (this.#closed && this.#active() === 0) return Promise.resolve();
    const drained = new Promise<void>((resolve) => {
      if (this.#active() === 0) resolve();
      else this.#drainWaiters.push(resolve);
    });
    this.#control.close(code, reason);
    this.#finish(reason);
    const hard = setTimeout(() => this.destroy(), drainMs);
    hard.unref();
    return drained.finally(() => clearTimeout(hard));
  }

  destroy(err?: Error): void {
    this.#control.destroy();
    this.#finish(err?.message ?? "destroyed");
    for (const conn of [...this.#conns])
      conn.destroy(new TunnelClosedError(this.runnerId, "tunnel destroyed"));
  }

  #finish(reason: string): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    this.#dropIdle();
    for (const dial of [...this.#dials.values()]) dial.fail(new TunnelClosedError(this.runnerId, reason));
    this.emit("close", reason);
  }
}
