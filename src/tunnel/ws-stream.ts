// Turns one WebSocket into the byte stream HTTP/2 runs on (PROTOCOL.md v2: binary messages carry
// bytes, message boundaries mean nothing, a text message is a protocol error).
//
// Why not ws's createWebSocketStream: HTTP/2 writes many small frames, and one WebSocket message per
// write costs a header, a mask and a syscall each. Node's HTTP/2 core corks its socket and writes a
// whole batch at once; _writev turns that batch into ONE message. Reads pause the TCP socket when the
// consumer falls behind, so a slow reader bounds memory instead of growing it.
//
// Ordering contract: bytes leave in write order and arrive in receive order; `close` is emitted once.

import { Duplex } from "node:stream";
import type { WebSocket } from "ws";
import { CLOSE } from "./constants.ts";

export interface WebSocketStreamOptions {
  /** Bytes buffered in the socket above which writes wait for it to drain. */
  writeHighWaterMark?: number;
}

const DEFAULTS = Object.freeze({ writeHighWaterMark: 1024 * 1024 });

/** Largest WebSocket message sent: well under every peer's limit (the endpoint's is 4 MiB). */
const MAX_MESSAGE_BYTES = 1024 * 1024;

type Callback = (err?: Error | null) => void;

export class WebSocketStream extends Duplex {
  readonly ws: WebSocket;
  readonly #highWaterMark: number;
  #paused = false;
  #waitingDrain: Callback | null = null;
  /** Bytes that crossed the link, for stats. */
  bytesIn = 0;
  bytesOut = 0;
  /** Why the link ended, once it has. */
  closeReason: string | null = null;

  constructor(ws: WebSocket, options: WebSocketStreamOptions = {}) {
    super({ allowHalfOpen: false, readableHighWaterMark: 256 * 1024 });
    this.ws = ws;
    this.#highWaterMark = options.writeHighWaterMark ?? DEFAULTS.writeHighWaterMark;
    ws.binaryType = "nodebuffer";
    ws.on("message", (data: Buffer, isBinary: boolean) => this.#onMessage(data, isBinary));
    ws.on("close", (code: number, reason: Buffer) => this.#onClose(code, reason.toString()));
    ws.on("error", (err: Error) => {
      this.closeReason ??= `WebSocket error: ${err.message}`;
      this.destroy(err);
    });
  }

  #onMessage(data: Buffer, isBinary: boolean): void {
    // Once HTTP/2 is gone, bytes have no reader: drop them. Pushing would return false and pause the
    // socket, which then never reads the peer's close or FIN and holds its descriptor until ws's
    // 30 s close timeout.
    if (this.destroyed) return;
    if (!isBinary) {
      this.closeReason = "text message on a binary tunnel";
      this.ws.close(CLOSE.UNSUPPORTED_DATA, "text messages are not allowed");
      this.destroy(new Error(this.closeReason));
      return;
    }
    this.bytesIn += data.length;
    if (!this.push(data) && !this.#paused) {
      this.#paused = true;
      this.ws.pause();
    }
  }

  #onClose(code: number, reason: string): void {
    this.closeReason ??= reason || `closed with code ${code}`;
    this.push(null);
    this.destroy();
  }

  override _read(): void {
    if (this.#paused) {
      this.#paused = false;
      this.ws.resume();
    }
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, callback: Callback): void {
    const data = chunks.length === 1 ? chunks[0].chunk : Buffer.concat(chunks.map((c) => c.chunk));
    this.#send(data, callback);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: Callback): void {
    this.#send(chunk, callback);
  }

  #send(data: Buffer, callback: Callback): void {
    if (this.ws.readyState !== this.ws.OPEN) {
      // The link is closing: these bytes (a late RST_STREAM, PING or GOAWAY) have nobody to reach.
      // Drop them; the WebSocket's close event ends the stream. Failing the write instead would
      // emit 'error' on a link nobody listens to any more, and crash the process.
      callback();
      return;
    }
    this.bytesOut += data.length;
    // A batch can be larger than the peer accepts in one message (the endpoint's maxPayload is
    // 4 MiB): a fast target behind a reader that keeps up made 5+ MiB batches, and the server closed
    // the link with 1009. Messages carry at most MAX_MESSAGE_BYTES; boundaries mean nothing anyway.
    for (let at = 0; at < data.length; at += MAX_MESSAGE_BYTES) {
      const part = data.length <= MAX_MESSAGE_BYTES ? data : data.subarray(at, at + MAX_MESSAGE_BYTES);
      this.ws.send(part, { binary: true, compress: false, fin: true });
    }
    // Acknowledge at once unless the socket is backed up: Node's HTTP/2 core writes one batch at a
    // time, so waiting for each batch to reach the kernel would serialize the link.
    if (this.ws.bufferedAmount < this.#highWaterMark) {
      callback();
      return;
    }
    this.#waitingDrain = callback;
    const socket = (this.ws as unknown as { _socket?: NodeJS.WritableStream })._socket;
    if (!socket) {
      this.#releaseDrain();
      return;
    }
    socket.once("drain", () => this.#releaseDrain());
  }

  #releaseDrain(err?: Error): void {
    const cb = this.#waitingDrain;
    this.#waitingDrain = null;
    cb?.(err);
  }

  override _final(callback: Callback): void {
    callback();
  }

  override _destroy(err: Error | null, callback: Callback): void {
    this.#releaseDrain(err ?? new Error("WebSocket closed"));
    if (this.#paused) {
      this.#paused = false;
      this.ws.resume(); // read on to the peer's close frame or FIN (see #onMessage)
    }
    if (this.ws.readyState === this.ws.OPEN || this.ws.readyState === this.ws.CONNECTING) {
      if (err) this.ws.terminate();
      else this.ws.close(CLOSE.NORMAL);
    }
    callback(err);
  }
}
