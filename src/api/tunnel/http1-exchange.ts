// One HTTP/1.1 request and its answer over a v3 stream that the agent pipes to the target: the
// API's lean HTTP client. It writes the request head itself, parses only the answer's head
// (http1-parser.ts), and passes body slices through; the connection goes back to the tunnel's pool
// when both the request and the answer are complete and the target keeps it alive.
//
// Why not http.request over the stream: per call that costs an agent, a socket object, a parser and
// several stream layers: most of a small call's CPU. Rules it keeps:
// - `Expect` is never sent (the body follows at once, so a 100 Continue would only be skipped).
// - A body given whole goes with a Content-Length; a streamed one keeps the caller's
//   Content-Length (and must deliver exactly that many bytes) or is sent chunked.
// - A body that fails or is destroyed before its end resets the stream: the agent cuts the target's
//   socket, so the target sees an aborted request, never a short complete one.
// - Credit for the answer's bytes goes back only as the caller reads them (a slow reader holds at
//   most one stream window).

import { Readable } from "node:stream";
import { TunnelStreamError } from "../../tunnel/errors.ts";
import { endToEndHeader } from "../../tunnel/headers.ts";
import { MUX_CODE } from "../../tunnel/mux-frames.ts";
import type { MuxStream } from "../../tunnel/mux-session.ts";
import type { TunnelRequest, TunnelResponse } from "../../tunnel/types.ts";
import { Http1ResponseParser, type ResponseHead } from "./http1-parser.ts";
import { type BodyFraming, LAST_CHUNK, requestHead } from "./http1-request.ts";

/** `Expect` is never sent (see the module header). */
const NO_EXPECT: ReadonlySet<string> = new Set(["expect"]);

/** A body given whole up to this size leaves in the same write as the head. */
const COALESCE_BODY = 16 * 1024;

/** What the response body buffers before it holds back the stream's credit. */
const BODY_HIGH_WATER = 256 * 1024;

/** The stream failed before any byte of an answer: the tunnel may retry a reused connection. */
export class StaleConnectionError extends Error {}

export interface ExchangeOptions {
  runnerId: string;
  /** The Host header (the agent's name for the target's address). */
  host: string;
  /** The connection carried an earlier request (a failure before any answer may be its staleness). */
  reused: boolean;
  /** The answer is complete and the stream may carry another request. */
  release(): void;
  /** The stream must not be reused (reset or ended here). */
  discard(): void;
  /** The stream failed: how to name it (TunnelClosedError when the link went, else a stream error). */
  failure(code: number, message: string): Error;
}

export class Http1Exchange {
  readonly #stream: MuxStream;
  readonly #o: ExchangeOptions;
  readonly #parser: Http1ResponseParser;
  #resolve: ((res: TunnelResponse) => void) | null = null;
  #reject: ((err: Error) => void) | null = null;
  #body: ResponseBody | null = null;
  #head: ResponseHead | null = null;
  #source: Readable | null = null;
  #requestDone = false;
  #finished = false;
  /** Stream bytes passed to the body but not yet credited back (the reader is behind). */
  #owed = 0;
  /** The answer's head, parsed but not yet handed on (it goes once the bytes at hand are parsed). */
  #pendingHead: ResponseHead | null = null;
  /** Body bytes parsed before the head was handed on. */
  #early: Buffer[] = [];

  constructor(stream: MuxStream, options: ExchangeOptions, isHead: boolean) {
    this.#stream = stream;
    this.#o = options;
    this.#parser = new Http1ResponseParser(
      {
        head: (h) => this.#onHead(h),
        body: (chunk) => {
          if (this.#body) this.#body.push(chunk);
          else this.#early.push(chunk);
        },
        complete: () => this.#onComplete(),
        error: (message) => this.#fail(new TunnelStreamError(options.runnerId, `bad answer: ${message}`)),
      },
      isHead,
    );
    stream.onData = (chunk) => this.#onData(chunk);
    stream.onEnd = () => {
      this.#parser.end();
      this.#deliver();
    };
    stream.onReset = (code, message) => this.#onReset(code, message);
    stream.onDrain = () => this.#source?.resume();
  }

  /** Writes the request; resolves with the answer's head, its body streamed. */
  start(req: TunnelRequest): Promise<TunnelResponse> {
    return new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
      try {
        this.#write(req);
      } catch (err) {
        this.#fail(err as Error);
      }
    });
  }

  /** Gives up on the call (deadline, abort): before the head the promise rejects with `err`. */
  abort(err: Error): void {
    this.#fail(err);
  }

  #write(req: TunnelRequest): void {
    const body = req.body;
    let framing: BodyFraming = "none";
    let whole: Buffer | null = null;
    /** A streamed body's declared length (the caller's Content-Length), or -1. */
    let declared = -1;
    if (typeof body === "string" || Buffer.isBuffer(body)) {
      whole = typeof body === "string" ? Buffer.from(body) : body;
      framing = "length";
    } else if (body != null) {
      const length = endToEndHeader(req.headers, "content-length");
      framing = length === undefined ? "chunked" : "length";
      if (length !== undefined) declared = Number(length);
    }
    const path = req.path.startsWith("/") ? req.path : `/${req.path}`;
    const text = requestHead(
      req.method.toUpperCase(),
      path,
      req.headers,
      { framing, length: whole?.length },
      { host: this.#o.host, keepAlive: true },
      NO_EXPECT,
    );
    if (text instanceof Error) throw new TunnelStreamError(this.#o.runnerId, text.message);
    const h = Buffer.byteLength(text, "latin1");
    if (whole !== null && whole.length > 0 && whole.length <= COALESCE_BODY) {
      const out = Buffer.allocUnsafe(h + whole.length);
      out.write(text, 0, "latin1");
      whole.copy(out, h);
      this.#stream.write(out);
    } else {
      this.#stream.write(Buffer.from(text, "latin1"));
      if (whole !== null && whole.length > 0) this.#stream.write(whole);
    }
    if (body == null || whole !== null) this.#requestDone = true;
    else this.#pipeBody(body as Readable, framing === "chunked", declared);
  }

  /** Streams a request body; `length` >= 0 is the caller's Content-Length, which must be met exactly. */
  #pipeBody(source: Readable, chunked: boolean, length: number): void {
    this.#source = source;
    if (source.destroyed && !source.readableEnded) {
      this.#cutBody("the request body was cut off");
      return;
    }
    let sent = 0;
    const stream = this.#stream;
    source.on("data", (chunk: Buffer | string) => {
      const b = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
      if (b.length === 0) return;
      sent += b.length;
      if (!chunked && sent > length) return this.#cutBody("the body is longer than its Content-Length");
      if (chunked) {
        // Every part is written (and queued when over credit): a short-circuit would drop bytes.
        stream.write(Buffer.from(`${b.length.toString(16)}\r\n`, "latin1"));
        stream.write(b);
        if (!stream.write(CRLF)) source.pause();
      } else if (!stream.write(b)) source.pause();
    });
    source.once("end", () => {
      if (!chunked && sent !== length) return this.#cutBody("the body ended before its Content-Length");
      if (chunked) stream.write(LAST_CHUNK);
      this.#requestDone = true;
      if (this.#parser.done) this.#settle();
    });
    const cut = () => {
      if (!this.#requestDone) this.#cutBody("the request body was cut off");
    };
    source.once("error", cut);
    source.once("close", cut);
  }

  /** The request body failed: the target must see an aborted request. */
  #cutBody(why: string): void {
    if (this.#finished) return;
    this.#source?.destroy();
    this.#fail(new TunnelStreamError(this.#o.runnerId, why));
  }

  #onData(chunk: Buffer): void {
    if (this.#finished && this.#parser.done) {
      // Bytes after a complete answer: the target broke HTTP/1.1; the stream is not reused.
      if (!this.#stream.closed) this.#stream.reset(MUX_CODE.CANCEL, "");
      return;
    }
    this.#parser.push(chunk);
    this.#deliver();
    if (this.#body && this.#body.readableLength >= BODY_HIGH_WATER) this.#owed += chunk.length;
    else this.#stream.consumed(chunk.length);
  }

  /** The reader wants more: credit back what it has taken. */
  resume(): void {
    if (this.#owed === 0) return;
    const n = this.#owed;
    this.#owed = 0;
    this.#stream.consumed(n);
  }

  #onHead(head: ResponseHead): void {
    this.#head = head;
    this.#pendingHead = head;
  }

  #onComplete(): void {
    if (this.#body) {
      this.#body.push(null);
      this.#settle();
    }
    // Otherwise the whole answer came with its head: #deliver() hands it on, then settles.
  }

  /**
   * Hands the answer's head on once the bytes at hand are parsed. An answer complete by then (most
   * small calls: head and body in one read) goes as `whole`, and its body stream is made only if a
   * caller asks for it: no stream machinery per small call.
   */
  #deliver(): void {
    const head = this.#pendingHead;
    if (!head) return;
    this.#pendingHead = null;
    const resolve = this.#resolve;
    this.#resolve = null;
    this.#reject = null;
    // The parser hands on the end-to-end headers only (http1-parser.ts).
    const headers = head.headers;
    if (this.#parser.done) {
      const early = this.#early;
      this.#early = [];
      const whole = early.length === 0 ? EMPTY : early.length === 1 ? early[0] : Buffer.concat(early);
      resolve?.(wholeAnswer(head.status, headers, whole));
      this.#settle();
      return;
    }
    this.#body = new ResponseBody(this);
    for (const chunk of this.#early) this.#body.push(chunk);
    this.#early = [];
    resolve?.({ status: head.status, headers, body: this.#body });
  }

  /** Both halves done (or the answer done with the request still going): release or discard. */
  #settle(): void {
    if (this.#finished) return;
    if (!this.#parser.done) return;
    if (!this.#requestDone) {
      // The target answered before the whole body was sent: the connection's state is unknown.
      this.#finished = true;
      this.#source?.destroy();
      this.#discard();
      return;
    }
    this.#finished = true;
    if (this.#head?.keepAlive && !this.#parser.overrun && !this.#stream.remoteEnded && !this.#stream.closed) {
      // Bytes the reader has not taken yet (held in the body's buffer) are credited now: the
      // answer is complete, and once its body has ended it asks for no more reads, so that credit
      // would be lost to the next calls on this connection.
      this.resume();
      this.#o.release();
    } else this.#discard();
  }

  /** Called by the body when its reader destroys it before the end. */
  bodyDestroyed(): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#source?.destroy();
    this.#discard();
  }

  #onReset(code: number, message: string): void {
    if (this.#finished) return;
    this.#pendingHead = null;
    const untouched = this.#parser.untouched;
    const err =
      untouched && this.#o.reused
        ? new StaleConnectionError(message)
        : this.#o.failure(code, message || `stream reset (${code})`);
    this.#finished = true;
    this.#source?.destroy();
    this.#o.discard();
    this.#reject?.(err);
    this.#reject = null;
    this.#resolve = null;
    this.#failBody(err);
  }

  #fail(err: Error): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#pendingHead = null;
    this.#source?.destroy();
    this.#discard();
    if (this.#reject) {
      const reject = this.#reject;
      this.#reject = null;
      this.#resolve = null;
      // A reused connection the target closed before answering: a fresh one may well succeed.
      reject(
        this.#o.reused && this.#parser.untouched && this.#stream.remoteEnded
          ? new StaleConnectionError(err.message)
          : err,
      );
    } else this.#failBody(err);
  }

  /**
   * Fails the answer's body. On the next turn of the event loop: the caller was handed the body in
   * this turn and attaches to it once its await resumes; an error emitted before that would find no
   * listener. The body never crashes the process for want of one.
   */
  #failBody(err: Error): void {
    const body = this.#body;
    if (!body || body.destroyed) return;
    setImmediate(() => body.destroy(err));
  }

  #discard(): void {
    if (!this.#stream.closed) this.#stream.reset(MUX_CODE.CANCEL, "");
    this.#o.discard();
  }
}

/** An answer whose body is all here: `whole`, and a body stream made only when read. */
export function wholeAnswer(
  status: number,
  headers: Record<string, string | string[]>,
  whole: Buffer,
): TunnelResponse {
  return new WholeAnswer(status, headers, whole);
}

/** A class, not a literal with a getter: a literal makes a new accessor (and map) per call. */
class WholeAnswer implements TunnelResponse {
  readonly status: number;
  readonly headers: Record<string, string | string[]>;
  readonly whole: Buffer;
  #body: Readable | null = null;

  constructor(status: number, headers: Record<string, string | string[]>, whole: Buffer) {
    this.status = status;
    this.headers = headers;
    this.whole = whole;
  }

  get body(): Readable {
    this.#body ??= Readable.from(this.whole.length > 0 ? [this.whole] : []);
    return this.#body;
  }
}

const EMPTY = Buffer.alloc(0);

class ResponseBody extends Readable {
  readonly #x: Http1Exchange;

  constructor(exchange: Http1Exchange) {
    super({ highWaterMark: BODY_HIGH_WATER });
    this.#x = exchange;
    // Readers get the error through their own listeners (or the stream's errored state).
    this.on("error", () => {});
  }

  override _read(): void {
    this.#x.resume();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (!this.readableEnded) this.#x.bodyDestroyed();
    cb(err);
  }
}

const CRLF = Buffer.from("\r\n");
