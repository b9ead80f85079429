// The agent: dials OUT to the API over one link (a WebSocket, or the raw upgraded socket; protocol
// v2 either way), then SERVES the API's calls by proxying each HTTP/2 stream to a local target. This is the side that runs inside a sandbox or on
// a sandbox host, behind NAT: it never accepts a connection.
//
// Lifecycle: connecting -> connected -> (link lost) -> waiting -> connecting ... forever, with
// exponential backoff and full jitter, honouring Retry-After. It ends only when close()/destroy() is
// called (result "closed") or when the server says a newer agent took the runner id (close code
// REPLACED, or a GOAWAY saying "replaced" on a raw link: result "replaced"; fighting the newer agent for the id would flap both). Each state
// change is logged once.

import { EventEmitter } from "node:events";
import http, { type ClientRequest, type IncomingMessage } from "node:http";
import http2, { type Http2Server, type ServerHttp2Session } from "node:http2";
import https from "node:https";
import type { Socket } from "node:net";
import type { SecureContextOptions } from "node:tls";
import WebSocket from "ws";
import { InvalidOptionError } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";
import { Backoff } from "./backoff.ts";
import {
  CLOSE,
  CONNECTION_WINDOW,
  MAX_FRAME_SIZE,
  RAW_UPGRADE,
  STREAM_WINDOW,
  SUBPROTOCOL_H2,
  TUNNEL_PATH,
} from "./constants.ts";
import { HandshakeRejectedError } from "./errors.ts";
import type { TargetMap } from "./target-map.ts";
import { TargetProxy } from "./target-proxy.ts";
import { classifyTlsError, hostOf, INSECURE_WARNING } from "./tls.ts";
import { RawLink, type TransportName, type TunnelLink, WsLink } from "./tunnel-link.ts";
import { WebSocketStream } from "./ws-stream.ts";

const { NGHTTP2_NO_ERROR } = http2.constants;

export type AgentState = "connecting" | "connected" | "waiting" | "closed";
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
  /** `ws` (default; crosses WebSocket proxies) or `raw` (HTTP/2 on the upgraded socket; faster). */
  transport?: TransportName;
  /** Extra headers for the handshake (e.g. a host's labels). */
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

const DEFAULTS = Object.freeze({
  backoffBaseMs: 500,
  backoffCapMs: 30_000,
  deadLinkTimeoutMs: 45_000,
  handshakeTimeoutMs: 15_000,
  transport: "ws" as TransportName,
});

/** Builds the tunnel URL from what a user passes as the server. */
export function tunnelUrl(serverUrl: string, runnerId: string): URL {
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
  const base = url.pathname.replace(/\/+$/, "");
  url.pathname = base.endsWith(TUNNEL_PATH) ? base : `${base}${TUNNEL_PATH}`;
  url.search = "";
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
  /** Cuts whatever is open now: the handshake in progress or the live link. */
  #cut: (() => void) | null = null;
  #sleep: { timer: NodeJS.Timeout; wake: () => void } | null = null;
  #stopping = false;
  #exit: AgentExit = "closed";
  #running: Promise<AgentExit> | null = null;

  constructor(options: AgentClientOptions) {
    super();
    this.#o = { ...DEFAULTS, ...options };
    if (!options.runnerId) throw new InvalidOptionError("runnerId", "required");
    if (!options.token) throw new InvalidOptionError("token", "required");
    this.#url = tunnelUrl(options.serverUrl, options.runnerId);
    this.#log = options.logger.child({ runner_id: options.runnerId });
    this.#backoff = new Backoff({ baseMs: this.#o.backoffBaseMs, capMs: this.#o.backoffCapMs });
    this.#proxy = new TargetProxy({ targets: options.targets, logger: this.#log });
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
        await this.#connectOnce();
      } catch (err) {
        floor = err instanceof HandshakeRejectedError ? (err.retryAfterMs ?? 0) : 0;
        this.#logFailure(err as Error);
      }
      if (this.#stopping) break;
      const delay = this.#backoff.next(floor);
      this.#setState("waiting", { retry_in_ms: delay });
      await this.#wait(delay);
    }
    this.#setState("closed", { exit: this.#exit });
    this.#proxy.close();
    return this.#exit;
  }

  #logFailure(failure: Error): void {
    // A certificate problem is named as such, not as a generic connection error.
    const err = classifyTlsError(failure, hostOf(this.#url)) ?? failure;
    const fields: Record<string, unknown> = { err: err.message };
    if (err instanceof HandshakeRejectedError) fields.status = err.status;
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

  /** One connection: resolves when it ends normally, rejects when the handshake fails. */
  async #connectOnce(): Promise<void> {
    this.#setState("connecting");
    if (this.#url.protocol === "wss:" && this.#o.tls?.rejectUnauthorized === false)
      this.#log.warn({ server: this.#url.origin }, INSECURE_WARNING);
    const link = this.#o.transport === "raw" ? await this.#openRaw() : await this.#openWs();
    await new Promise<void>((resolve) => this.#serve(link, resolve));
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
        readRejection(res).then((err) => {
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
  #openRaw(): Promise<TunnelLink> {
    const secure = this.#url.protocol === "wss:";
    const request = (secure ? https : http).request;
    return new Promise((resolve, reject) => {
      const req = request({
        host: this.#url.hostname.replace(/^\[|\]$/g, ""),
        port: this.#url.port || (secure ? 443 : 80),
        path: `${this.#url.pathname}${this.#url.search}`,
        headers: {
          connection: "Upgrade",
          upgrade: RAW_UPGRADE,
          authorization: `Bearer ${this.#o.token}`,
          ...this.#o.headers,
        },
        agent: false,
        timeout: this.#o.handshakeTimeoutMs,
        ...(secure ? (this.#o.tls ?? {}) : {}),
      });
      this.#cut = () => req.destroy();
      req.on("upgrade", (res: IncomingMessage, socket: Socket, head: Buffer) => {
        if ((res.headers.upgrade ?? "").toLowerCase() !== RAW_UPGRADE) {
          socket.destroy();
          reject(new Error(`server upgraded to "${res.headers.upgrade}", not ${RAW_UPGRADE}`));
          return;
        }
        socket.setTimeout(0);
        if (head.length > 0) socket.unshift(head);
        resolve(new RawLink(socket));
      });
      req.on("response", (res: IncomingMessage) => {
        readRejection(res).then(reject);
      });
      req.on("timeout", () =>
        req.destroy(new Error(`handshake timed out after ${this.#o.handshakeTimeoutMs} ms`)),
      );
      req.on("error", reject);
      req.end();
    });
  }

  #serve(link: TunnelLink, done: () => void): void {
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
        if (data?.toString() === "replaced") replaced = true;
      });
    });
    link.onClose((reason) => {
      clearInterval(watchdog);
      this.#session = null;
      this.#link = null;
      this.#cut = null;
      const closeCode = link instanceof WsLink ? link.closeCode : null;
      if (replaced || closeCode === CLOSE.REPLACED) {
        this.#log.warn("another agent registered this runner id; stopping (replaced)");
        this.#exit = "replaced";
        this.#stopping = true;
      } else if (!this.#stopping) {
        this.#log.info({ code: closeCode ?? undefined, reason }, "tunnel lost");
      }
      done();
    });
    this.#h2.emit("connection", link.stream);
  }

  /** Stops reconnecting, lets calls in flight finish (bounded), closes the link. Idempotent. */
  async close(drainMs = 5000): Promise<AgentExit> {
    this.#stopping = true;
    this.#sleep?.wake();
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

async function readRejection(res: IncomingMessage): Promise<HandshakeRejectedError> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res) {
    size += chunk.length;
    if (size > 64 * 1024) break;
    chunks.push(chunk);
  }
  let message = Buffer.concat(chunks).toString("utf8").trim() || res.statusMessage || "";
  try {
    message = JSON.parse(message).error?.message ?? message;
  } catch {
    // Not JSON: keep the text.
  }
  const retryAfter = parseRetryAfter(res.headers["retry-after"]);
  return new HandshakeRejectedError(res.statusCode ?? 0, message, retryAfter);
}

function parseRetryAfter(value: string | undefined): number | null {
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, date - Date.now());
}
