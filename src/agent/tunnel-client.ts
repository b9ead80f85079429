// The agent: dials OUT to the API over one link (a WebSocket, or the raw upgraded socket), then
// SERVES the API's calls: under protocol v3 (the default) each stream the API opens is piped to a
// local target by MuxPump; under v2 each HTTP/2 stream is proxied by TargetProxy. A v3 offer that a
// server answers with v2 (an older server, on `ws`) is followed: the agent speaks v2 from then on.
// This is the side that runs inside a sandbox or on a sandbox host, behind NAT: it never accepts a
// connection.
//
// Lifecycle: connecting -> connected -> (link lost) -> waiting -> connecting ... forever, with
// exponential backoff and full jitter, honouring Retry-After. It ends only when close()/destroy() is
// called (result "closed") or when the server says a newer agent took the runner id (close code
// REPLACED, or a GOAWAY saying "replaced" on a raw link: result "replaced"; fighting the newer agent for the id would flap both). Each state
// change is logged once.
//
// Eviction (close code EVICTED, or a GOAWAY whose data starts with "evicted"): the server closed the
// tunnel because its session was stopped or its keys revoked. The agent does not exit (a host may be
// allowed back) but must not spin: it waits the `retry-after=SECONDS` hint of the reason (60 s when
// absent) before dialing again, and from then on the usual backoff applies to the refusals it gets.
//
// A replica that drains (SIGTERM in a cluster) closes with a reason or GOAWAY carrying
// `reconnect=now`: the agent dials again at once, with no backoff, through the load balancer, which
// sends it to another replica. An agent that does not know the hint reconnects with its backoff.
//
// An upgrade answered by a plain HTTP answer that the tunnel endpoint did not make (no
// `Revdial-Handshake` header) is reported as a proxy that strips the Upgrade headers
// (classifyUpgradeAnswer).

import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import http, { type ClientRequest, type IncomingMessage } from "node:http";
import http2, { type Http2Server, type ServerHttp2Session } from "node:http2";
import https from "node:https";
import type { Socket } from "node:net";
import type { SecureContextOptions } from "node:tls";
import WebSocket from "ws";
import { Backoff } from "../common/backoff.ts";
import { InvalidOptionError } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";
import { classifyTlsError, hostOf, INSECURE_WARNING } from "../common/tls.ts";
import {
  CLOSE,
  CONNECTION_WINDOW,
  EVICTED_RETRY_AFTER_S,
  HANDSHAKE_HEADER,
  MAX_FRAME_SIZE,
  RAW_UPGRADE,
  RAW_UPGRADE_MUX,
  STREAM_WINDOW,
  SUBPROTOCOL_H2,
  SUBPROTOCOL_MUX,
  TUNNEL_PATH,
} from "../tunnel/constants.ts";
import { HandshakeRejectedError, TunnelNotUpgradedError } from "../tunnel/errors.ts";
import { MUX_CODE } from "../tunnel/mux-frames.ts";
import { type MuxLink, RawMuxLink, WsMuxLink } from "../tunnel/mux-link.ts";
import { MuxSession } from "../tunnel/mux-session.ts";
import { RawLink, type TransportName, type TunnelLink, WsLink } from "../tunnel/tunnel-link.ts";
import { acceptKey } from "../tunnel/ws-codec.ts";
import { WebSocketStream } from "../tunnel/ws-stream.ts";
import { MuxPump } from "./mux-pump.ts";
import type { TargetMap } from "./target-map.ts";
import { TargetProxy } from "./target-proxy.ts";

const { NGHTTP2_NO_ERROR } = http2.constants;

export type AgentState = "connecting" | "connected" | "waiting" | "closed";
export type AgentProtocol = "v2" | "v3";
export type AgentExit = "closed" | "replaced";

export interface AgentClientOptions {
  /** API base URL (http, https, ws or wss); a trailing /api/v1/revdial is accepted. */
  serverUrl: string;
  runnerId: string;
  token: string;
  targets: TargetMap;
  logger: Logger;
  /** Extra TLS options (ca, rejectUnauthorized) for https/wss servers. */
  tls?: SecureContextOptions & { rejectUnauthorized?: boolean };
  backoffBaseMs?: number;
  backoffCapMs?: number;
  /** Drop the link after this long without a frame from the server. Default 45 s. */
  deadLinkTimeoutMs?: number;
  /** Handshake deadline. Default 15 s. */
  handshakeTimeoutMs?: number;
  /** `ws` (default; crosses WebSocket proxies) or `raw` (the upgraded socket itself; faster). */
  transport?: TransportName;
  /**
   * `v3` (default: the revdial multiplexer; over `ws` an older server's choice of v2 is followed)
   * or `v2` (HTTP/2 over the link).
   */
  protocol?: AgentProtocol;
  /** Extra headers for the handshake (e.g. a host's labels). */
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

export const AGENT_CLIENT_DEFAULTS = Object.freeze({
  backoffBaseMs: 500,
  // 10 s, not 30: after an API restart every agent has met refusals, and its ceiling, not the
  // server, decides when it is back (npm run bench -- storm: 100% back took 30.6 s with a 30 s cap).
  backoffCapMs: 10_000,
  deadLinkTimeoutMs: 45_000,
  handshakeTimeoutMs: 15_000,
  transport: "ws" as TransportName,
  protocol: "v3" as AgentProtocol,
});

/**
 * The server URL a user gives, as a WebSocket URL (http -> ws, https -> wss) with no query: the
 * base of the tunnel URL and of the agent sync socket's. Throws InvalidOptionError.
 */
export function webSocketBase(serverUrl: string): URL {
  let url: URL;
  try {
    url = new URL(serverUrl);
  } catch {
    throw new InvalidOptionError("serverUrl", `not a URL: "${serverUrl}"`);
  }
  if (url.protocol === "http:") url.protocol = "ws:";
  else if (url.protocol === "https:") url.protocol = "wss:";
  else if (url.protocol !== "ws:" && url.protocol !== "wss:")
    throw new InvalidOptionError(
      "serverUrl",
      `unsupported scheme ${url.protocol} (use http, https, ws or wss)`,
    );
  url.search = "";
  return url;
}

/** Builds the tunnel URL from what a user passes as the server. */
export function tunnelUrl(serverUrl: string, runnerId: string): URL {
  const url = webSocketBase(serverUrl);
  const base = url.pathname.replace(/\/+$/, "");
  url.pathname = base.endsWith(TUNNEL_PATH) ? base : `${base}${TUNNEL_PATH}`;
  url.searchParams.set("runnerid", runnerId);
  return url;
}

export class AgentClient extends EventEmitter {
  readonly #o: Required<Omit<AgentClientOptions, "tls" | "headers" | "signal">> & AgentClientOptions;
  readonly #log: Logger;
  readonly #url: URL;
  readonly #backoff: Backoff;
  readonly #proxy: TargetProxy;
  readonly #h2: Http2Server;
  #state: AgentState | null = null;
  #session: ServerHttp2Session | null = null;
  #link: TunnelLink | null = null;
  readonly #pump: MuxPump;
  /** The live v3 session, when the link speaks v3. */
  #mux: MuxSession | null = null;
  /** The protocol dialed next: v3 until a server answers v3's offer with v2. */
  #protocol: AgentProtocol;
  /** Cuts whatever is open now: the handshake in progress or the live link. */
  #cut: (() => void) | null = null;
  #sleep: { timer: NodeJS.Timeout; wake: () => void } | null = null;
  #stopping = false;
  /** The last link closed with the `reconnect=now` hint: the next dial goes at once. */
  #reconnectNow = false;
  #exit: AgentExit = "closed";
  #running: Promise<AgentExit> | null = null;

  constructor(options: AgentClientOptions) {
    super();
    this.#o = { ...AGENT_CLIENT_DEFAULTS, ...options };
    if (!options.runnerId) throw new InvalidOptionError("runnerId", "required");
    if (!options.token) throw new InvalidOptionError("token", "required");
    this.#url = tunnelUrl(options.serverUrl, options.runnerId);
    this.#log = options.logger.child({ runner_id: options.runnerId });
    this.#backoff = new Backoff({ baseMs: this.#o.backoffBaseMs, capMs: this.#o.backoffCapMs });
    if (this.#o.protocol !== "v2" && this.#o.protocol !== "v3")
      throw new InvalidOptionError("protocol", `must be v2 or v3, not "${this.#o.protocol}"`);
    this.#protocol = this.#o.protocol;
    this.#proxy = new TargetProxy({ targets: options.targets, logger: this.#log });
    this.#pump = new MuxPump({ targets: options.targets, logger: this.#log });
    this.#h2 = http2.createServer({
      settings: {
        initialWindowSize: STREAM_WINDOW,
        maxConcurrentStreams: 100_000,
        maxFrameSize: MAX_FRAME_SIZE,
      },
      maxSessionMemory: 256,
    });
    this.#h2.on("stream", (stream, headers) => this.#proxy.handle(stream, headers));
    this.#h2.on("session", (session) => {
      session.on("connect", () => {
        if (!session.destroyed) session.setLocalWindowSize(CONNECTION_WINDOW);
      });
      session.on("error", (err) => this.#log.debug({ err: err.message }, "tunnel session error"));
    });
    options.signal?.addEventListener("abort", () => void this.close(), { once: true });
  }

  get state(): AgentState | null {
    return this.#state;
  }

  /** Runs until closed or replaced; resolves with why it ended. */
  start(): Promise<AgentExit> {
    this.#running ??= this.#loop();
    return this.#running;
  }

  async #loop(): Promise<AgentExit> {
    this.#log.info({ server: this.#url.origin, targets: this.#o.targets.describe() }, "agent starting");
    while (!this.#stopping) {
      let floor = 0;
      try {
        floor = await this.#connectOnce();
      } catch (err) {
        const refused = err instanceof HandshakeRejectedError || err instanceof TunnelNotUpgradedError;
        floor = refused ? (err.retryAfterMs ?? 0) : 0;
        this.#logFailure(err as Error);
      }
      if (this.#stopping) break;
      const delay = this.#reconnectNow ? floor : this.#backoff.next(floor);
      this.#reconnectNow = false;
      this.#setState("waiting", { retry_in_ms: delay });
      await this.#wait(delay);
    }
    this.#setState("closed", { exit: this.#exit });
    this.#proxy.close();
    this.#pump.close();
    return this.#exit;
  }

  #logFailure(failure: Error): void {
    // A certificate problem is named as such, not as a generic connection error.
    const err = classifyTlsError(failure, hostOf(this.#url)) ?? failure;
    const fields: Record<string, unknown> = { err: err.message };
    if (err instanceof HandshakeRejectedError || err instanceof TunnelNotUpgradedError)
      fields.status = err.status;
    const code = (err as { code?: string }).code;
    if (code) fields.code = code;
    this.#log.warn(fields, "tunnel connect failed");
    this.emit("connect-error", err);
  }

  #setState(state: AgentState, fields: Record<string, unknown> = {}): void {
    if (this.#state === state) return;
    this.#state = state;
    const level = state === "waiting" ? "debug" : "info";
    this.#log[level]({ state, ...fields }, `agent ${state}`);
    this.emit("state", state);
  }

  #wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#sleep = null;
        resolve();
      }, ms);
      this.#sleep = {
        timer,
        wake: () => {
          clearTimeout(timer);
          this.#sleep = null;
          resolve();
        },
      };
    });
  }

  /**
   * One connection: resolves when it ends normally, with the least delay before the next dial (the
   * eviction hint, else 0); rejects when the handshake fails.
   */
  async #connectOnce(): Promise<number> {
    this.#setState("connecting");
    if (this.#url.protocol === "wss:" && this.#o.tls?.rejectUnauthorized === false)
      this.#log.warn({ server: this.#url.origin }, INSECURE_WARNING);
    if (this.#protocol === "v3") {
      const mux = this.#o.transport === "raw" ? await this.#openRawMux() : await this.#openWsMux();
      if (mux !== "v2") return new Promise<number>((resolve) => this.#serveMux(mux, resolve));
      this.#protocol = "v2";
      this.#log.info("the server does not speak protocol v3; using v2");
    }
    const link = this.#o.transport === "raw" ? await this.#openRaw() : await this.#openWs();
    return new Promise<number>((resolve) => this.#serve(link, resolve));
  }

  /** The handshake headers every upgrade carries. */
  #handshakeHeaders(extra: Record<string, string>): Record<string, string> {
    return { ...extra, authorization: `Bearer ${this.#o.token}`, ...this.#o.headers };
  }

  /**
   * One upgrade request: resolves with the 101's socket, rejects with the classified refusal (a
   * plain answer), a timeout or a connection error.
   */
  #upgrade(headers: Record<string, string>): Promise<{ res: IncomingMessage; socket: Socket }> {
    const secure = this.#url.protocol === "wss:";
    const request = (secure ? https : http).request;
    return new Promise((resolve, reject) => {
      const req = request({
        host: this.#url.hostname.replace(/^\[|\]$/g, ""),
        port: this.#url.port || (secure ? 443 : 80),
        path: `${this.#url.pathname}${this.#url.search}`,
        headers: this.#handshakeHeaders(headers),
        agent: false,
        timeout: this.#o.handshakeTimeoutMs,
        ...(secure ? (this.#o.tls ?? {}) : {}),
      });
      this.#cut = () => req.destroy();
      req.on("upgrade", (res: IncomingMessage, socket: Socket, head: Buffer) => {
        socket.setTimeout(0);
        if (head.length > 0) socket.unshift(head);
        resolve({ res, socket });
      });
      req.on("response", (res: IncomingMessage) => {
        readUpgradeAnswer(res).then(reject);
      });
      req.on("timeout", () =>
        req.destroy(new Error(`handshake timed out after ${this.#o.handshakeTimeoutMs} ms`)),
      );
      req.on("error", reject);
      req.end();
    });
  }

  /** v3 over a WebSocket; "v2" when the server chose the v2 subprotocol instead. */
  async #openWsMux(): Promise<MuxLink | "v2"> {
    const key = randomBytes(16).toString("base64");
    const { res, socket } = await this.#upgrade({
      connection: "Upgrade",
      upgrade: "websocket",
      "sec-websocket-version": "13",
      "sec-websocket-key": key,
      "sec-websocket-protocol": `${SUBPROTOCOL_MUX}, ${SUBPROTOCOL_H2}`,
    });
    const chosen = res.headers["sec-websocket-protocol"];
    if (res.headers["sec-websocket-accept"] !== acceptKey(key)) {
      socket.destroy();
      throw new Error("the server's WebSocket answer has a wrong Sec-WebSocket-Accept");
    }
    if (chosen === SUBPROTOCOL_H2) {
      socket.destroy();
      return "v2";
    }
    if (chosen !== SUBPROTOCOL_MUX) {
      socket.destroy();
      throw new Error(`server did not accept subprotocol ${SUBPROTOCOL_MUX}`);
    }
    return new WsMuxLink(socket, { role: "client", maxFrameBytes: 64 * 1024 * 1024 });
  }

  /** v3 on the raw transport: `Upgrade: revdial.mux`, then the socket itself. */
  async #openRawMux(): Promise<MuxLink> {
    const { res, socket } = await this.#upgrade({ connection: "Upgrade", upgrade: RAW_UPGRADE_MUX });
    if ((res.headers.upgrade ?? "").toLowerCase() !== RAW_UPGRADE_MUX) {
      socket.destroy();
      throw new Error(`server upgraded to "${res.headers.upgrade}", not ${RAW_UPGRADE_MUX}`);
    }
    return new RawMuxLink(socket);
  }

  /** Protocol v3: reads from targets so far, and how many went into a recycled slab (read-pool.ts). */
  get pumpReadStats(): { reads: number; recycled: number } {
    return this.#pump.readStats;
  }

  #serveMux(link: MuxLink, done: (floorMs: number) => void): void {
    let replaced = false;
    let goawayText = "";
    let activityAt = Date.now();
    this.#pump.attach(link);
    const session = new MuxSession({
      link,
      role: "agent",
      onOpen: (stream, target) => this.#pump.open(session, stream, target),
      // Connected means usable: the server's HELLO has arrived over the link.
      onHello: () => {
        this.#backoff.reset();
        this.#setState("connected", { transport: link.transport, protocol: "v3" });
      },
      onGoaway: (_code, reason) => {
        goawayText = reason.slice(0, 200);
        if (goawayText === "replaced") replaced = true;
      },
      onProtocolError: (message) => this.#log.warn({ err: message }, "tunnel protocol error"),
    });
    this.#mux = session;
    this.#cut = () => session.destroy("agent stopping");
    link.onActivity(() => {
      activityAt = Date.now();
    });
    const check = Math.max(5, Math.floor(this.#o.deadLinkTimeoutMs / 5));
    const watchdog = setInterval(() => {
      const last = Math.max(activityAt, session.lastFrameAt);
      if (Date.now() - last <= this.#o.deadLinkTimeoutMs) return;
      this.#log.warn("no frame from the server within the dead-link timeout; reconnecting");
      session.destroy("dead link");
    }, check);
    link.onClose((reason) => {
      clearInterval(watchdog);
      this.#mux = null;
      this.#cut = null;
      done(this.#afterClose(replaced, link.closeCode, reason, goawayText));
    });
  }

  /**
   * What a closed link means for the next dial: stop (replaced), wait the eviction's hint, or
   * reconnect with backoff. Returns the least delay before the next dial.
   */
  #afterClose(replaced: boolean, closeCode: number | null, reason: string, goawayText: string): number {
    if (replaced || closeCode === CLOSE.REPLACED) {
      this.#log.warn("another agent registered this runner id; stopping (replaced)");
      this.#exit = "replaced";
      this.#stopping = true;
      return 0;
    }
    if (closeCode === CLOSE.EVICTED || goawayText.startsWith("evicted")) {
      const text = closeCode === CLOSE.EVICTED ? reason : goawayText;
      const floorMs = evictionDelayMs(text);
      this.#log.warn(
        { reason: text, retry_in_ms: floorMs },
        "the server evicted this runner (session stopped or key revoked); waiting before dialing again",
      );
      return floorMs;
    }
    if (RECONNECT_NOW.test(reason) || RECONNECT_NOW.test(goawayText)) this.#reconnectNow = true;
    if (!this.#stopping) this.#log.info({ code: closeCode ?? undefined, reason }, "tunnel lost");
    return 0;
  }

  #openWs(): Promise<TunnelLink> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.#url, [SUBPROTOCOL_H2], {
        headers: { authorization: `Bearer ${this.#o.token}`, ...this.#o.headers },
        handshakeTimeout: this.#o.handshakeTimeoutMs,
        perMessageDeflate: false,
        maxPayload: 64 * 1024 * 1024,
        ...(this.#o.tls ?? {}),
      });
      this.#cut = () => ws.terminate();
      let opened = false;
      ws.on("unexpected-response", (_req: ClientRequest, res: IncomingMessage) => {
        readUpgradeAnswer(res).then((err) => {
          ws.terminate();
          reject(err);
        });
      });
      ws.once("open", () => {
        opened = true;
        if (ws.protocol !== SUBPROTOCOL_H2) {
          ws.close(CLOSE.PROTOCOL_ERROR, "subprotocol not accepted");
          reject(new Error(`server did not accept subprotocol ${SUBPROTOCOL_H2}`));
          return;
        }
        // Made here, in the open event, so no message can arrive before the stream listens.
        resolve(new WsLink(new WebSocketStream(ws)));
      });
      ws.on("error", (err) => {
        if (!opened) reject(err);
      });
    });
  }

  /** The raw transport: `Upgrade: revdial.h2`, then HTTP/2 on the socket itself. */
  async #openRaw(): Promise<TunnelLink> {
    const { res, socket } = await this.#upgrade({ connection: "Upgrade", upgrade: RAW_UPGRADE });
    if ((res.headers.upgrade ?? "").toLowerCase() !== RAW_UPGRADE) {
      socket.destroy();
      throw new Error(`server upgraded to "${res.headers.upgrade}", not ${RAW_UPGRADE}`);
    }
    return new RawLink(socket);
  }

  #serve(link: TunnelLink, done: (floorMs: number) => void): void {
    this.#link = link;
    this.#cut = () => {
      // HTTP/2 owns a raw socket once the session runs: it must be the one to close it.
      this.#session?.destroy();
      link.terminate();
    };
    let lastFrameAt = Date.now();
    const alive = () => {
      lastFrameAt = Date.now();
    };
    link.onActivity(alive);
    const check = Math.max(5, Math.floor(this.#o.deadLinkTimeoutMs / 5));
    const watchdog = setInterval(() => {
      if (Date.now() - lastFrameAt <= this.#o.deadLinkTimeoutMs) return;
      this.#log.warn("no frame from the server within the dead-link timeout; reconnecting");
      link.terminate();
    }, check);
    let replaced = false;
    let goawayText = "";
    this.#h2.once("session", (session: ServerHttp2Session) => {
      this.#session = session;
      // Connected means usable: the server's SETTINGS have arrived over the link.
      session.once("remoteSettings", () => {
        this.#backoff.reset();
        this.#setState("connected", { transport: link.transport });
      });
      // The server PINGs every interval: on a raw link that is the only sign of life below streams.
      session.on("ping", alive);
      session.on("goaway", (_code: number, _last: number, data?: Buffer) => {
        goawayText = data?.subarray(0, 200).toString() ?? "";
        if (goawayText === "replaced") replaced = true;
      });
    });
    link.onClose((reason) => {
      clearInterval(watchdog);
      this.#session = null;
      this.#link = null;
      this.#cut = null;
      const closeCode = link instanceof WsLink ? link.closeCode : null;
      done(this.#afterClose(replaced, closeCode, reason, goawayText));
    });
    this.#h2.emit("connection", link.stream);
  }

  /** Stops reconnecting, lets calls in flight finish (bounded), closes the link. Idempotent. */
  async close(drainMs = 5000): Promise<AgentExit> {
    this.#stopping = true;
    this.#sleep?.wake();
    const mux = this.#mux;
    if (mux) {
      await drainMux(mux, drainMs);
      mux.close(CLOSE.GOING_AWAY, "agent stopping");
      return this.#running ?? "closed";
    }
    const link = this.#link;
    if (link) {
      const session = this.#session;
      await new Promise<void>((resolve) => {
        const cut = setTimeout(resolve, drainMs);
        const drained = () => {
          clearTimeout(cut);
          resolve();
        };
        // The session ends the link once its last stream is done (see H2Tunnel.close): waiting for
        // the session's `close` instead would wait for the server to close the link, i.e. drainMs.
        // Before the SETTINGS exchange nothing can be in flight, and HTTP/2 would wait for it.
        const usable = this.#state === "connected" && session && !session.closed;
        if (usable && !link.stream.writableFinished && !link.stream.destroyed) {
          link.onWritesDone(drained);
          link.onClose(drained);
          // A raw link has no close frame: the reason rides in a GOAWAY of its own.
          if (link.transport === "raw") session.goaway(NGHTTP2_NO_ERROR, 0, Buffer.from("agent stopping"));
          session.close();
        } else drained();
      });
      link.close(CLOSE.GOING_AWAY, "agent stopping");
    } else this.#cut?.();
    return this.#running ?? "closed";
  }

  /** Cuts the link at once and stops. Idempotent. */
  destroy(): void {
    this.#stopping = true;
    this.#sleep?.wake();
    this.#cut?.();
  }
}

/**
 * Tells the server the agent is stopping (GOAWAY: no new calls) and waits, at most `drainMs`, for
 * the calls in flight to finish.
 */
async function drainMux(session: MuxSession, drainMs: number): Promise<void> {
  if (!session.helloSeen) return;
  session.goaway(MUX_CODE.NONE, "agent stopping");
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    session.whenIdle(),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, drainMs);
    }),
  ]);
  clearTimeout(timer);
}

/** Reads a non-101 answer to the upgrade (at most 64 KiB of it) and classifies it. */
async function readUpgradeAnswer(
  res: IncomingMessage,
): Promise<HandshakeRejectedError | TunnelNotUpgradedError> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res) {
    size += chunk.length;
    if (size > 64 * 1024) break;
    chunks.push(chunk);
  }
  return classifyUpgradeAnswer(
    res.statusCode ?? 0,
    res.headers,
    Buffer.concat(chunks).toString("utf8"),
    res.statusMessage,
  );
}

/** Statuses the tunnel endpoint refuses a handshake with. */
const REFUSAL_STATUSES = new Set([400, 401, 403, 429, 503]);

/**
 * What a plain HTTP answer to the agent's upgrade request means. The tunnel endpoint marks its own
 * refusals with `Revdial-Handshake: refused` (older servers: a JSON body with an RD_ERR_ code and a
 * refusal status); anything else (a 200, a 400 page, a 404, a 502) means the request never reached
 * the endpoint as an upgrade: a proxy in front of the server strips the Upgrade and Connection headers.
 */
export function classifyUpgradeAnswer(
  status: number,
  headers: Record<string, string | string[] | undefined>,
  body: string,
  statusMessage = "",
): HandshakeRejectedError | TunnelNotUpgradedError {
  const retryAfter = parseRetryAfter(headerText(headers["retry-after"]));
  let message = body.trim() || statusMessage;
  let code: string | null = null;
  try {
    const parsed = JSON.parse(message) as { error?: { code?: unknown; message?: unknown } };
    if (typeof parsed.error?.code === "string") code = parsed.error.code;
    if (typeof parsed.error?.message === "string") message = parsed.error.message;
  } catch {
    // Not JSON: keep the text.
  }
  const marked = headerText(headers[HANDSHAKE_HEADER.toLowerCase()]) === "refused";
  const legacyRefusal =
    REFUSAL_STATUSES.has(status) && code?.startsWith("RD_ERR_") && code !== "RD_ERR_NOT_FOUND";
  if (marked || legacyRefusal) return new HandshakeRejectedError(status, message, retryAfter);
  return new TunnelNotUpgradedError(status, retryAfter);
}

function headerText(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** The hint of a draining replica: dial again at once. */
const RECONNECT_NOW = /(^|[;\s])reconnect=now\b/;

/** The delay an eviction asks for: `retry-after=SECONDS` in its reason, else EVICTED_RETRY_AFTER_S. */
export function evictionDelayMs(reason: string): number {
  const match = /retry-after=(\d{1,6})/.exec(reason);
  return (match ? Number(match[1]) : EVICTED_RETRY_AFTER_S) * 1000;
}

function parseRetryAfter(value: string | undefined): number | null {
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, date - Date.now());
}
