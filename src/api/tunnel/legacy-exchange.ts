// One v1 request() (legacy-tunnel.ts): its data connection (an idle one the tunnel kept, or a new
// dial), its request written on it, and its response read back (http1-parser.ts). Its own file
// because it is the per-call state machine: one deadline covers the dial and the response head; the
// AbortSignal holds until the body has ended; once the response is complete the data connection
// goes back to the tunnel when the target keeps it alive (else it is ended), and it is cut on any
// failure. A kept connection that closes before any byte of an answer is stale: the call rejects
// with StaleConnectionError, and the tunnel may send it again on a new dial.

import { Readable } from "node:stream";
import { TunnelAbortedError, TunnelStreamError, TunnelTimeoutError } from "../../tunnel/errors.ts";
import { copyEndToEnd } from "../../tunnel/headers.ts";
import type { TunnelResponse } from "../../tunnel/types.ts";
import { StaleConnectionError } from "./http1-exchange.ts";
import { Http1ResponseParser } from "./http1-parser.ts";
import { chunkFrame, LAST_CHUNK } from "./http1-request.ts";
import type { WsDataConnection } from "./ws-data-connection.ts";

/** Bodies up to this size leave in the same frame as the request head. */
const INLINE_BODY = 64 * 1024;

/** A dial waiting for its data connection; `take` runs synchronously when it arrives. */
export interface Dial {
  take(conn: WsDataConnection): void;
  fail(err: Error): void;
}

/** What an exchange needs from its tunnel. */
export interface ExchangeHost {
  /** Sends conn-ready for a new dial; returns its request id. */
  dialFor(dial: Dial): string;
  /** The dial is over (answered, failed or given up). */
  endDial(reqId: string): void;
  /** The exchange's data connection is done. */
  release(conn: WsDataConnection): void;
  /** An idle data connection kept from an earlier call, or null. */
  takeIdle(): WsDataConnection | null;
  /** The exchange is complete and the connection fit for another: the tunnel keeps it. */
  keep(conn: WsDataConnection): void;
}

export interface ExchangeOptions {
  tunnel: ExchangeHost;
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
  /** Take an idle data connection when the tunnel has one (the request can be sent again). */
  reuse: boolean;
  resolve(res: TunnelResponse): void;
  reject(err: Error): void;
}

/**
 * One request(): its dial, its request written on the data connection, its response read back. One
 * deadline covers the dial and the response head; the AbortSignal holds until the body has ended.
 */
export class LegacyExchange {
  readonly #o: ExchangeOptions;
  readonly #reqId: string;
  readonly #timer: NodeJS.Timeout;
  #conn: WsDataConnection | null = null;
  #body: Readable | null = null;
  #settled = false;
  #over = false;
  /** The connection carried an earlier call. */
  #reused = false;
  /** The whole request has been written. */
  #requestDone = false;
  #keepAlive = false;
  #reader: Http1ResponseParser | null = null;
  /** Stops reading a streamed request body (set once it is being piped). */
  #unpipe: (() => void) | null = null;

  constructor(o: ExchangeOptions) {
    this.#o = o;
    this.#timer = setTimeout(() => this.#fail(new TunnelTimeoutError(o.runnerId, o.timeoutMs)), o.timeoutMs);
    o.signal?.addEventListener("abort", this.#onAbort, { once: true });
    const idle = o.reuse ? o.tunnel.takeIdle() : null;
    if (idle) {
      this.#reqId = "";
      this.#reused = true;
      this.#start(idle);
      return;
    }
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
    const reader = new Http1ResponseParser(
      {
        head: (head) => {
          this.#keepAlive = head.keepAlive;
          this.#onHead(head.status, head.headers);
        },
        body: (chunk) => {
          if (this.#body && !this.#body.push(chunk)) conn.pause();
        },
        complete: () => this.#onEnd(),
        error: (message) =>
          this.#fail(
            new TunnelStreamError(o.runnerId, `invalid response from the agent's target: ${message}`),
          ),
      },
      o.method.toUpperCase() === "HEAD",
    );
    this.#reader = reader;
    conn.attach({
      data: (chunk) => reader.push(chunk),
      drain: () => o.stream?.resume(),
      close: (reason, err) => {
        o.tunnel.release(conn);
        if (this.#over) return;
        // A kept connection that the agent or its target closed before answering: stale.
        if (this.#reused && reader.untouched) {
          this.#fail(new StaleConnectionError(`data connection ${reason}`));
          return;
        }
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
    else this.#requestDone = true;
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
      this.#requestDone = sent === declared || chunked;
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
    const conn = this.#conn;
    // Fit for another call: the target keeps it alive, the request went whole, nothing came after.
    if (conn && this.#keepAlive && this.#requestDone && !this.#reader?.overrun && !conn.closed)
      this.#o.tunnel.keep(conn);
    else conn?.end();
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
