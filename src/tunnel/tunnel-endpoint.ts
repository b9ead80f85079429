// The server's end of `GET /api/v1/revdial?runnerid=ID`: checks the handshake, upgrades (to a
// WebSocket, or with `Upgrade: revdial.h2` to the raw socket), and registers the tunnel. It knows nothing of users or sessions: the caller passes an
// `authorize` function that accepts the request or throws an error with a `statusCode`.
//
// Handshake errors are plain HTTP answers before the upgrade, JSON {"error":{"code","message"}}:
// 400 runner id, 401 token, 403 not allowed, 429 too many tunnels. The subprotocol picks the
// protocol: `revdial.h2` is v2; none is the legacy v1 control connection (legacy-tunnel.ts), whose
// data connections come back with `revdial.dialer` and `revdial.req` instead of a runner id.

import type { IncomingMessage } from "node:http";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { type WebSocket, WebSocketServer } from "ws";
import type { Logger } from "../common/logger.ts";
import {
  CLOSE,
  RAW_UPGRADE,
  RUNNER_ID_PATTERN,
  SUBPROTOCOL_H2,
  TUNNEL_PATH,
  WS_CLOSE_TIMEOUT_MS,
} from "./constants.ts";
import { H2Tunnel } from "./h2-tunnel.ts";
import { LegacyTunnel } from "./legacy-tunnel.ts";
import type { TunnelTimings } from "./tunnel.ts";
import { RawLink, type TunnelLink, WsLink } from "./tunnel-link.ts";
import type { TunnelRegistry } from "./tunnel-registry.ts";
import { WebSocketStream } from "./ws-stream.ts";

export interface HandshakeError {
  statusCode: number;
  code: string;
  message: string;
}

export interface TunnelEndpointOptions {
  registry: TunnelRegistry;
  logger: Logger;
  timings: TunnelTimings;
  /** Accepts the handshake or throws a HandshakeError-shaped error. */
  authorize(req: IncomingMessage, runnerId: string): Promise<void>;
  /** Tunnels this server holds at most; past it, 429. Default 20,000. */
  maxTunnels?: number;
  /** Largest WebSocket message accepted from an agent. Default 4 MiB. */
  maxMessageBytes?: number;
  /** Serve the legacy v1 protocol (a WebSocket with no subprotocol). Default true. */
  legacy?: boolean;
}

export class TunnelEndpoint {
  readonly #o: TunnelEndpointOptions;
  readonly #wss: WebSocketServer;
  readonly #sockets = new Set<Duplex>();
  /** Live v1 tunnels by dialer id, to route their data connections (one endpoint's, not global). */
  readonly #dialers = new Map<string, LegacyTunnel>();

  constructor(options: TunnelEndpointOptions) {
    this.#o = options;
    this.#wss = new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      maxPayload: options.maxMessageBytes ?? 4 * 1024 * 1024,
      // The registry tracks tunnels; ws's own Set of clients would be a second entry per tunnel.
      clientTracking: false,
      // A peer that never answers our close frame holds its socket this long (ws's default: 30 s).
      // ws 8.23 takes it; @types/ws does not list it yet.
      ...({ closeTimeout: WS_CLOSE_TIMEOUT_MS } as object),
      handleProtocols: (offered) => (offered.has(SUBPROTOCOL_H2) ? SUBPROTOCOL_H2 : false),
    });
  }

  /** True when this upgrade request is for the tunnel endpoint. */
  matches(req: IncomingMessage): boolean {
    const url = req.url ?? "";
    return url === TUNNEL_PATH || url.startsWith(`${TUNNEL_PATH}?`);
  }

  /** Handles one `upgrade` event of the HTTP server. */
  async handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    this.#track(socket);
    const url = new URL(req.url ?? "/", "http://x");
    const dialer = url.searchParams.get("revdial.dialer");
    if (dialer !== null) {
      await this.#acceptDataConnection(req, socket, head, dialer, url.searchParams.get("revdial.req") ?? "");
      return;
    }
    const runnerId = url.searchParams.get("runnerid") ?? "";
    try {
      if (!RUNNER_ID_PATTERN.test(runnerId)) {
        throw {
          statusCode: 400,
          code: "RD_ERR_TUNNEL_INVALID_RUNNER_ID",
          message: "missing or invalid runnerid",
        };
      }
      await this.#o.authorize(req, runnerId);
      if (
        this.#o.registry.size >= (this.#o.maxTunnels ?? 20_000) &&
        !this.#o.registry.isConnected(runnerId)
      ) {
        throw {
          statusCode: 429,
          code: "RD_ERR_TUNNEL_LIMIT",
          message: "too many tunnels on this server",
          retryAfter: 5,
        };
      }
    } catch (err) {
      rejectHandshake(socket, err as HandshakeError & { retryAfter?: number });
      return;
    }
    if (socket.destroyed) return;
    if (isRawUpgrade(req)) this.#acceptRaw(req, socket as Socket, head, runnerId);
    else this.#wss.handleUpgrade(req, socket, head, (ws) => this.#accept(ws, req, runnerId));
  }

  /**
   * Follows a socket until it closes. Its own method so the listeners' closures hold the socket
   * only: made in handleUpgrade they kept its whole scope (the request, its headers, the URL) alive
   * for the tunnel's life, about 2 KB per tunnel.
   */
  #track(socket: Duplex): void {
    this.#sockets.add(socket);
    socket.once("close", () => this.#sockets.delete(socket));
    socket.on("error", () => {});
  }

  /**
   * The raw transport: answer 101 and run HTTP/2 on the socket itself. The session starts only once
   * the 101 has reached the socket: HTTP/2 writes natively, past anything still queued in JavaScript.
   */
  #acceptRaw(req: IncomingMessage, socket: Socket, head: Buffer, runnerId: string): void {
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${RAW_UPGRADE}\r\n\r\n`,
      (err) => {
        if (err || socket.destroyed) return;
        if (head.length > 0) socket.unshift(head);
        this.#register(new RawLink(socket), req, runnerId);
      },
    );
  }

  #accept(ws: WebSocket, req: IncomingMessage, runnerId: string): void {
    if (ws.protocol !== SUBPROTOCOL_H2) {
      if (this.#o.legacy === false) ws.close(CLOSE.PROTOCOL_ERROR, `subprotocol ${SUBPROTOCOL_H2} required`);
      else this.#acceptLegacy(ws, req, runnerId);
      return;
    }
    this.#register(new WsLink(new WebSocketStream(ws)), req, runnerId);
  }

  /** A v1 control connection: the tunnel is registered like any other. */
  #acceptLegacy(ws: WebSocket, req: IncomingMessage, runnerId: string): void {
    const tunnel = new LegacyTunnel({ ws, ...this.#tunnelParts(req, runnerId) });
    this.#dialers.set(tunnel.dialerId, tunnel);
    tunnel.once("close", () => this.#dialers.delete(tunnel.dialerId));
    this.#o.registry.register(tunnel);
  }

  /**
   * A v1 data connection: it must carry a token allowed to register the dialer's runner id, and a
   * dial must still wait for its request id; otherwise it is refused or closed.
   */
  async #acceptDataConnection(
    req: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    dialerId: string,
    reqId: string,
  ): Promise<void> {
    const tunnel = this.#dialers.get(dialerId);
    try {
      if (!tunnel || this.#o.legacy === false) {
        throw { statusCode: 500, code: "RD_ERR_TUNNEL_UNKNOWN_DIALER", message: "unknown dialer" };
      }
      await this.#o.authorize(req, tunnel.runnerId);
    } catch (err) {
      rejectHandshake(socket, err as HandshakeError);
      return;
    }
    if (socket.destroyed) return;
    this.#wss.handleUpgrade(req, socket, head, (ws) => {
      if (!tunnel.pickup(reqId, ws)) ws.close(CLOSE.NORMAL, "no dial waits for this connection");
    });
  }

  #register(link: TunnelLink, req: IncomingMessage, runnerId: string): void {
    this.#o.registry.register(new H2Tunnel({ link, ...this.#tunnelParts(req, runnerId) }));
  }

  /** What every tunnel is built with, whatever its protocol. */
  #tunnelParts(req: IncomingMessage, runnerId: string) {
    return {
      runnerId,
      remoteAddress: `${req.socket.remoteAddress ?? "?"}:${req.socket.remotePort ?? "?"}`,
      logger: this.#o.logger.child({ runner_id: runnerId }),
      timings: this.#o.timings,
    };
  }

  /** Cuts handshakes still in progress. */
  destroy(): void {
    for (const s of this.#sockets) s.destroy();
    this.#wss.close();
  }
}

/** True for `Connection: Upgrade` + `Upgrade: revdial.h2` (the raw transport), not a WebSocket. */
function isRawUpgrade(req: IncomingMessage): boolean {
  return (req.headers.upgrade ?? "").trim().toLowerCase() === RAW_UPGRADE;
}

const REASONS: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  429: "Too Many Requests",
  500: "Internal Server Error",
  503: "Service Unavailable",
};

function rejectHandshake(socket: Duplex, err: HandshakeError & { retryAfter?: number }): void {
  const status = typeof err?.statusCode === "number" ? err.statusCode : 500;
  const code = typeof err?.code === "string" ? err.code : "RD_ERR_INTERNAL";
  const message =
    status >= 500 && status !== 503 && code === "RD_ERR_INTERNAL" ? "internal error" : String(err?.message);
  const body = JSON.stringify({ error: { code, message } });
  const lines = [
    `HTTP/1.1 ${status} ${REASONS[status] ?? "Error"}`,
    "Content-Type: application/json",
    `Content-Length: ${Buffer.byteLength(body)}`,
    "Connection: close",
  ];
  if (err?.retryAfter) lines.push(`Retry-After: ${err.retryAfter}`);
  if (socket.writable) socket.end(`${lines.join("\r\n")}\r\n\r\n${body}`);
  else socket.destroy();
}
