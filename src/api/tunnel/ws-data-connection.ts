// One v1 data connection (PROTOCOL.md v1, DATA), served without the `ws` library: the WebSocket
// handshake is answered by hand and RFC 6455 frames are read and written on the socket itself.
//
// Why not `ws`: a v1 call opens a new data connection, so everything built per connection is paid
// per call. `ws` builds a WebSocket, a Receiver and a Sender per connection, validates what the Go
// client never sends, and writes its 101 in a write of its own. Here a connection is one object
// around the socket: the 101 leaves in the same write as the first frame (the call's request head),
// payloads are unmasked in place and handed on without a message buffer (message boundaries mean
// nothing on v1), and the close handshake is bounded.
//
// Contract: bytes leave in write order, as one binary frame per write(); incoming binary and
// continuation payloads reach onData in order; a ping is answered with a pong; a text frame or a
// malformed frame closes the connection (1003 / 1002). `onClose` is called exactly once.

import { createHash } from "node:crypto";
import type { IncomingMessage } from "node:http";
import { createRequire } from "node:module";
import type { Socket } from "node:net";
import { CLOSE, WS_CLOSE_TIMEOUT_MS } from "../../tunnel/constants.ts";

const WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/** A Sec-WebSocket-Key is 16 bytes in base64. */
const KEY_PATTERN = /^[A-Za-z0-9+/]{22}==$/;
/** Control frames carry at most 125 bytes (RFC 6455 §5.5). */
const MAX_CONTROL_PAYLOAD = 125;
/** Payloads up to this size leave in one buffer with their header; larger ones in a corked pair. */
const COPY_LIMIT = 16 * 1024;

const OP = Object.freeze({ CONT: 0, TEXT: 1, BINARY: 2, CLOSE: 8, PING: 9, PONG: 10 });

type Unmask = (buffer: Buffer, mask: Buffer) => void;

/** The native unmask of `bufferutil` (a dependency of ws, loaded the way ws loads it), or JS. */
const nativeUnmask: Unmask | null = (() => {
  try {
    return (createRequire(import.meta.url)("bufferutil") as { unmask: Unmask }).unmask;
  } catch {
    return null;
  }
})();

/**
 * The Sec-WebSocket-Accept value for a data connection's upgrade request, or null when the request
 * is not a WebSocket handshake this server can answer (version 13, a well-formed key). Never throws.
 */
export function websocketAccept(req: IncomingMessage): string | null {
  const key = req.headers["sec-websocket-key"];
  if (req.method !== "GET" || typeof key !== "string" || !KEY_PATTERN.test(key)) return null;
  if (req.headers["sec-websocket-version"] !== "13") return null;
  if ((req.headers.upgrade ?? "").toLowerCase() !== "websocket") return null;
  return createHash("sha1")
    .update(key + WS_GUID)
    .digest("base64");
}

export interface DataConnectionHandlers {
  /** Payload bytes of binary and continuation frames, in order. */
  data(chunk: Buffer): void;
  /** The socket can take more writes (after write() returned false). */
  drain(): void;
  /** No more bytes come or go: the peer closed, the connection failed, or close()/destroy() ran. */
  close(reason: string, err?: Error): void;
}

/** Unmasks `data` in place, starting `offset` bytes into the frame's payload. */
function unmaskAt(data: Buffer, mask: Buffer, offset: number): void {
  const shift = offset & 3;
  if (nativeUnmask && data.length >= 32 && shift === 0) {
    nativeUnmask(data, mask);
    return;
  }
  for (let i = 0; i < data.length; i++) data[i] ^= mask[(i + shift) & 3];
}

/** A frame header for an unmasked server frame of `length` bytes. */
function frameHeader(opcode: number, length: number): Buffer {
  if (length < 126) return Buffer.from([0x80 | opcode, length]);
  if (length < 65536) return Buffer.from([0x80 | opcode, 126, length >> 8, length & 255]);
  const header = Buffer.allocUnsafe(10);
  header[0] = 0x80 | opcode;
  header[1] = 127;
  header.writeBigUInt64BE(BigInt(length), 2);
  return header;
}

export class WsDataConnection {
  readonly socket: Socket;
  /** Payload bytes received and sent, for stats. */
  bytesIn = 0;
  bytesOut = 0;
  /** Whether the credentials it was opened with may still carry calls (a kept connection's test). */
  stillAuthorized: () => boolean = () => true;
  #accept: string | null;
  #handlers: DataConnectionHandlers | null = null;
  /** Frame parsing state: the header bytes of a frame not yet complete, or null. */
  #pendingHead: Buffer | null = null;
  #opcode = 0;
  #mask = Buffer.alloc(4);
  #payloadLength = 0;
  #received = 0;
  #inPayload = false;
  #control: Buffer[] = [];
  #closing = false;
  #done = false;

  /** `accept` is websocketAccept()'s value: the 101 leaves with the first write (or sendAccept()). */
  constructor(socket: Socket, head: Buffer, accept: string) {
    this.socket = socket;
    this.#accept = accept;
    socket.setNoDelay(true);
    socket.on("data", (chunk: Buffer) => this.#onData(chunk));
    socket.on("end", () => this.#onEnd());
    socket.on("drain", () => this.#handlers?.drain());
    socket.on("error", (err: Error) => this.destroy(err));
    socket.on("close", () => this.#finish("closed"));
    socket.on("timeout", () => socket.destroy());
    if (head.length > 0) queueMicrotask(() => this.#onData(head));
  }

  /** Where payloads and the end go; set once, before any byte is read (the same tick). */
  attach(handlers: DataConnectionHandlers): void {
    this.#handlers = handlers;
  }

  get closed(): boolean {
    return this.#done;
  }

  /** Writes the 101 unless a write already carried it. */
  sendAccept(): void {
    if (this.#accept === null || this.socket.destroyed) return;
    this.socket.write(this.#takeAcceptHead());
  }

  #takeAcceptHead(): string {
    const head = `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${this.#accept}\r\n\r\n`;
    this.#accept = null;
    return head;
  }

  /** Sends `payload` as one binary frame; false when the socket wants a drain first. */
  write(payload: Buffer): boolean {
    if (this.#done || this.#closing || payload.length === 0) return !this.#done;
    this.bytesOut += payload.length;
    const header = frameHeader(OP.BINARY, payload.length);
    const accept = this.#accept === null ? null : this.#takeAcceptHead();
    if (payload.length <= COPY_LIMIT) {
      const parts = accept === null ? [header, payload] : [Buffer.from(accept, "latin1"), header, payload];
      return this.socket.write(Buffer.concat(parts));
    }
    this.socket.cork();
    if (accept !== null) this.socket.write(accept, "latin1");
    this.socket.write(header);
    const ok = this.socket.write(payload);
    this.socket.uncork();
    return ok;
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    if (!this.#done) this.socket.resume();
  }

  /**
   * Sends a close frame and ends the socket; the peer's close or FIN finishes it, or the socket is
   * cut after WS_CLOSE_TIMEOUT_MS. Idempotent.
   */
  close(code: number = CLOSE.NORMAL, reason = ""): void {
    if (this.#closing || this.socket.destroyed || this.socket.writableEnded) return;
    this.#closing = true;
    this.sendAccept();
    const text = Buffer.from(reason.slice(0, 100));
    const body = Buffer.allocUnsafe(2 + text.length);
    body.writeUInt16BE(code, 0);
    text.copy(body, 2);
    this.socket.end(Buffer.concat([frameHeader(OP.CLOSE, body.length), body]));
    this.socket.setTimeout(WS_CLOSE_TIMEOUT_MS);
    this.#finish("closed by the server");
  }

  /**
   * Ends the connection without a close frame (the socket's FIN), as the seed's Go server does when
   * its HTTP client is done with a dialed connection: one syscall less per call than close(). The
   * peer's FIN finishes it, or the socket is cut after WS_CLOSE_TIMEOUT_MS. Idempotent.
   */
  end(): void {
    if (this.#closing || this.socket.destroyed || this.socket.writableEnded) return;
    this.#closing = true;
    this.sendAccept();
    this.socket.end();
    this.socket.setTimeout(WS_CLOSE_TIMEOUT_MS);
    this.#finish("ended by the server");
  }

  /** Cuts the connection at once. Idempotent. */
  destroy(err?: Error): void {
    if (!this.socket.destroyed) this.socket.destroy();
    this.#finish(err?.message ?? "destroyed", err);
  }

  /** No more bytes are read or written from here on; the handlers hear it once. */
  #finish(reason: string, err?: Error): void {
    if (this.#done) return;
    this.#done = true;
    this.#handlers?.close(reason, err);
  }

  #onEnd(): void {
    // The peer's FIN: whatever it sent is in. HTTP server sockets are half-open by default, so end
    // our side too; the socket closes once that has gone out.
    if (!this.socket.writableEnded) this.socket.end();
    this.#finish("closed by the agent");
  }

  #protocolError(code: number, reason: string): void {
    const err = new Error(`WebSocket protocol error: ${reason}`);
    this.#finish(err.message, err);
    this.close(code, reason);
  }

  #onData(chunk: Buffer): void {
    if (this.#done) return;
    let data = chunk;
    if (this.#pendingHead) {
      data = Buffer.concat([this.#pendingHead, chunk]);
      this.#pendingHead = null;
    }
    let at = 0;
    while (at < data.length && !this.#done) {
      if (this.#inPayload) {
        at = this.#takePayload(data, at);
        continue;
      }
      const next = this.#readHeader(data, at);
      if (next < 0) {
        this.#pendingHead = Buffer.from(data.subarray(at));
        return;
      }
      at = next;
    }
  }

  /** Parses one frame header at `at`; returns the offset after it, or -1 when it is not all here. */
  #readHeader(data: Buffer, at: number): number {
    if (data.length - at < 2) return -1;
    const b0 = data[at];
    const b1 = data[at + 1];
    let length = b1 & 0x7f;
    let headerLength = 2;
    if (length === 126) headerLength += 2;
    else if (length === 127) headerLength += 8;
    if (!(b1 & 0x80)) {
      this.#protocolError(CLOSE.PROTOCOL_ERROR, "client frames must be masked");
      return data.length;
    }
    headerLength += 4;
    if (data.length - at < headerLength) return -1;
    if (length === 126) length = data.readUInt16BE(at + 2);
    else if (length === 127) {
      const big = data.readBigUInt64BE(at + 2);
      if (big > BigInt(Number.MAX_SAFE_INTEGER)) {
        this.#protocolError(CLOSE.PROTOCOL_ERROR, "frame too long");
        return data.length;
      }
      length = Number(big);
    }
    const opcode = b0 & 0x0f;
    if (!this.#validFrame(b0, opcode, length)) return data.length;
    data.copy(this.#mask, 0, at + headerLength - 4, at + headerLength);
    this.#opcode = opcode;
    this.#payloadLength = length;
    this.#received = 0;
    this.#inPayload = true;
    if (length === 0) this.#endFrame();
    return at + headerLength;
  }

  #validFrame(b0: number, opcode: number, length: number): boolean {
    if (b0 & 0x70) {
      this.#protocolError(CLOSE.PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)");
      return false;
    }
    if (opcode === OP.TEXT) {
      this.#protocolError(CLOSE.UNSUPPORTED_DATA, "text messages are not allowed");
      return false;
    }
    const control = opcode >= 8;
    if (control && (opcode > OP.PONG || !(b0 & 0x80) || length > MAX_CONTROL_PAYLOAD)) {
      this.#protocolError(CLOSE.PROTOCOL_ERROR, "invalid control frame");
      return false;
    }
    if (!control && opcode !== OP.BINARY && opcode !== OP.CONT) {
      this.#protocolError(CLOSE.PROTOCOL_ERROR, `unknown opcode ${opcode}`);
      return false;
    }
    return true;
  }

  /** Takes this frame's payload bytes from `data` at `at`; returns the offset after them. */
  #takePayload(data: Buffer, at: number): number {
    const n = Math.min(this.#payloadLength - this.#received, data.length - at);
    const part = data.subarray(at, at + n);
    unmaskAt(part, this.#mask, this.#received);
    this.#received += n;
    if (this.#opcode >= 8) this.#control.push(part);
    else if (n > 0) {
      this.bytesIn += n;
      this.#handlers?.data(part);
    }
    if (this.#received === this.#payloadLength) this.#endFrame();
    return at + n;
  }

  #endFrame(): void {
    this.#inPayload = false;
    if (this.#opcode < 8) return;
    const payload = this.#control.length === 1 ? this.#control[0] : Buffer.concat(this.#control);
    this.#control = [];
    if (this.#opcode === OP.PING && !this.#closing) {
      this.socket.write(Buffer.concat([frameHeader(OP.PONG, payload.length), payload]));
    } else if (this.#opcode === OP.CLOSE) {
      // Answer with the peer's code (or 1000), then the socket ends.
      const code = payload.length >= 2 ? payload.readUInt16BE(0) : CLOSE.NORMAL;
      this.#finish("closed by the agent");
      this.close(code >= 1000 && code < 5000 ? code : CLOSE.NORMAL);
    }
  }
}
