// The API's end of a legacy v1 tunnel (golang.org/x/build/revdial/v2 as forked by the seed's system),
// so that existing Go agents (`revdial-client -server URL -runner-id ID -token T`) keep working.
//
// v1 has no multiplexing: the CONTROL WebSocket carries JSON lines, and every call is a DIAL: the
// server sends `conn-ready` with a fresh request id, the agent opens a new DATA WebSocket to
// `/api/v1/revdial?revdial.dialer=D&revdial.req=R`, and that connection carries one raw byte stream
// to the agent's local address (one HTTP/1.1 exchange for request()).
//
// What this implementation does not copy from the Go one: each dial is matched by its own request
// id (no crossing when several run at once), has a deadline and an AbortSignal, and the dialer id
// lives in this tunnel, not in a process-global map; a replaced control connection is closed.

import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import http from "node:http";
import type { Duplex } from "node:stream";
import type { WebSocket } from "ws";
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
import { WebSocketStream } from "../../tunnel/ws-stream.ts";

/** The Go agent gives up after 60 s without a line; keep-alives go out well inside that. */
const KEEPALIVE_MS = 15_000;
/** Longest control line accepted from an agent. */
const MAX_LINE = 64 * 1024;

export interface LegacyTunnelOptions {
  runnerId: string;
  ws: WebSocket;
  remoteAddress: string;
  logger: Logger;
  timings: TunnelTimings;
}

interface Dial {
  resolve(stream: Duplex): void;
  reject(err: Error): void;
}

export class LegacyTunnel extends EventEmitter implements Tunnel {
  readonly runnerId: string;
  readonly protocol = "v1" as const;
  /** Routes this tunnel's data connections to it (the `revdial.dialer` parameter). */
  readonly dialerId = randomBytes(16).toString("hex");
  readonly connectedAt = new Date();
  readonly remoteAddress: string;
  readonly #ws: WebSocket;
  readonly #log: Logger;
  readonly #timings: TunnelTimings;
  readonly #dials = new Map<string, Dial>();
  readonly #timer: NodeJS.Timeout;
  #partial = "";
  #lastFrameAt = Date.now();
  #active = 0;
  #bytes = { in: 0, out: 0 };
  #closed = false;

  constructor(options: LegacyTunnelOptions) {
    super();
    this.runnerId = options.runnerId;
    this.remoteAddress = options.remoteAddress;
    this.#ws = options.ws;
    this.#log = options.logger;
    this.#timings = options.timings;
    const ws = this.#ws;
    // Liveness for v1 is whatever the seed's Go listener can give: its control lines, and the
    // WebSocket pongs its library (gorilla) sends for our pings. It never answers a keep-alive line
    // (it only writes pickup-failed), so requiring lines would drop every idle deployed agent. v1
    // has no HTTP/2 PING; v2 tunnels count only HTTP/2 frames (h2-tunnel.ts).
    ws.on("message", (data: Buffer) => this.#onControl(data));
    ws.on("pong", () => this.#alive());
    ws.on("error", () => {});
    ws.on("close", (code: number, reason: Buffer) =>
      this.#finish(reason.toString() || `control closed (${code})`),
    );
    this.#send({ command: "keep-alive" });
    const every = Math.min(KEEPALIVE_MS, this.#timings.pingIntervalMs);
    this.#timer = setInterval(() => this.#tick(), every);
    this.#timer.unref();
  }

  get closed(): boolean {
    return this.#closed;
  }

  #alive(): void {
    this.#lastFrameAt = Date.now();
  }

  #tick(): void {
    if (Date.now() - this.#lastFrameAt > this.#timings.deadLinkTimeoutMs) {
      this.#log.warn("legacy tunnel dead: no control line or pong within the dead-link timeout");
      this.destroy(new Error("dead link"));
      return;
    }
    this.#send({ command: "keep-alive" });
    try {
      this.#ws.ping();
    } catch {
      // Closing; the close event finishes the tunnel.
    }
  }

  #send(message: Record<string, string>): void {
    if (this.#ws.readyState !== this.#ws.OPEN) return;
    const line = Buffer.from(`${JSON.stringify(message)}\n`);
    this.#bytes.out += line.length;
    this.#ws.send(line, { binary: true });
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
      const dial = this.#dials.get(reqId);
      dial?.reject(
        new TunnelStreamError(
          this.runnerId,
          `agent could not pick up the dial: ${String(message.err ?? "")}`,
        ),
      );
    }
    return true;
  }

  /** Called by the endpoint with a data connection for `reqId`; false when no dial waits for it. */
  pickup(reqId: string, ws: WebSocket): boolean {
    const dial = this.#dials.get(reqId);
    if (!dial) return false;
    const stream = new WebSocketStream(ws);
    this.#active++;
    stream.once("close", () => {
      this.#active--;
      this.#bytes.in += stream.bytesIn;
      this.#bytes.out += stream.bytesOut;
    });
    dial.resolve(stream);
    return true;
  }

  /** One dial: conn-ready out, a data connection back, within the deadline. */
  #dial(timeoutMs: number, signal?: AbortSignal): Promise<Duplex> {
    if (this.#closed) return Promise.reject(new TunnelClosedError(this.runnerId, "tunnel is closed"));
    if (signal?.aborted) return Promise.reject(new TunnelAbortedError({ cause: signal.reason }));
    const reqId = randomBytes(16).toString("hex");
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
      this.#dials.set(reqId, {
        resolve: (stream) => {
          done();
          resolve(stream);
        },
        reject: (err) => {
          done();
          reject(err);
        },
      });
      this.#send({
        command: "conn-ready",
        connPath: `/revdial?revdial.dialer=${this.dialerId}&revdial.req=${reqId}`,
      });
    });
  }

  open(_target: string, options: OpenOptions = {}): Promise<Duplex> {
    // A v1 agent serves one local address; the target name has no meaning to it.
    return this.#dial(options.timeoutMs ?? this.#timings.callTimeoutMs, options.signal);
  }

  async request(req: TunnelRequest): Promise<TunnelResponse> {
    const timeoutMs = req.timeoutMs ?? this.#timings.callTimeoutMs;
    const started = Date.now();
    const conn = await this.#dial(timeoutMs, req.signal);
    return this.#exchange(conn, req, Math.max(1, timeoutMs - (Date.now() - started)));
  }

  /** One HTTP/1.1 exchange on a data connection; the connection ends with the response. */
  #exchange(conn: Duplex, req: TunnelRequest, timeoutMs: number): Promise<TunnelResponse> {
    const headers = copyEndToEnd(req.headers, { host: "localhost:9876", connection: "close" });
    return new Promise((resolve, reject) => {
      const outgoing = http.request({
        createConnection: () => conn as unknown as import("node:net").Socket,
        method: req.method,
        path: req.path,
        headers,
        signal: req.signal,
      });
      const timer = setTimeout(
        () => outgoing.destroy(new TunnelTimeoutError(this.runnerId, timeoutMs)),
        timeoutMs,
      );
      outgoing.once("response", (res) => {
        clearTimeout(timer);
        res.once("close", () => conn.destroy());
        const out = copyEndToEnd(res.headers);
        resolve({ status: res.statusCode ?? 502, headers: out, body: res });
      });
      outgoing.once("error", (err) => {
        clearTimeout(timer);
        conn.destroy();
        if (err instanceof TunnelTimeoutError) reject(err);
        else if (req.signal?.aborted) reject(new TunnelAbortedError({ cause: req.signal.reason }));
        else reject(new TunnelStreamError(this.runnerId, err.message, { cause: err }));
      });
      const body = req.body;
      if (body == null) outgoing.end();
      else if (typeof body === "string" || Buffer.isBuffer(body)) outgoing.end(body);
      else {
        // A body that fails or is destroyed before its end cuts the data connection: the target
        // sees an aborted request, never a complete one (pipe would just stop, leaving it waiting).
        const cut = () => {
          if (!body.readableEnded) outgoing.destroy(new TunnelAbortedError());
        };
        body.on("error", cut);
        body.once("close", cut);
        body.pipe(outgoing);
      }
    });
  }

  stats(): TunnelStats {
    return {
      runner_id: this.runnerId,
      protocol: this.protocol,
      transport: "ws",
      connected_at: this.connectedAt.toISOString(),
      remote_address: this.remoteAddress,
      rtt_ms: null,
      active_streams: this.#active,
      bytes_in: this.#bytes.in,
      bytes_out: this.#bytes.out,
    };
  }

  /** v1 has no GOAWAY: calls in flight own their data connections and finish on their own. */
  close(
    code: number = CLOSE.SHUTDOWN,
    reason = "server shutting down",
    drainMs = this.#timings.drainTimeoutMs,
  ): Promise<void> {
    if (this.#closed) return Promise.resolve();
    const closed = new Promise<void>((resolve) => this.once("close", () => resolve()));
    if (this.#ws.readyState === this.#ws.OPEN) this.#ws.close(code, reason);
    const hard = setTimeout(() => this.destroy(), drainMs);
    hard.unref();
    return closed.finally(() => clearTimeout(hard));
  }

  destroy(err?: Error): void {
    if (this.#closed) return;
    this.#ws.terminate();
    this.#finish(err?.message ?? "destroyed");
  }

  #finish(reason: string): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    for (const dial of [...this.#dials.values()]) dial.reject(new TunnelClosedError(this.runnerId, reason));
    this.emit("close", reason);
  }
}
