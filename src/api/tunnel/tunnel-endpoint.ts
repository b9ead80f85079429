// The server's end of `GET /api/v1/revdial?runnerid=ID`: checks the handshake, upgrades (to a
// WebSocket, or with `Upgrade: revdial.h2` to the raw socket), and registers the tunnel. It knows
// nothing of users or sessions: the caller passes an `authorize` function that accepts the request or
// throws an error with a `statusCode`.
//
// Handshake errors are plain HTTP answers before the upgrade, JSON {"error":{"code","message"}}, with
// the header `Revdial-Handshake: refused` (so an agent can tell them from a proxy's answer): 400
// runner id, 401 token, 403 not allowed, 429 too many tunnels or over the admission rate (with
// Retry-After), 503 draining (with Retry-After). Each refusal is logged once per runner id and
// reason per minute (refusal-log.ts). The subprotocol picks the protocol: `revdial.h2` is v2; none is
// the legacy v1 control connection (legacy-tunnel.ts), whose data connections come back with
// `revdial.dialer` and `revdial.req` instead of a runner id.
//
// Lifecycle: stopAccepting() refuses new tunnels (503) and leaves live ones alone, so the registry
// can drain them with GOAWAY; destroy() cuts handshakes in progress and v1 data connections. Sockets
// become the tunnel's once upgraded: the endpoint never cuts a live tunnel.

import type { IncomingMessage, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { type WebSocket, WebSocketServer } from "ws";
import type { Logger } from "../../common/logger.ts";
import {
  CLOSE,
  HANDSHAKE_HEADER,
  RAW_UPGRADE,
  RAW_UPGRADE_MUX,
  RUNNER_ID_PATTERN,
  SUBPROTOCOL_H2,
  SUBPROTOCOL_MUX,
  TUNNEL_PATH,
  WS_CLOSE_TIMEOUT_MS,
} from "../../tunnel/constants.ts";
import { RawMuxLink, WsMuxLink } from "../../tunnel/mux-link.ts";
import type { TunnelTimings } from "../../tunnel/tunnel.ts";
import { RawLink, type TunnelLink, WsLink } from "../../tunnel/tunnel-link.ts";
import { acceptKey, isValidKey } from "../../tunnel/ws-codec.ts";
import { WebSocketStream } from "../../tunnel/ws-stream.ts";
import { AdmissionLimiter } from "./admission-limiter.ts";
import { H2Tunnel } from "./h2-tunnel.ts";
import { HijackedControl, type LegacyControl, WsControl } from "./legacy-control.ts";
import { HIJACK_SETTLE_MS, hijackAnswer, hijackSocket, isHijackRequest } from "./legacy-hijack.ts";
import { LegacyTunnel } from "./legacy-tunnel.ts";
import type { LinkFailure } from "./link-watch.ts";
import { MuxTunnel } from "./mux-tunnel.ts";
import { RefusalLog } from "./refusal-log.ts";
import type { TunnelRegistry } from "./tunnel-registry.ts";
import { websocketAccept } from "./ws-data-connection.ts";

export interface HandshakeError {
  statusCode: number;
  code: string;
  message: string;
}

export interface TunnelEndpointOptions {
  registry: TunnelRegistry;
  logger: Logger;
  timings: TunnelTimings;
  /**
   * Accepts the handshake or throws a HandshakeError-shaped error. `purpose` is `tunnel` for a new
   * tunnel (control connection) and `data` for a v1 data connection of a live one, which must not
   * count as another tunnel (quotas). For a tunnel it may resolve with the id of the credential
   * that authorized it (its owner; anything but a string is none): revoking that credential cuts the tunnel
   * (TunnelRegistry.evictOwned).
   */
  authorize(req: IncomingMessage, runnerId: string, purpose: "tunnel" | "data"): Promise<unknown>;
  /** Tunnels this server holds at most; past it, 429. Default 20,000. */
  maxTunnels?: number;
  /** Largest WebSocket message accepted from an agent. Default 4 MiB. */
  maxMessageBytes?: number;
  /** Serve the legacy v1 protocol (a WebSocket with no subprotocol). Default true. */
  legacy?: boolean;
  /** New tunnel handshakes admitted per second; past it, 429 with Retry-After. Default 1000. */
  admissionRate?: number;
  /** Handshakes admitted at once after a quiet period. Default 2 × admissionRate. */
  admissionBurst?: number;
  /** Retry-After (s) of the 503 answered while draining. Default 2. */
  drainRetryAfterS?: number;
  /** One log line per (runner id, reason) of refused handshakes per this long. Default 60 s. */
  refusalLogIntervalMs?: number;
  now?: () => number;
}

/** What the endpoint has counted since it started (for /metrics and tests). */
export interface EndpointCounters {
  /** Handshakes refused, by HTTP status. */
  refused: Record<number, number>;
  /** v2 links closed because the agent sent no HTTP/2 preface in time. */
  preface_timeouts: number;
  /** v2 links closed because no HTTP/2 frame (PING answer) arrived within the dead-link timeout. */
  dead_links: number;
}

export class TunnelEndpoint {
  readonly #o: TunnelEndpointOptions;
  readonly #wss: WebSocketServer;
  /** Handshakes in progress (not yet a tunnel's) and v1 data connections: what destroy() cuts. */
  readonly #sockets = new Set<Duplex>();
  readonly #admission: AdmissionLimiter;
  readonly #refusals: RefusalLog;
  readonly #counters: EndpointCounters = { refused: {}, preface_timeouts: 0, dead_links: 0 };
  #accepting = true;
  /**
   * Live v1 tunnels by dialer id, to route their data connections (one endpoint's, not global), each
   * with the credentials its data connections were last authorized with (dataAuthorized()).
   */
  readonly #dialers = new Map<string, { tunnel: LegacyTunnel; authorized: Map<string, number> }>();
  /** The credential that authorized a handshake, until its tunnel is registered. */
  readonly #owners = new WeakMap<IncomingMessage, string>();

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
    this.#admission = new AdmissionLimiter({
      ratePerSecond: options.admissionRate,
      burst: options.admissionBurst,
      now: options.now,
    });
    this.#refusals = new RefusalLog({
      logger: options.logger,
      intervalMs: options.refusalLogIntervalMs,
      now: options.now,
    });
  }

  /** Refuses new tunnels from now on (503 + Retry-After); live tunnels are left to the registry. */
  stopAccepting(): void {
    this.#accepting = false;
  }

  counters(): EndpointCounters {
    return { ...this.#counters, refused: { ...this.#counters.refused } };
  }

  /** True when this upgrade request is for the tunnel endpoint. */
  matches(req: IncomingMessage): boolean {
    const url = req.url ?? "";
    return url === TUNNEL_PATH || url.startsWith(`${TUNNEL_PATH}?`);
  }

  /** Handles one `upgrade` event of the HTTP server. Never throws. */
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
      await this.#check(req, runnerId);
    } catch (err) {
      this.#refuse(req, socket, RUNNER_ID_PATTERN.test(runnerId) ? runnerId : "(invalid)", err);
      return;
    }
    if (socket.destroyed) return;
    const mux = muxTransport(req);
    if (mux === "raw") this.#acceptMux(req, socket as Socket, head, runnerId, "raw", RAW_MUX_101);
    else if (mux === "ws") this.#acceptWsMux(req, socket as Socket, head, runnerId);
    else if (isRawUpgrade(req)) this.#acceptRaw(req, socket as Socket, head, runnerId);
    else
      this.#wss.handleUpgrade(req, socket, head, (ws) => {
        this.#sockets.delete(socket);
        this.#accept(ws, req, runnerId);
      });
  }

  /** The handshake's checks, cheapest first; throws a HandshakeError-shaped error. */
  async #check(req: IncomingMessage, runnerId: string): Promise<void> {
    if (!this.#accepting) {
      throw {
        statusCode: 503,
        code: "RD_ERR_TUNNEL_DRAINING",
        message: "server shutting down; reconnect later",
        retryAfter: this.#o.drainRetryAfterS ?? 2,
      };
    }
    if (!RUNNER_ID_PATTERN.test(runnerId)) {
      throw {
        statusCode: 400,
        code: "RD_ERR_TUNNEL_INVALID_RUNNER_ID",
        message: "missing or invalid runnerid",
      };
    }
    const admission = this.#admission.admit();
    if (!admission.admitted) {
      throw {
        statusCode: 429,
        code: "RD_ERR_TUNNEL_ADMISSION_RATE",
        message: "too many new tunnels right now; retry later",
        retryAfter: admission.retryAfterS,
      };
    }
    const owner = await this.#o.authorize(req, runnerId, "tunnel");
    if (typeof owner === "string") this.#owners.set(req, owner);
    if (this.#o.registry.size >= (this.#o.maxTunnels ?? 20_000) && !this.#o.registry.isConnected(runnerId)) {
      throw {
        statusCode: 429,
        code: "RD_ERR_TUNNEL_LIMIT",
        message: "too many tunnels on this server",
        retryAfter: 5,
      };
    }
  }

  #refuse(req: IncomingMessage, socket: Duplex, runnerId: string, err: unknown): void {
    const e = err as HandshakeError & { retryAfter?: number };
    const status = typeof e?.statusCode === "number" ? e.statusCode : 500;
    this.#counters.refused[status] = (this.#counters.refused[status] ?? 0) + 1;
    this.#refusals.record({
      runnerId,
      status,
      code: typeof e?.code === "string" ? e.code : "RD_ERR_INTERNAL",
      message: status >= 500 && status !== 503 ? String((err as Error)?.message ?? err) : String(e?.message),
      remoteAddress: req.socket.remoteAddress ?? "?",
    });
    rejectHandshake(socket, e);
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
        this.#sockets.delete(socket);
        if (head.length > 0) socket.unshift(head);
        this.#register(new RawLink(socket), req, runnerId);
      },
    );
  }

  /** v3 over a WebSocket: the handshake is answered here, and ws-codec.ts carries the frames. */
  #acceptWsMux(req: IncomingMessage, socket: Socket, head: Buffer, runnerId: string): void {
    const key = req.headers["sec-websocket-key"];
    if (req.headers["sec-websocket-version"] !== "13" || !isValidKey(key)) {
      this.#refuse(req, socket, runnerId, {
        statusCode: 400,
        code: "RD_ERR_TUNNEL_BAD_HANDSHAKE",
        message: "invalid WebSocket handshake (Sec-WebSocket-Key or Sec-WebSocket-Version 13 missing)",
      });
      return;
    }
    this.#acceptMux(req, socket, head, runnerId, "ws", wsMuxAnswer(key));
  }

  /**
   * Protocol v3 on either transport: answer 101, then the tunnel runs on the socket. The session
   * starts once the 101 is written, so its HELLO cannot overtake it.
   */
  #acceptMux(
    req: IncomingMessage,
    socket: Socket,
    head: Buffer,
    runnerId: string,
    transport: "ws" | "raw",
    answer: string,
  ): void {
    socket.setTimeout(0);
    socket.write(answer, (err) => {
      if (err || socket.destroyed) return;
      this.#sockets.delete(socket);
      const link =
        transport === "raw"
          ? new RawMuxLink(socket)
          : new WsMuxLink(socket, {
              role: "server",
              maxFrameBytes: this.#o.maxMessageBytes ?? 4 * 1024 * 1024,
            });
      const tunnel = new MuxTunnel({ link, ...this.#tunnelParts(req, runnerId) });
      if (head.length > 0) socket.unshift(head);
      this.#o.registry.register(tunnel, this.#owners.get(req));
    });
  }

  #accept(ws: WebSocket, req: IncomingMessage, runnerId: string): void {
    if (ws.protocol !== SUBPROTOCOL_H2) {
      if (this.#o.legacy === false) ws.close(CLOSE.PROTOCOL_ERROR, `subprotocol ${SUBPROTOCOL_H2} required`);
      else this.#acceptLegacy(ws, req, runnerId);
      return;
    }
    this.#register(new WsLink(new WebSocketStream(ws)), req, runnerId);
  }

  /** A v1 control connection on a WebSocket: the tunnel is registered like any other. */
  #acceptLegacy(ws: WebSocket, req: IncomingMessage, runnerId: string): void {
    this.#registerLegacy(new WsControl(ws), req, runnerId, 0);
  }

  #registerLegacy(control: LegacyControl, req: IncomingMessage, runnerId: string, holdDialsMs: number): void {
    const tunnel = new LegacyTunnel({ control, holdDialsMs, ...this.#tunnelParts(req, runnerId) });
    this.#dialers.set(tunnel.dialerId, { tunnel, authorized: new Map() });
    tunnel.once("close", () => this.#dialers.delete(tunnel.dialerId));
    this.#o.registry.register(tunnel, this.#owners.get(req));
  }

  /**
   * A plain (not upgraded) request on the tunnel path, passed on by the HTTP server's request
   * handler. When it is the seed's hijacked v1 control connection (the rule is in legacy-hijack.ts),
   * takes its socket and returns true: it is checked like any handshake, answered 200 and served as a
   * v1 tunnel. Otherwise returns false and leaves the request to the caller (426: a stripped
   * upgrade). Never throws.
   */
  handlePlainRequest(req: IncomingMessage, res: ServerResponse): boolean {
    if (this.#o.legacy === false || !isHijackRequest(req)) return false;
    const socket = hijackSocket(req, res);
    if (!socket) return false;
    void this.#acceptHijack(req, socket);
    return true;
  }

  async #acceptHijack(req: IncomingMessage, socket: Socket): Promise<void> {
    this.#track(socket);
    const runnerId = new URL(req.url ?? "/", "http://x").searchParams.get("runnerid") ?? "";
    try {
      await this.#check(req, runnerId);
    } catch (err) {
      this.#refuse(req, socket, RUNNER_ID_PATTERN.test(runnerId) ? runnerId : "(invalid)", err);
      return;
    }
    if (socket.destroyed) return;
    socket.write(hijackAnswer(new Date()), (err) => {
      if (err || socket.destroyed) return;
      this.#sockets.delete(socket);
      // TCP keep-alive is all that watches a hijacked link: probes start after a fifth of the ping
      // interval idle, so 10 unanswered probes (1 s apart) end it before the next keep-alive line.
      const keepAliveMs = Math.max(1000, Math.floor(this.#o.timings.pingIntervalMs / 5));
      this.#registerLegacy(new HijackedControl(socket, keepAliveMs), req, runnerId, HIJACK_SETTLE_MS);
    });
  }

  /**
   * A v1 data connection: it must carry a token allowed to register the dialer's runner id, and a
   * dial must still wait for its request id; otherwise it is refused or closed. The check's answer
   * is remembered per tunnel and credentials for DATA_AUTH_TTL_MS (every call is a data connection;
   * the store lookup behind authorize() would cap them); a data connection kept for later calls
   * carries them only while that answer is remembered. Revocation still ends them at once: every
   * path that revokes keys evicts the tunnel, and the memory goes with it.
   */
  async #acceptDataConnection(
    req: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    dialerId: string,
    reqId: string,
  ): Promise<void> {
    const entry = this.#dialers.get(dialerId);
    const credentials = `${req.headers.authorization ?? ""}\n${req.headers["x-api-key"] ?? ""}`;
    try {
      if (!entry || this.#o.legacy === false) {
        throw { statusCode: 500, code: "RD_ERR_TUNNEL_UNKNOWN_DIALER", message: "unknown dialer" };
      }
      const now = this.#o.now ?? Date.now;
      if (!dataAuthorized(entry.authorized, credentials, now())) {
        await this.#o.authorize(req, entry.tunnel.runnerId, "data");
        rememberDataAuth(entry.authorized, credentials, now());
      }
    } catch (err) {
      this.#refuse(req, socket, entry?.tunnel.runnerId ?? "(unknown dialer)", err);
      return;
    }
    if (socket.destroyed) return;
    const accept = websocketAccept(req);
    if (accept === null) {
      this.#refuse(req, socket, entry.tunnel.runnerId, {
        statusCode: 400,
        code: "RD_ERR_TUNNEL_BAD_HANDSHAKE",
        message: "a data connection must be a WebSocket handshake (version 13)",
      });
      return;
    }
    // A data connection is a call in flight: it stays in #sockets (destroy() cuts it) until it ends.
    // Kept for later calls (legacy-tunnel.ts), it carries them only while this answer is remembered.
    const now = this.#o.now ?? Date.now;
    entry.tunnel.pickup(reqId, socket as Socket, head, accept, () =>
      dataAuthorized(entry.authorized, credentials, now()),
    );
  }

  #register(link: TunnelLink, req: IncomingMessage, runnerId: string): void {
    this.#o.registry.register(
      new H2Tunnel({ link, ...this.#tunnelParts(req, runnerId) }),
      this.#owners.get(req),
    );
  }

  /** What every tunnel is built with, whatever its protocol. */
  #tunnelParts(req: IncomingMessage, runnerId: string) {
    return {
      runnerId,
      remoteAddress: `${req.socket.remoteAddress ?? "?"}:${req.socket.remotePort ?? "?"}`,
      logger: this.#o.logger.child({ runner_id: runnerId }),
      timings: this.#o.timings,
      onLinkFailure: (kind: LinkFailure) => {
        if (kind === "preface_timeout") this.#counters.preface_timeouts++;
        else this.#counters.dead_links++;
      },
    };
  }

  /** Refuses new tunnels and cuts handshakes in progress and v1 data connections. Idempotent. */
  destroy(): void {
    this.#accepting = false;
    for (const s of this.#sockets) s.destroy();
    this.#wss.close();
  }
}

/**
 * Which transport a v3 handshake asks for: `raw` for `Upgrade: revdial.mux`, `ws` for a WebSocket
 * offering the `revdial.mux` subprotocol (agents offer it before `revdial.h2`, so a v3 server picks
 * v3 and an older one v2), null for anything else.
 */
function muxTransport(req: IncomingMessage): "ws" | "raw" | null {
  const upgrade = (req.headers.upgrade ?? "").trim().toLowerCase();
  if (upgrade === RAW_UPGRADE_MUX) return "raw";
  if (upgrade !== "websocket") return null;
  const offered = String(req.headers["sec-websocket-protocol"] ?? "")
    .split(",")
    .map((p) => p.trim());
  return offered.includes(SUBPROTOCOL_MUX) ? "ws" : null;
}

const RAW_MUX_101 = `HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${RAW_UPGRADE_MUX}\r\n\r\n`;

function wsMuxAnswer(key: string): string {
  return (
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
    `Sec-WebSocket-Accept: ${acceptKey(key)}\r\nSec-WebSocket-Protocol: ${SUBPROTOCOL_MUX}\r\n\r\n`
  );
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
    `${HANDSHAKE_HEADER}: refused`,
  ];
  if (err?.retryAfter) lines.push(`Retry-After: ${err.retryAfter}`);
  if (socket.writable) socket.end(`${lines.join("\r\n")}\r\n\r\n${body}`);
  else socket.destroy();
}

/** How long a data connection's authorization is remembered for the next ones of its tunnel. */
const DATA_AUTH_TTL_MS = 1000;
/** Credentials remembered per tunnel at most (an agent uses one). */
const DATA_AUTH_MAX = 8;

function dataAuthorized(authorized: Map<string, number>, credentials: string, now: number): boolean {
  const until = authorized.get(credentials);
  return until !== undefined && until > now;
}

function rememberDataAuth(authorized: Map<string, number>, credentials: string, now: number): void {
  if (authorized.size >= DATA_AUTH_MAX) authorized.clear();
  authorized.set(credentials, now + DATA_AUTH_TTL_MS);
}
