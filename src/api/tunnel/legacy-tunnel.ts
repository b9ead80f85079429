// The API's end of a legacy v1 tunnel (golang.org/x/build/revdial/v2 as forked by the seed's system),
// so that existing Go agents (`revdial-client -server URL -runner-id ID -token T`) keep working.
//
// v1 has no multiplexing: the CONTROL connection (a WebSocket, or a hijacked GET: legacy-control.ts)
// carries JSON lines, and every call is a DIAL: the server sends `conn-ready` with a fresh request
// id, the agent opens a new DATA WebSocket to `/api/v1/revdial?revdial.dialer=D&revdial.req=R`, and
// that connection carries one raw byte stream to the agent's local address (one HTTP/1.1 exchange
// for request(), http1-exchange.ts; the stream itself for open()).
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
import { Duplex, Readable } from "node:stream";
import type { Logger } from "../../common/logger.ts";
import { CLOSE } from "../../tunnel/constants.ts";
import {
  TunnelAbortedError,
  TunnelClosedError,
  TunnelStreamError,
  TunnelTimeoutError,
} from "../../tunnel/errors.ts";
import { copyEndToEnd } from "../../tunnel/headers.ts";
import type { Tunnel, TunnelTimings } from "../../tunnel/tunnel.ts";
import type { OpenOptions, TunnelRequest, TunnelResponse, TunnelStats } from "../../tunnel/types.ts";
import { type BodyFraming, chunkFrame, LAST_CHUNK, ResponseReader, requestHead } from "./http1-exchange.ts";
import type { LegacyControl } from "./legacy-control.ts";
import { WsDataConnection } from "./ws-data-connection.ts";

/** The Go agent gives up after 60 s without a line; keep-alives go out well inside that. */
const KEEPALIVE_MS = 15_000;
/** Longest control line accepted from an agent. */
const MAX_LINE = 64 * 1024;
const KEEPALIVE_LINE = Buffer.from('{"command":"keep-alive"}\n');
/** Bodies up to this size leave in the same frame as the request head. */
const INLINE_BODY = 64 * 1024;

export interface LegacyTunnelOptions {
  runnerId: string;
  control: LegacyControl;
  remoteAddress: string;
  logger: Logger;
  timings: TunnelTimings;
  /** conn-ready lines wait this long after the tunnel starts (a hijacked link's settle time). */
  holdDialsMs?: number;
}

/** A dial waiting for its data connection; `take` runs synchronously when it arrives. */
interface Dial {
  take(conn: WsDataConnection): void;
  fail(err: Error): void;
}

export class LegacyTunnel extends EventEmitter implements Tunnel {
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
  /** Data connections of calls in flight: destroy() cuts them. */
  readonly #conns = new Set<WsDataConnection>();
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
  pickup(reqId: string, socket: Socket, head: Buffer, accept: string): void {
    const conn = new WsDataConnection(socket, head, accept);
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
    if (this.#conns.size === 0) for (const wake of this.#drainWaiters.splice(0)) wake();
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
    const headers = copyEndToEnd(req.headers);
    const framing: BodyFraming =
      body == null ? "none" : typeof body === "string" || Buffer.isBuffer(body) ? "length" : "chunked";
    const inline = typeof body === "string" ? Buffer.from(body) : Buffer.isBuffer(body) ? body : null;
    const streamed = framing === "chunked" && headers["content-length"] !== undefined ? "length" : framing;
    const head = requestHead(req.method, req.path, headers, { framing: streamed, length: inline?.length });
    if (head instanceof Error) return Promise.reject(new TunnelStreamError(this.runnerId, head.message));
    return new Promise<TunnelResponse>((resolve, reject) => {
      new LegacyExchange({
        tunnel: this,
        runnerId: this.runnerId,
        method: req.method,
        head: Buffer.from(head, "latin1"),
        inline,
        stream: framing === "chunked" ? (body as Readable) : null,
        chunked: streamed === "chunked",
        declaredLength: Number(headers["content-length"] ?? 0),
        timeoutMs,
        signal,
        resolve,
        reject,
      });
    });
  }

  /** For LegacyExchange: registers its dial. */
  dialFor(dial: Dial): string {
    return this.#startDial(dial);
  }

  /** For LegacyExchange: the dial is over (answered, failed or given up). */
  endDial(reqId: string): void {
    this.#dials.delete(reqId);
  }

  /** For LegacyExchange: its data connection is done. */
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
      active_streams: this.#conns.size,
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
    if (this.#closed && this.#conns.size === 0) return Promise.resolve();
    const drained = new Promise<void>((resolve) => {
      if (this.#conns.size === 0) resolve();
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
    for (const dial of [...this.#dials.values()]) dial.fail(new TunnelClosedError(this.runnerId, reason));
    this.emit("close", reason);
  }
}

interface ExchangeOptions {
  tunnel: LegacyTunnel;
  runnerId: string;
  method: string;
  head: Buffer;
  /** A whole body sent with the head; null when there is none or it streams. */
  inline: Buffer | null;
  stream: Readable | null;
  chunked: boolean;
  /** The caller's Content-Length of a streamed body (when not chunked). */
  declaredLength: number;
  timeoutMs: number;
  signal: AbortSignal | undefined;
  resolve(res: TunnelResponse): void;
  reject(err: Error): void;
}

/**
 * One request(): its dial, its request written on the data connection, its response read back. One
 * deadline covers the dial and the response head; the AbortSignal holds until the body has ended.
 */
class LegacyExchange {
  readonly #o: ExchangeOptions;
  readonly #reqId: string;
  readonly #timer: NodeJS.Timeout;
  #conn: WsDataConnection | null = null;
  #body: Readable | null = null;
  #settled = false;
  #over = false;
  /** Stops reading a streamed request body (set once it is being piped). */
  #unpipe: (() => void) | null = null;

  constructor(o: ExchangeOptions) {
    this.#o = o;
    this.#timer = setTimeout(() => this.#fail(new TunnelTimeoutError(o.runnerId, o.timeoutMs)), o.timeoutMs);
    o.signal?.addEventListener("abort", this.#onAbort, { once: true });
    this.#reqId = o.tunnel.dialFor({ take: (conn) => this.#start(conn), fail: (err) => this.#fail(err) });
  }

  readonly #onAbort = (): void => {
    this.#fail(new TunnelAbortedError({ cause: this.#o.signal?.reason }));
  };

  /** The data connection arrived: the request leaves, in one frame when it is small. */
  #start(conn: WsDataConnection): void {
    const o = this.#o;
    o.tunnel.endDial(this.#reqId);
    this.#conn = conn;
    const reader = new ResponseReader(o.method, {
      head: (head) => this.#onHead(head.status, head.headers),
      body: (chunk) => {
        if (this.#body && !this.#body.push(chunk)) conn.pause();
      },
      end: () => this.#onEnd(),
      error: (err) => this.#fail(new TunnelStreamError(o.runnerId, err.message, { cause: err })),
    });
    conn.attach({
      data: (chunk) => reader.push(chunk),
      drain: () => o.stream?.resume(),
      close: (reason, err) => {
        o.tunnel.release(conn);
        // A body that runs to the end of the connection ends here, unless the connection failed.
        if (!err && !reader.done) reader.end();
        if (!this.#over)
          this.#fail(new TunnelStreamError(o.runnerId, `data connection ${reason}`, { cause: err }));
      },
    });
    if (o.inline && o.inline.length <= INLINE_BODY) conn.write(Buffer.concat([o.head, o.inline]));
    else {
      conn.write(o.head);
      if (o.inline) conn.write(o.inline);
    }
    if (o.stream) this.#pipeBody(o.stream, conn);
  }

  /**
   * A streamed body: chunked unless its length is known; one that fails, stops early or runs past
   * its declared length cuts. Once the exchange is over, what is left of it is read and dropped.
   */
  #pipeBody(body: Readable, conn: WsDataConnection): void {
    const chunked = this.#o.chunked;
    const declared = chunked ? Number.POSITIVE_INFINITY : this.#o.declaredLength;
    let sent = 0;
    const onData = (chunk: Buffer | string) => {
      const bytes = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
      if (bytes.length === 0) return;
      sent += bytes.length;
      if (sent > declared) {
        this.#fail(
          new TunnelStreamError(this.#o.runnerId, `request body longer than its Content-Length ${declared}`),
        );
        return;
      }
      if (!conn.write(chunked ? chunkFrame(bytes) : bytes)) body.pause();
    };
    body.on("data", onData);
    body.once("end", () => {
      if (chunked) conn.write(LAST_CHUNK);
    });
    // A body that fails or is destroyed before its end cuts the data connection: the target sees
    // an aborted request, never a complete one.
    const cut = () => {
      if (!body.readableEnded) this.#fail(new TunnelAbortedError());
    };
    body.on("error", cut);
    body.once("close", cut);
    this.#unpipe = () => {
      body.off("data", onData);
      body.resume();
    };
  }

  #onHead(status: number, headers: Record<string, string | string[]>): void {
    if (this.#settled) return;
    this.#settled = true;
    clearTimeout(this.#timer);
    const conn = this.#conn as WsDataConnection;
    const body = new Readable({
      read: () => conn.resume(),
      destroy: (err, cb) => {
        // Read to its end, the body closes the connection; given up early, it cuts it.
        if (!this.#over) this.#fail(err ?? new TunnelAbortedError());
        cb(err);
      },
    });
    this.#body = body;
    this.#o.resolve({ status, headers: copyEndToEnd(headers), body });
  }

  #onEnd(): void {
    this.#over = true;
    this.#cleanup();
    this.#conn?.end();
    this.#body?.push(null);
  }

  #fail(err: Error): void {
    if (this.#over) return;
    this.#over = true;
    this.#cleanup();
    this.#o.tunnel.endDial(this.#reqId);
    this.#conn?.destroy(err);
    if (!this.#settled) {
      this.#settled = true;
      this.#o.reject(err);
    } else if (this.#body && !this.#body.destroyed) this.#body.destroy(err);
  }

  #cleanup(): void {
    clearTimeout(this.#timer);
    this.#o.signal?.removeEventListener("abort", this.#onAbort);
    this.#unpipe?.();
    this.#unpipe = null;
  }
}
