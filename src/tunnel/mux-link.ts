// The byte link protocol v3 runs on, over either transport:
// - `ws`: a WebSocket whose binary frames carry the byte stream (ws-codec.ts; one frame per batch
//   of v3 frames). The agent's side masks, as RFC 6455 requires of clients.
// - `raw`: the TCP (or TLS) socket itself after `Upgrade: revdial.mux` and a 101.
// The session (mux-session.ts) sees only this interface: batches out, slices in, one close.

import type { Socket } from "node:net";
import { CLOSE, WS_CLOSE_TIMEOUT_MS } from "./constants.ts";
import { tuneGcForBulk } from "./gc-tuning.ts";
import type { TransportName } from "./tunnel-link.ts";
import { closePayload, encodeWsFrame, WS_OPCODE, WsReader } from "./ws-codec.ts";

export interface MuxLink {
  readonly transport: TransportName;
  readonly bytesIn: number;
  readonly bytesOut: number;
  /** Why the link ended (or is ending), once known. */
  closeReason: string | null;
  /** The close code the peer's WebSocket close frame carried (ws only), once it came. */
  readonly closeCode: number | null;
  /** The byte stream's slices, in order. Set once, before the first byte is read. */
  onBytes(fn: (chunk: Buffer) => void): void;
  /** Life below v3 (WebSocket pings and pongs); only the agent counts it. */
  onActivity(fn: () => void): void;
  /** Calls `fn` once, when the link is gone. */
  onClose(fn: (reason: string) => void): void;
  /**
   * Calls `fn` with each batch's buffers once the socket has taken them all (never for a write that
   * failed or was dropped): their memory may be reused from then on (read-pool.ts). One listener.
   */
  onWritten(fn: (chunks: readonly Buffer[]) => void): void;
  /** Bytes written but not yet taken by the kernel: what a peer that does not read holds here. */
  readonly writableLength: number;
  /**
   * Writes one batch, in order (one WebSocket frame on `ws`). The buffers are the link's from then
   * on: the agent's side of a WebSocket masks them in place.
   */
  write(chunks: Buffer[], length: number): void;
  /** Keepalive for proxies (a WebSocket ping); nothing on raw links. */
  ping(): void;
  /** Ends the link, telling the peer why where the transport can (a WebSocket close frame). */
  close(code: number, reason: string): void;
  /** Cuts the link at once. */
  terminate(): void;
}

/** Shared socket plumbing of both transports. */
abstract class SocketLink {
  readonly socket: Socket;
  closeReason: string | null = null;
  closeCode: number | null = null;
  #closeFns: Array<(reason: string) => void> = [];
  #closed = false;
  #hardCut: NodeJS.Timeout | null = null;
  #written: ((chunks: readonly Buffer[]) => void) | null = null;

  constructor(socket: Socket) {
    this.socket = socket;
    tuneGcForBulk();
    socket.setNoDelay(true);
    socket.on("error", (err) => {
      this.closeReason ??= `socket error: ${err.message}`;
    });
    // An upgraded socket allows half-open; a link whose peer has finished is gone.
    socket.on("end", () => {
      this.closeReason ??= "connection closed by peer";
      socket.destroy();
    });
    socket.once("close", () => {
      this.#closed = true;
      if (this.#hardCut) clearTimeout(this.#hardCut);
      const reason = this.closeReason ?? "connection closed";
      for (const fn of this.#closeFns) fn(reason);
      this.#closeFns = [];
    });
  }

  get bytesIn(): number {
    return this.socket.bytesRead;
  }

  get bytesOut(): number {
    return this.socket.bytesWritten;
  }

  get writableLength(): number {
    return this.socket.writableLength;
  }

  onClose(fn: (reason: string) => void): void {
    if (this.#closed) queueMicrotask(() => fn(this.closeReason ?? "connection closed"));
    else this.#closeFns.push(fn);
  }

  onWritten(fn: (chunks: readonly Buffer[]) => void): void {
    this.#written = fn;
  }

  protected writeAll(chunks: readonly Buffer[]): void {
    const s = this.socket;
    if (s.destroyed || !s.writable) return;
    const written = this.#written;
    // Writes complete in order, so the last one's callback means the whole batch is written.
    const done =
      written === null
        ? undefined
        : (err?: Error | null) => {
            if (!err) written(chunks);
          };
    const last = chunks.length - 1;
    if (last === 0) {
      s.write(chunks[0], done);
      return;
    }
    s.cork();
    for (let i = 0; i < last; i++) s.write(chunks[i]);
    s.write(chunks[last], done);
    s.uncork();
  }

  /** Ends our half; the peer's end (or WS_CLOSE_TIMEOUT_MS) finishes the close. */
  protected endSoon(): void {
    if (this.#closed) return;
    this.socket.end();
    this.#hardCut ??= setTimeout(() => this.socket.destroy(), WS_CLOSE_TIMEOUT_MS);
    this.#hardCut.unref();
  }

  terminate(): void {
    this.socket.destroy();
  }
}

export class RawMuxLink extends SocketLink implements MuxLink {
  readonly transport = "raw" as const;

  onBytes(fn: (chunk: Buffer) => void): void {
    this.socket.on("data", fn);
  }

  onActivity(_fn: () => void): void {
    // Nothing below v3 on a raw link.
  }

  write(chunks: Buffer[], _length: number): void {
    this.writeAll(chunks);
  }

  ping(): void {}

  close(code: number, reason: string): void {
    this.closeReason ??= reason || `closed (${code === CLOSE.NORMAL ? "normal" : code})`;
    this.endSoon();
  }
}

export interface WsMuxLinkOptions {
  /** `client` masks what it sends and expects unmasked frames; `server` the reverse. */
  role: "client" | "server";
  /** Largest frame accepted from the peer (1009 past it). */
  maxFrameBytes: number;
}

export class WsMuxLink extends SocketLink implements MuxLink {
  readonly transport = "ws" as const;
  readonly #mask: boolean;
  readonly #reader: WsReader;
  #onBytes: (chunk: Buffer) => void = () => {};
  #activity: Array<() => void> = [];
  #closeSent = false;

  constructor(socket: Socket, options: WsMuxLinkOptions) {
    super(socket);
    this.#mask = options.role === "client";
    this.#reader = new WsReader(
      {
        data: (chunk) => this.#onBytes(chunk),
        ping: (payload) => {
          this.#alive();
          // A peer that sends pings and reads nothing gets no more pongs than UNREAD_BOUND holds.
          if (this.socket.writableLength < UNREAD_BOUND) this.#control(WS_OPCODE.PONG, payload);
        },
        pong: () => this.#alive(),
        close: (code, reason) => {
          this.closeCode = code;
          this.closeReason ??= reason || `websocket closed (${code})`;
          this.#sendClose(code === 1005 ? CLOSE.NORMAL : code, "");
          this.endSoon();
        },
        error: (code, message) => {
          this.closeReason ??= `WebSocket protocol error: ${message}`;
          this.#sendClose(code, message);
          this.endSoon();
        },
      },
      { expectMasked: !this.#mask, maxFrameBytes: options.maxFrameBytes },
    );
    socket.on("data", (chunk: Buffer) => this.#reader.push(chunk));
  }

  onBytes(fn: (chunk: Buffer) => void): void {
    this.#onBytes = fn;
  }

  onActivity(fn: () => void): void {
    this.#activity.push(fn);
  }

  #alive(): void {
    for (const fn of this.#activity) fn();
  }

  write(chunks: Buffer[], length: number): void {
    if (this.#closeSent) return;
    this.writeAll(encodeWsFrame(WS_OPCODE.BINARY, chunks, length, this.#mask));
  }

  #control(opcode: number, payload: Buffer): void {
    if (this.#closeSent) return;
    this.writeAll(encodeWsFrame(opcode, [payload], payload.length, this.#mask));
  }

  #sendClose(code: number, reason: string): void {
    if (this.#closeSent) return;
    const payload = closePayload(code, reason);
    this.writeAll(encodeWsFrame(WS_OPCODE.CLOSE, [payload], payload.length, this.#mask));
    this.#closeSent = true;
  }

  ping(): void {
    this.#control(WS_OPCODE.PING, EMPTY);
  }

  close(code: number, reason: string): void {
    this.closeReason ??= reason || `websocket closed (${code})`;
    this.#sendClose(code, reason);
    this.endSoon();
  }
}

const EMPTY = Buffer.alloc(0);

/**
 * Unread bytes past which a link answers no more pings (WebSocket or v3): what a peer that floods
 * pings and never reads can make this side hold.
 */
export const UNREAD_BOUND = 1024 * 1024;
