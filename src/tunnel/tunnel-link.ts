// The byte link one HTTP/2 session runs on, over either transport:
// - `ws`: binary WebSocket messages (PROTOCOL.md v2). Crosses any proxy that passes WebSockets.
// - `raw`: the TCP (or TLS) socket itself after an HTTP/1.1 `Upgrade: revdial.h2` and a 101. No
//   WebSocket framing, no masking, and Node's HTTP/2 reads and writes the socket natively instead
//   of through a JavaScript stream: several times the throughput and less CPU per call. It needs a
//   path that passes arbitrary upgrades (direct, or a proxy configured for them).
// HTTP/2 above the link is identical, so the tunnel and the agent see only this interface.

import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { CLOSE } from "./constants.ts";
import type { WebSocketStream } from "./ws-stream.ts";

export type TransportName = "ws" | "raw";

export interface TunnelLink {
  readonly transport: TransportName;
  /** What HTTP/2 runs on. */
  readonly stream: Duplex;
  readonly bytesIn: number;
  readonly bytesOut: number;
  /** Why the link ended (or is ending), once known. */
  closeReason: string | null;
  /**
   * Calls `fn` whenever the peer shows life below HTTP/2 (WebSocket frames; raw links never do). Only
   * the agent uses it, for a server it trusts; the API counts HTTP/2 frames alone (h2-tunnel.ts).
   */
  onActivity(fn: () => void): void;
  /** Calls `fn` once, when the link is gone. */
  onClose(fn: (reason: string) => void): void;
  /** Calls `fn` once the local side has written everything and ended its half. */
  onWritesDone(fn: () => void): void;
  /** Keepalive below HTTP/2 for proxies (a WebSocket ping); nothing on raw links. */
  ping(): void;
  /** Ends the link, telling the peer why where the transport can (WebSocket close code). */
  close(code: number, reason: string): void;
  /** Cuts the link at once. */
  terminate(): void;
}

export class WsLink implements TunnelLink {
  readonly transport = "ws" as const;
  readonly stream: WebSocketStream;
  /** The close code the peer sent, once the WebSocket has closed. */
  closeCode: number | null = null;

  constructor(stream: WebSocketStream) {
    this.stream = stream;
    stream.ws.once("close", (code: number) => {
      this.closeCode = code;
    });
  }

  get bytesIn(): number {
    return this.stream.bytesIn;
  }

  get bytesOut(): number {
    return this.stream.bytesOut;
  }

  get closeReason(): string | null {
    return this.stream.closeReason;
  }

  set closeReason(reason: string | null) {
    this.stream.closeReason = reason;
  }

  onActivity(fn: () => void): void {
    const ws = this.stream.ws;
    ws.on("message", fn);
    ws.on("ping", fn);
    ws.on("pong", fn);
  }

  onClose(fn: (reason: string) => void): void {
    this.stream.ws.once("close", (code: number, reason: Buffer) =>
      fn(this.stream.closeReason ?? (reason.toString() || `websocket closed (${code})`)),
    );
  }

  onWritesDone(fn: () => void): void {
    this.stream.once("finish", fn);
  }

  ping(): void {
    try {
      this.stream.ws.ping();
    } catch {
      // The socket is closing; its close event tears the tunnel down.
    }
  }

  close(code: number, reason: string): void {
    this.stream.closeReason ??= reason;
    const ws = this.stream.ws;
    if (ws.readyState === ws.OPEN) ws.close(code, reason);
    const hard = setTimeout(() => ws.terminate(), 2000);
    hard.unref();
    ws.once("close", () => clearTimeout(hard));
  }

  terminate(): void {
    this.stream.ws.terminate();
    this.stream.destroy();
  }
}

export class RawLink implements TunnelLink {
  readonly transport = "raw" as const;
  readonly stream: Socket;
  closeReason: string | null = null;

  constructor(socket: Socket) {
    this.stream = socket;
    socket.setNoDelay(true);
    // Over TLS (wss://, or TLS at a proxy), node:http2 takes a socket whose ALPN did not pick "h2"
    // for another protocol and drops it after 10 s. HTTP/2 was agreed by the upgrade, not by ALPN.
    if ((socket as { encrypted?: boolean }).encrypted)
      (socket as { alpnProtocol?: string | false }).alpnProtocol = undefined;
    socket.on("error", (err) => {
      this.closeReason ??= `socket error: ${err.message}`;
    });
    // An upgraded server socket allows half-open; a tunnel whose peer has finished is gone.
    socket.on("end", () => {
      this.closeReason ??= "connection closed by peer";
      socket.destroy();
    });
  }

  get bytesIn(): number {
    return this.stream.bytesRead;
  }

  get bytesOut(): number {
    return this.stream.bytesWritten;
  }

  onActivity(_fn: () => void): void {
    // HTTP/2 owns the socket's reads; the tunnel counts PING answers instead.
  }

  onClose(fn: (reason: string) => void): void {
    this.stream.once("close", () => fn(this.closeReason ?? "connection closed"));
  }

  onWritesDone(fn: () => void): void {
    this.stream.once("finish", fn);
  }

  ping(): void {}

  close(code: number, reason: string): void {
    this.closeReason ??= reason || `closed (${code === CLOSE.NORMAL ? "normal" : code})`;
    this.stream.end();
    const hard = setTimeout(() => this.stream.destroy(), 2000);
    hard.unref();
    this.stream.once("close", () => clearTimeout(hard));
  }

  terminate(): void {
    this.stream.destroy();
  }
}
