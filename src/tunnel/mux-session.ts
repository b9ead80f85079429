// One protocol-v3 session over a MuxLink: byte streams with per-stream credit, PING, GOAWAY. Both
// ends use it: the API (`role: "api"`) opens streams, the agent (`role: "agent"`) accepts them.
//
// Contracts:
// - Each side sends HELLO first; a peer's first frame that is not HELLO, or a HELLO of another
//   version, is a protocol error. Until the peer's HELLO, its window is taken as MUX_WINDOW.
// - Flow control: a side may have at most the peer's window of unacknowledged DATA in flight per
//   stream; the receiver grants more (WINDOW) as its consumer takes bytes (MuxStream.consumed), so
//   a slow consumer holds at most one window per stream, and a small call never waits behind more
//   than one window of a large one (MUX_WINDOW says why its size).
// - Frames are written in the order made and leave in one batch per turn of the event loop (one
//   writev, or one WebSocket frame), so a burst of calls costs one write, not one per frame.
// - A stream ends when both halves have sent FIN and the sender's queue is empty, or at the first
//   RESET either way. Frames for a stream that is gone are dropped (they were in flight).
// - Stream callbacks are plain functions, not events: one call path per frame, no emitter.
// No state outside the instance.

import {
  decodeCoded,
  decodeHello,
  encodeCoded,
  encodeFrame,
  encodeHeader,
  encodeHello,
  encodeWindow,
  FLAG,
  FRAME,
  FrameDecoder,
  MIN_MAX_DATA,
  MUX_CODE,
  MUX_VERSION,
} from "./mux-frames.ts";
import { type MuxLink, UNREAD_BOUND } from "./mux-link.ts";

/**
 * Bytes one stream may have in flight. Head-of-line delay depends only on this: measured here, a
 * 256-512 KiB window keeps a small call at about 1 ms while a 64 MiB body flows on the same link,
 * where 4-8 MiB windows pushed it to 4-9 ms. Large enough for a single stream to run near 1 GB/s.
 */
export const MUX_WINDOW = 512 * 1024;

/**
 * The most a receiver may let one stream have in flight when it has the link to itself: a lone bulk
 * transfer is not held to MUX_WINDOW's round trips (measured: +30-40% on a 64 MiB GET), and it is
 * cut back to MUX_WINDOW as soon as another stream is busy (MuxSessionOptions.windowFor).
 */
export const MUX_WINDOW_ALONE = 4 * 1024 * 1024;

/** Largest DATA payload sent (and accepted, announced in HELLO). */
export const MUX_MAX_DATA = 64 * 1024;

/** Largest batch written at once: well under every WebSocket peer's frame limit (4 MiB). */
const MAX_BATCH = 1024 * 1024;

/** A local code for streams cut because the link or session went away (never on the wire). */
export const LINK_LOST = -1;

export interface MuxSessionOptions {
  link: MuxLink;
  role: "api" | "agent";
  /** Streams open at once; an OPEN past it is refused (agent) or rejected (api). Default 10,000. */
  maxStreams?: number;
  /**
   * The receive window a stream should have now, asked each time credit goes back. Default: always
   * MUX_WINDOW. The API grows a stream that has the link to itself (mux-tunnel.ts).
   */
  windowFor?: (stream: MuxStream) => number;
  /** Agent only: a stream the API opened, to the target named. */
  onOpen?: (stream: MuxStream, target: string) => void;
  /** The peer's HELLO arrived. */
  onHello?: () => void;
  /** The peer sent GOAWAY. */
  onGoaway?: (code: number, reason: string) => void;
  /** The peer broke the protocol; the session has sent GOAWAY and is closing the link. */
  onProtocolError?: (message: string) => void;
  now?: () => number;
}

const noop = () => {};

export class MuxStream {
  readonly id: number;
  readonly #s: MuxSession;
  /** Peer's bytes: the consumer must call consumed(n) once it has passed them on. */
  onData: (chunk: Buffer) => void = noop;
  /** The peer ended its half (FIN). */
  onEnd: () => void = noop;
  /** The stream was cut: by the peer's RESET (its code and message) or LINK_LOST. */
  onReset: (code: number, message: string) => void = noop;
  /** API side: the agent connected the target (OPENED); `info` is the Host value it suggests. */
  onOpened: (info: string) => void = noop;
  /** Credit came back after write() returned false. */
  onDrain: () => void = noop;
  /** Once, when the stream is gone (ended both ways or reset). */
  onClose: () => void = noop;
  /** API side: OPENED came. */
  opened = false;
  #sendCredit: number;
  /** Bytes of the peer still allowed before it needs more credit from us. */
  #recvLeft: number;
  /** Bytes consumed since the last WINDOW we sent. */
  #consumed = 0;
  /** What the peer may have in flight on this stream (MUX_WINDOW at first; see windowFor). */
  #window = MUX_WINDOW;
  #queue: Buffer[] = [];
  #queued = 0;
  #finQueued = false;
  #localEnded = false;
  #remoteEnded = false;
  #closed = false;
  #wantDrain = false;

  constructor(session: MuxSession, id: number, sendCredit: number) {
    this.#s = session;
    this.id = id;
    this.#sendCredit = sendCredit;
    this.#recvLeft = MUX_WINDOW;
  }

  get closed(): boolean {
    return this.#closed;
  }

  get remoteEnded(): boolean {
    return this.#remoteEnded;
  }

  /** Sends bytes; false when they wait for credit (onDrain follows). Never throws. */
  write(chunk: Buffer): boolean {
    if (this.#closed || this.#finQueued || chunk.length === 0) return !this.#closed;
    if (this.#queued === 0 && chunk.length <= this.#sendCredit) {
      this.#sendCredit -= chunk.length;
      this.#s.sendData(this.id, chunk, false);
      return true;
    }
    this.#queue.push(chunk);
    this.#queued += chunk.length;
    this.#flushQueue();
    if (this.#queued > 0) this.#wantDrain = true;
    return this.#queued === 0;
  }

  /** Ends our half (FIN), after what is queued. Idempotent. */
  end(): void {
    if (this.#closed || this.#finQueued) return;
    this.#finQueued = true;
    if (this.#queued === 0) this.#sendFin();
  }

  /** Cuts the stream both ways and tells the peer. Idempotent; onReset is not called. */
  reset(code: number = MUX_CODE.CANCEL, message = ""): void {
    if (this.#closed) return;
    this.#s.sendReset(this.id, code, message);
    this.#close();
  }

  /** The consumer has passed on `n` bytes of the peer's: grant them back once a quarter of a window is used (early enough that a fast reader never leaves the sender waiting). */
  consumed(n: number): void {
    if (this.#closed || this.#remoteEnded) return;
    this.#consumed += n;
    if (this.#consumed < this.#window / 4) return;
    // The window this stream should have now (the session's policy): the grant moves it there,
    // growing at once, shrinking by holding back what was consumed.
    const target = this.#s.windowFor(this);
    const grant = Math.max(0, this.#consumed + target - this.#window);
    this.#window += grant - this.#consumed;
    this.#consumed = 0;
    if (grant === 0) return;
    this.#recvLeft += grant;
    this.#s.sendWindow(this.id, grant);
  }

  // --- called by the session ---

  /** @internal */
  receiveData(chunk: Buffer, fin: boolean): void {
    if (this.#closed || this.#remoteEnded) return;
    if (chunk.length > 0) {
      this.#recvLeft -= chunk.length;
      if (this.#recvLeft < 0) {
        this.#s.sendReset(this.id, MUX_CODE.FLOW_CONTROL, "sent past the stream window");
        this.#cut(MUX_CODE.FLOW_CONTROL, "peer sent past the stream window");
        return;
      }
      this.onData(chunk);
    }
    if (fin && !this.#closed) {
      this.#remoteEnded = true;
      this.onEnd();
      this.#maybeClose();
    }
  }

  /** @internal */
  receiveWindow(credit: number): void {
    if (this.#closed) return;
    this.#sendCredit += credit;
    this.#flushQueue();
    if (this.#queued === 0 && this.#wantDrain) {
      this.#wantDrain = false;
      this.onDrain();
    }
  }

  /** @internal The peer's RESET, or the link going away. */
  cut(code: number, message: string): void {
    this.#cut(code, message);
  }

  #cut(code: number, message: string): void {
    if (this.#closed) return;
    this.#close();
    this.onReset(code, message);
  }

  #flushQueue(): void {
    while (this.#queue.length > 0 && this.#sendCredit > 0) {
      const head = this.#queue[0];
      if (head.length <= this.#sendCredit) {
        this.#queue.shift();
        this.#sendCredit -= head.length;
        this.#queued -= head.length;
        this.#s.sendData(this.id, head, false);
      } else {
        const part = head.subarray(0, this.#sendCredit);
        this.#queue[0] = head.subarray(this.#sendCredit);
        this.#queued -= part.length;
        this.#sendCredit = 0;
        this.#s.sendData(this.id, part, false);
      }
    }
    if (this.#queued === 0 && this.#finQueued && !this.#localEnded) this.#sendFin();
  }

  #sendFin(): void {
    this.#localEnded = true;
    this.#s.sendData(this.id, EMPTY, true);
    this.#maybeClose();
  }

  #maybeClose(): void {
    if (this.#localEnded && this.#remoteEnded) this.#close();
  }

  #close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#queue = [];
    this.#queued = 0;
    this.#s.forget(this.id);
    this.onClose();
  }
}

export class MuxSession {
  readonly role: "api" | "agent";
  readonly #link: MuxLink;
  readonly #o: MuxSessionOptions;
  readonly #now: () => number;
  readonly #maxStreams: number;
  readonly #decoder: FrameDecoder;
  readonly #streams = new Map<number, MuxStream>();
  #nextId = 1;
  #lastPeerId = 0;
  #peerWindow = MUX_WINDOW;
  #peerMaxData = MIN_MAX_DATA;
  #helloSeen = false;
  #goawaySent = false;
  #goawayReceived = false;
  #closed = false;
  /** Frames waiting for this turn's batch. */
  #out: Buffer[] = [];
  #outBytes = 0;
  #flushScheduled = false;
  #pings = new Map<number, { sentAt: number; done: (rttMs: number) => void }>();
  #pingSeq = 0;
  #idleWaiters: Array<() => void> = [];
  /** When the last frame (any) came from the peer. */
  lastFrameAt: number;

  constructor(options: MuxSessionOptions) {
    this.#o = options;
    this.role = options.role;
    this.#link = options.link;
    this.#now = options.now ?? Date.now;
    this.#maxStreams = options.maxStreams ?? 10_000;
    this.lastFrameAt = this.#now();
    this.#decoder = new FrameDecoder(
      {
        frame: (type, flags, id, payload) => this.#frame(type, flags, id, payload),
        data: (id, chunk, fin) => this.#data(id, chunk, fin),
        error: (message) => this.#protocolError(message),
      },
      { maxData: MUX_MAX_DATA },
    );
    this.#link.onBytes((chunk) => {
      this.lastFrameAt = this.#now();
      this.#decoder.push(chunk);
    });
    this.#link.onClose((reason) => this.#linkClosed(reason));
    this.#push(encodeHello({ version: MUX_VERSION, window: MUX_WINDOW, maxData: MUX_MAX_DATA }));
  }

  get helloSeen(): boolean {
    return this.#helloSeen;
  }

  get goawayReceived(): boolean {
    return this.#goawayReceived;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Streams open now. */
  get streamCount(): number {
    return this.#streams.size;
  }

  /**
   * API side: opens a stream to `target`. Returns null when the session can open no more (closed,
   * GOAWAY either way, or at maxStreams).
   */
  open(target: string): MuxStream | null {
    if (this.role !== "api" || this.#closed || this.#goawaySent || this.#goawayReceived) return null;
    if (this.#streams.size >= this.#maxStreams) return null;
    const id = this.#nextId;
    this.#nextId += 2;
    const stream = new MuxStream(this, id, this.#peerWindow);
    this.#streams.set(id, stream);
    this.#push(encodeFrame(FRAME.OPEN, 0, id, Buffer.from(target, "utf8")));
    return stream;
  }

  /**
   * Agent side: tells the API the stream's target is connected; `info` is the Host header value
   * for HTTP over it (the target's address).
   */
  opened(stream: MuxStream, info: string): void {
    if (!stream.closed) this.#push(encodeFrame(FRAME.OPENED, 0, stream.id, Buffer.from(info, "utf8")));
  }

  /** Sends a PING; `done` gets the round trip in ms when its answer comes. */
  ping(done: (rttMs: number) => void = noop): void {
    if (this.#closed) return;
    const seq = ++this.#pingSeq;
    const p = Buffer.alloc(8);
    p.writeUInt32BE(seq, 4);
    this.#pings.set(seq, { sentAt: performance.now(), done });
    if (this.#pings.size > 16) this.#pings.delete(this.#pings.keys().next().value as number);
    this.#push(encodeFrame(FRAME.PING, 0, 0, p));
  }

  /** Opens no new stream from now on and tells the peer why. Idempotent. */
  goaway(code: number, reason: string): void {
    if (this.#closed || this.#goawaySent) return;
    this.#goawaySent = true;
    this.#push(encodeCoded(FRAME.GOAWAY, 0, code, reason));
  }

  /** Writes what is batched now instead of at the end of the turn. */
  flush(): void {
    this.#flushScheduled = false;
    if (this.#out.length === 0 || this.#closed) return;
    const out = this.#out;
    const bytes = this.#outBytes;
    this.#out = [];
    this.#outBytes = 0;
    if (bytes <= MAX_BATCH) {
      this.#link.write(out, bytes);
      return;
    }
    let batch: Buffer[] = [];
    let size = 0;
    for (const b of out) {
      if (size + b.length > MAX_BATCH && batch.length > 0) {
        this.#link.write(batch, size);
        batch = [];
        size = 0;
      }
      batch.push(b);
      size += b.length;
    }
    if (batch.length > 0) this.#link.write(batch, size);
  }

  /**
   * Ends the link after flushing what is batched, then cuts every stream still open (LINK_LOST) on
   * the next turn of the event loop, so whoever closed the session hears of it before the streams'
   * owners hear of their failure. Idempotent.
   */
  close(code: number, reason: string): void {
    if (this.#closed) return;
    this.flush();
    this.#closed = true;
    this.#link.close(code, reason);
    setImmediate(() => this.#cutAll(reason));
    this.#wakeIdle();
  }

  /** Cuts every stream and the link at once. Idempotent. */
  destroy(reason: string): void {
    if (this.#closed) return;
    this.#link.closeReason ??= reason;
    this.#cutAll(reason);
    this.#closed = true;
    this.#link.terminate();
    this.#wakeIdle();
  }

  // --- for MuxStream ---

  /** @internal */
  sendData(id: number, chunk: Buffer, fin: boolean): void {
    const flags = fin ? FLAG.FIN : 0;
    if (chunk.length <= this.#peerMaxData) {
      this.#push(encodeHeader(FRAME.DATA, flags, id, chunk.length));
      if (chunk.length > 0) this.#push(chunk);
      return;
    }
    for (let at = 0; at < chunk.length; at += this.#peerMaxData) {
      const part = chunk.subarray(at, at + this.#peerMaxData);
      const last = at + this.#peerMaxData >= chunk.length;
      this.#push(encodeHeader(FRAME.DATA, last ? flags : 0, id, part.length));
      this.#push(part);
    }
  }

  /** @internal The window policy (MuxSessionOptions.windowFor). */
  windowFor(stream: MuxStream): number {
    return this.#o.windowFor?.(stream) ?? MUX_WINDOW;
  }

  /** @internal */
  sendWindow(id: number, credit: number): void {
    this.#push(encodeWindow(id, credit));
  }

  /** @internal */
  sendReset(id: number, code: number, message: string): void {
    this.#push(encodeCoded(FRAME.RESET, id, code, message));
  }

  /** @internal */
  forget(id: number): void {
    this.#streams.delete(id);
    if (this.#streams.size === 0 && this.#idleWaiters.length > 0) this.#wakeIdle();
  }

  /** Resolves once no stream is open (at once if none is), or when the session closes. */
  whenIdle(): Promise<void> {
    if (this.#streams.size === 0 || this.#closed) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  #wakeIdle(): void {
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const w of waiters) w();
  }

  // --- the peer's frames ---

  #push(b: Buffer): void {
    if (this.#closed) return;
    this.#out.push(b);
    this.#outBytes += b.length;
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }

  #data(id: number, chunk: Buffer, fin: boolean): void {
    if (!this.#helloSeen) {
      this.#protocolError("DATA before HELLO");
      return;
    }
    this.#streams.get(id)?.receiveData(chunk, fin);
  }

  #frame(type: number, flags: number, id: number, payload: Buffer): void {
    if (!this.#helloSeen && type !== FRAME.HELLO) {
      this.#protocolError(`frame type ${type} before HELLO`);
      return;
    }
    switch (type) {
      case FRAME.HELLO:
        this.#hello(payload);
        return;
      case FRAME.OPEN:
        this.#open(id, payload);
        return;
      case FRAME.OPENED:
        this.#openedFrame(id, payload);
        return;
      case FRAME.WINDOW:
        if (payload.length !== 4) {
          this.#protocolError("WINDOW without a 4-byte credit");
          return;
        }
        this.#streams.get(id)?.receiveWindow(payload.readUInt32BE(0));
        return;
      case FRAME.RESET: {
        const { code, message } = decodeCoded(payload);
        this.#streams.get(id)?.cut(code, message);
        return;
      }
      case FRAME.PING:
        this.#pingFrame(flags, payload);
        return;
      case FRAME.GOAWAY: {
        const { code, message } = decodeCoded(payload);
        this.#goawayReceived = true;
        this.#o.onGoaway?.(code, message);
        return;
      }
    }
  }

  #hello(payload: Buffer): void {
    if (this.#helloSeen) {
      this.#protocolError("second HELLO");
      return;
    }
    const hello = decodeHello(payload);
    if (!hello || hello.version !== MUX_VERSION) {
      this.#protocolError("unsupported HELLO");
      return;
    }
    if (hello.window < 16 * 1024 || hello.maxData < MIN_MAX_DATA) {
      this.#protocolError("HELLO window or frame size too small");
      return;
    }
    this.#helloSeen = true;
    this.#peerWindow = hello.window;
    this.#peerMaxData = Math.min(hello.maxData, MUX_MAX_DATA * 4);
    this.#o.onHello?.();
  }

  #open(id: number, payload: Buffer): void {
    if (this.role !== "agent") {
      this.#protocolError("OPEN sent to the API");
      return;
    }
    if (id % 2 !== 1 || id <= this.#lastPeerId) {
      this.#protocolError(`OPEN with stream id ${id}`);
      return;
    }
    this.#lastPeerId = id;
    const stream = new MuxStream(this, id, this.#peerWindow);
    if (this.#goawaySent || this.#streams.size >= this.#maxStreams) {
      this.sendReset(id, MUX_CODE.REFUSED, this.#goawaySent ? "agent stopping" : "too many streams");
      return;
    }
    this.#streams.set(id, stream);
    const onOpen = this.#o.onOpen;
    if (!onOpen) stream.reset(MUX_CODE.REFUSED, "this side accepts no streams");
    else onOpen(stream, payload.toString("utf8"));
  }

  #openedFrame(id: number, payload: Buffer): void {
    if (this.role !== "api") {
      this.#protocolError("OPENED sent to the agent");
      return;
    }
    const stream = this.#streams.get(id);
    if (!stream || stream.opened) return;
    stream.opened = true;
    stream.onOpened(payload.toString("utf8"));
  }

  #pingFrame(flags: number, payload: Buffer): void {
    if (payload.length !== 8) {
      this.#protocolError("PING without 8 bytes");
      return;
    }
    if (!(flags & FLAG.ACK)) {
      // A peer that floods PINGs and reads nothing is not answered past UNREAD_BOUND.
      if (this.#outBytes + this.#link.writableLength < UNREAD_BOUND)
        this.#push(encodeFrame(FRAME.PING, FLAG.ACK, 0, payload));
      return;
    }
    const seq = payload.readUInt32BE(4);
    const ping = this.#pings.get(seq);
    if (!ping) return;
    this.#pings.delete(seq);
    ping.done(Math.round((performance.now() - ping.sentAt) * 1000) / 1000);
  }

  #protocolError(message: string): void {
    if (this.#closed) return;
    this.#link.closeReason ??= `protocol error: ${message}`;
    this.#goawaySent = false;
    this.goaway(MUX_CODE.PROTOCOL, message);
    this.#o.onProtocolError?.(message);
    this.close(1002, `protocol error: ${message}`.slice(0, 120));
  }

  #cutAll(reason: string): void {
    const streams = [...this.#streams.values()];
    this.#streams.clear();
    for (const s of streams) s.cut(LINK_LOST, reason);
  }

  #linkClosed(reason: string): void {
    if (!this.#closed) {
      this.#closed = true;
      this.#out = [];
      this.#cutAll(reason);
      this.#wakeIdle();
    }
  }
}

const EMPTY = Buffer.alloc(0);
