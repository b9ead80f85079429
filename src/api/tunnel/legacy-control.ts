// The two links a v1 control connection can arrive on (PROTOCOL.md v1, CONTROL), behind one shape
// so the legacy tunnel keeps one set of rules for lines, keep-alives, replacement and close:
//   - a WebSocket (no subprotocol): each write one binary message, readers concatenate; the server
//     pings it, and the pongs the agent's WebSocket library sends count as life;
//   - a hijacked plain GET (answered 200, then the socket itself is the byte stream): no framing,
//     no pings, no close codes. The seed's Go listener writes nothing on its own, so nothing it
//     sends can prove it alive: TCP keep-alive probes are what notice a peer that vanished.

import type { Socket } from "node:net";
import type { WebSocket } from "ws";
import { WS_CLOSE_TIMEOUT_MS } from "../../tunnel/constants.ts";

export interface ControlHandlers {
  /** Bytes from the agent (control lines, split anywhere). */
  data(chunk: Buffer): void;
  /** A sign of life that is not a line (a WebSocket pong). */
  alive(): void;
  /** The link is gone; called once. */
  close(reason: string): void;
}

export interface LegacyControl {
  /** `ws` for a WebSocket, `raw` for a hijacked GET (as GET /api/v1/revdial/connections shows it). */
  readonly transport: "ws" | "raw";
  /** True when the link can be probed (ping); a link that cannot is never dropped for silence. */
  readonly probes: boolean;
  start(handlers: ControlHandlers): void;
  /** True while writes reach the agent. */
  readonly open: boolean;
  send(line: Buffer): void;
  /** Sends a probe the agent's stack answers by itself (a WebSocket ping); no-op where none exists. */
  ping(): void;
  /** Ends the link; a WebSocket carries `code` and `reason`, a hijacked socket only its FIN. */
  close(code: number, reason: string): void;
  destroy(): void;
}

/** A control connection on a WebSocket. */
export class WsControl implements LegacyControl {
  readonly transport = "ws" as const;
  readonly probes = true;
  readonly #ws: WebSocket;

  constructor(ws: WebSocket) {
    this.#ws = ws;
  }

  get open(): boolean {
    return this.#ws.readyState === this.#ws.OPEN;
  }

  start(h: ControlHandlers): void {
    const ws = this.#ws;
    ws.on("message", (data: Buffer) => h.data(data));
    ws.on("pong", () => h.alive());
    ws.on("error", () => {});
    ws.on("close", (code: number, reason: Buffer) =>
      h.close(reason.toString() || `control closed (${code})`),
    );
  }

  send(line: Buffer): void {
    if (this.open) this.#ws.send(line, { binary: true });
  }

  ping(): void {
    try {
      this.#ws.ping();
    } catch {
      // Closing; the close event finishes the tunnel.
    }
  }

  close(code: number, reason: string): void {
    if (this.open) this.#ws.close(code, reason);
  }

  destroy(): void {
    this.#ws.terminate();
  }
}

/** A control connection on a hijacked socket (the 200 already written). */
export class HijackedControl implements LegacyControl {
  readonly transport = "raw" as const;
  readonly probes = false;
  readonly #socket: Socket;
  readonly #keepAliveMs: number;

  /** `keepAliveMs`: idle time before TCP keep-alive probes start (then 10 probes, 1 s apart). */
  constructor(socket: Socket, keepAliveMs: number) {
    this.#socket = socket;
    this.#keepAliveMs = keepAliveMs;
  }

  get open(): boolean {
    return this.#socket.writable && !this.#socket.destroyed;
  }

  start(h: ControlHandlers): void {
    const socket = this.#socket;
    socket.setNoDelay(true);
    socket.setKeepAlive(true, this.#keepAliveMs);
    socket.on("data", (data: Buffer) => h.data(data));
    socket.on("error", () => {});
    // The agent's FIN ends the link: it will not read lines any more either.
    socket.on("end", () => socket.destroy());
    socket.on("close", (hadError: boolean) =>
      h.close(hadError ? "control connection failed" : "control closed"),
    );
    socket.on("timeout", () => socket.destroy());
  }

  send(line: Buffer): void {
    if (this.open) this.#socket.write(line);
  }

  ping(): void {}

  close(_code: number, _reason: string): void {
    if (!this.open) return;
    this.#socket.end();
    this.#socket.setTimeout(WS_CLOSE_TIMEOUT_MS);
  }

  destroy(): void {
    this.#socket.destroy();
  }
}
