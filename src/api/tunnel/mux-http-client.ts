// The API's HTTP/1.1 client over v3 streams (mux-session.ts) that something pipes to a target: the
// agent of a local tunnel (mux-tunnel.ts), or, for a forwarded call, another replica that splices
// the stream to its own tunnel's connection (../cluster/peer.ts). It keeps idle connections per
// target and reuses them while the target keeps them alive, so a call costs one request written and
// one answer read.
//
// Contracts:
// - request() resolves with the answer's head and a streamed body, or rejects with a TunnelError
//   (or what `failure` names a stream's failure); a target refused is a 403 answer, an unreachable
//   one a 502 answer.
// - A call whose reused connection turns out closed by the target before any answer is retried
//   once on a fresh one, when its body can be sent again (none, or given whole).
// - Every call has a deadline for its answer's head and honours its AbortSignal; both reset its
//   stream, so the far end cuts the target's socket.
// - No call starts, and no connection is pooled, once `closing()` says so.

import { Duplex, Readable } from "node:stream";
import {
  TunnelAbortedError,
  TunnelClosedError,
  TunnelStreamError,
  TunnelTimeoutError,
} from "../../tunnel/errors.ts";
import { MUX_CODE } from "../../tunnel/mux-frames.ts";
import { LINK_LOST, type MuxStream } from "../../tunnel/mux-session.ts";
import type { OpenOptions, TunnelRequest, TunnelResponse } from "../../tunnel/types.ts";
import { Http1Exchange, StaleConnectionError } from "./http1-exchange.ts";

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
export interface Pending {
  cancel(err: Error): void;
}

/** A connection to a target: pooled or new; or the far end's refusal of the target. */
export type Acquired =
  | { stream: MuxStream; host: string; reused: boolean }
  | { refused: number; message: string };

export interface MuxHttpClientOptions {
  runnerId: string;
  callTimeoutMs: number;
  now: () => number;
  /** A new stream to `target`, or null when no new stream can be opened. */
  openStream(target: string): MuxStream | null;
  /** True once no new call may start (closing or closed). */
  closing(): boolean;
  /** Why, for the errors of calls refused meanwhile. */
  closeReason(): string;
  /** How to name a stream's failure (the link gone, a reset). */
  failure(code: number, message: string): Error;
}

export class MuxHttpClient {
  readonly #o: MuxHttpClientOptions;
  readonly #idle = new Map<string, Conn[]>();
  #idleCount = 0;
  #idleTimer: NodeJS.Timeout | null = null;

  constructor(options: MuxHttpClientOptions) {
    this.#o = options;
  }

  /** Pooled connections waiting for a call. */
  get idleCount(): number {
    return this.#idleCount;
  }

  request(req: TunnelRequest, target: string): Promise<TunnelResponse> {
    const { runnerId } = this.#o;
    const replayable = req.body == null || typeof req.body === "string" || Buffer.isBuffer(req.body);
    const isHead = req.method.toUpperCase() === "HEAD";
    // A streamed body may fail while the call still waits for its stream (OPENED): the exchange sees
    // that when it starts (http1-exchange.ts), so the error must not go unheard meanwhile.
    if (req.body instanceof Readable) req.body.on("error", () => {});
    return this.#withDeadline(req.timeoutMs ?? this.#o.callTimeoutMs, req.signal, async (track) => {
      for (let attempt = 0; ; attempt++) {
        // A retry takes a fresh stream: the pooled one just failed as stale, and so may its neighbours.
        const conn = await this.acquire(target, track, attempt > 0);
        if ("refused" in conn) return refusalAnswer(conn.refused, conn.message);
        const exchange = new Http1Exchange(
          conn.stream,
          {
            runnerId,
            host: conn.host,
            reused: conn.reused,
            release: () => this.release(target, conn.stream, conn.host),
            discard: () => {},
            failure: (code, message) => this.#o.failure(code, message),
          },
          isHead,
        );
        track({ cancel: (err) => exchange.abort(err) });
        try {
          return await exchange.start(req);
        } catch (err) {
          if (err instanceof StaleConnectionError && attempt === 0 && replayable && !this.#o.closing())
            continue;
          if (err instanceof StaleConnectionError) throw this.#o.failure(MUX_CODE.CANCEL, err.message);
          throw err;
        }
      }
    });
  }

  open(target: string, options: OpenOptions = {}): Promise<Duplex> {
    return this.#withDeadline(options.timeoutMs ?? this.#o.callTimeoutMs, options.signal, async (track) => {
      const conn = await this.acquire(target, track, true);
      if ("refused" in conn)
        throw new TunnelStreamError(this.#o.runnerId, `agent answered ${conn.refused} to CONNECT ${target}`);
      return streamDuplex(conn.stream, (code, message) => this.#o.failure(code, message));
    });
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
    if (this.#o.closing())
      return Promise.reject(new TunnelClosedError(this.#o.runnerId, "tunnel is closing"));
    return withDeadline(this.#o.runnerId, timeoutMs, signal, work);
  }

  /**
   * A pooled connection to `target` (unless `fresh`), or a new stream once the far end says it is
   * connected. `track` gets what cancels the wait.
   */
  acquire(target: string, track: (p: Pending) => void, fresh = false): Promise<Acquired> {
    if (!fresh) {
      const list = this.#idle.get(target);
      const conn = list?.pop();
      if (conn) {
        this.#idleCount--;
        if (list?.length === 0) this.#idle.delete(target);
        return Promise.resolve({ stream: conn.stream, host: conn.host, reused: true });
      }
    }
    if (this.#o.closing())
      return Promise.reject(new TunnelClosedError(this.#o.runnerId, this.#o.closeReason()));
    const stream = this.#o.openStream(target);
    if (!stream)
      return Promise.reject(new TunnelClosedError(this.#o.runnerId, "tunnel takes no new streams"));
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
        else reject(this.#o.failure(code, message));
      };
    });
  }

  /** A connection whose exchange is complete: kept for the next call, or closed past the bound. */
  release(target: string, stream: MuxStream, host: string): void {
    if (this.#o.closing() || stream.closed) {
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
    const conn: Conn = { stream, host, idleSince: this.#o.now() };
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
      const cutoff = this.#o.now() - IDLE_TIMEOUT_MS;
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

  /** Closes every idle connection (the far end sees each one reset). */
  dropIdle(): void {
    for (const list of this.#idle.values()) for (const conn of list) conn.stream.reset(MUX_CODE.CANCEL, "");
    this.forget();
  }

  /** Forgets the idle connections without a word (their link is gone). */
  forget(): void {
    this.#idle.clear();
    this.#idleCount = 0;
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    this.#idleTimer = null;
  }
}

/**
 * Runs `work` under a deadline and an AbortSignal. `work` reports what can be cancelled now through
 * `track`; on the deadline or an abort that is cancelled and the promise rejects. What `work`
 * yields after that (a body, a Duplex) is destroyed.
 */
export function withDeadline<T>(
  runnerId: string,
  timeoutMs: number,
  signal: AbortSignal | undefined,
  work: (track: (p: Pending) => void) => Promise<T>,
): Promise<T> {
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
    const timer = setTimeout(() => fail(new TunnelTimeoutError(runnerId, timeoutMs)), timeoutMs);
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

/** The answer the v2 agent itself gave for a refused (403) or unreachable (502) target. */
export function refusalAnswer(status: number, message: string): TunnelResponse {
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
export function streamDuplex(stream: MuxStream, failure: (code: number, message: string) => Error): Duplex {
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
