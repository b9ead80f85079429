// The API's end of the agent sync channel (docs/agent-sync.md): the WebSocket
// `GET /api/v1/external-agents/sync?session_id=ID` over which the agent in a sandbox streams its
// messages, and the user's messages (interactions) travel to it. It rides beside the tunnel on the
// same listener (the upgrade listener in routes/revdial.ts asks matches() first), never through it.
//
// Contracts, kept by this class:
// - One live sync socket per session: a new one replaces the old, which is closed with 4001.
// - Work on one session (a user's message, an agent's event, a cancel, a delivery) runs one piece
//   at a time, in arrival order (a chain of promises per session), so turns and deliveries never
//   interleave; different sessions never wait for each other.
// - Delivery of a user's message: it is stored first (interaction `waiting`, delivery `queued`),
//   then written to the live socket (delivery `sent`), and counts as received once the agent sends
//   any event about it (`acked`: an event naming its interaction_id, or an answer attributed to it).
//   A new socket is sent every waiting message not acked yet, oldest first, so a socket that drops
//   loses nothing; the bridge in the sandbox drops an interaction_id it has already handed to its
//   program, so nothing reaches the program twice. At most maxQueuedMessages (default 100) wait
//   unacknowledged per session; past it, 429 RD_ERR_SYNC_QUEUE_FULL.
// - Bad input never costs other sessions: a frame over maxFrameBytes (default 1 MiB) is closed by
//   ws with 1009; one that is not a JSON object closes with 1003 and a reason; each socket's events
//   are processed at most eventsPerSecond (default 100, burst eventBurst 200), and a socket with more
//   than maxPendingEvents (default 500) events waiting is closed with 1008.
// - close() closes every sync socket (1001) and ends every event stream; idempotent.

import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { setTimeout as delay } from "node:timers/promises";
import { type RawData, type WebSocket, WebSocketServer } from "ws";
import {
  AGENT_EVENT_TYPES,
  API_MESSAGE_TYPES,
  type ApiMessage,
  SYNC_CLOSE,
  SYNC_MAX_FRAME_BYTES,
  SYNC_PATH,
} from "../common/agent-sync-wire.ts";
import { InvalidOptionError } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";
import { type AgentMessage, type Interaction, isSessionId, type Store } from "../store/index.ts";
import { AUTH_ERROR_CODES, type Auth, type Principal, requireWrite } from "./auth.ts";
import { ApiError } from "./http-errors.ts";
import { SyncEventLog, type SyncEventLogOptions } from "./sync-events.ts";
import type { InteractionView } from "./views.ts";

export type { InteractionView } from "./views.ts";

export const SYNC_ERROR_CODES = Object.freeze({
  queueFull: "RD_ERR_SYNC_QUEUE_FULL",
  forbidden: "RD_ERR_SYNC_FORBIDDEN",
  invalidSessionId: "RD_ERR_SYNC_INVALID_SESSION_ID",
  sessionEnded: "RD_ERR_SYNC_SESSION_ENDED",
  tooManyStreams: "RD_ERR_SYNC_TOO_MANY_STREAMS",
});

export interface AgentSyncHubOptions {
  store: Store;
  auth: Auth;
  logger: Logger;
  /** User messages waiting for an agent's acknowledgement, per session (default 100); past it, 429. */
  maxQueuedMessages?: number;
  /** Largest frame accepted from an agent (default 1 MiB; bigger closes with 1009). */
  maxFrameBytes?: number;
  /** Events processed per second per socket (default 100) ... */
  eventsPerSecond?: number;
  /** ... with bursts of this many (default 200). */
  eventBurst?: number;
  /** Events received and not yet processed, per socket, before it is closed with 1008 (default 500). */
  maxPendingEvents?: number;
  /** Messages in one agent answer at most (default 200); more are ignored and logged. */
  maxAgentMessages?: number;
  /** Characters of one agent answer at most (default 4 Mi); updates past it are ignored and logged. */
  maxResponseChars?: number;
  /** WebSocket ping interval; a socket with no pong by the next ping is cut (default 30 s). It also
   *  checks the session: a socket of a stopped session is closed with 4004. */
  pingIntervalMs?: number;
  /** The event streams' bounds (ring size, sessions, streams per session). */
  events?: SyncEventLogOptions;
}

export const AGENT_SYNC_DEFAULTS = Object.freeze({
  maxQueuedMessages: 100,
  maxFrameBytes: SYNC_MAX_FRAME_BYTES,
  eventsPerSecond: 100,
  eventBurst: 200,
  maxPendingEvents: 500,
  maxAgentMessages: 200,
  maxResponseChars: 4 * 1024 * 1024,
  pingIntervalMs: 30_000,
});

type Limits = typeof AGENT_SYNC_DEFAULTS;

/** Statuses in which a session has no agent to talk to. */
const ENDED_STATUSES = new Set(["stopping", "stopped", "failed"]);
const KNOWN_EVENTS = new Set<string>(AGENT_EVENT_TYPES);

/** A parsed agent event. */
interface InboundEvent {
  sessionId: unknown;
  type: string;
  data: Record<string, unknown>;
}

/** One live sync socket and what it has been sent. */
class SyncLink {
  readonly ws: WebSocket;
  readonly sessionId: string;
  readonly log: Logger;
  /** Interaction ids written to this socket (so a flush does not write them twice). */
  readonly sent = new Set<string>();
  readonly queue: InboundEvent[] = [];
  /** Unknown event types already logged at warn (the rest go to debug). */
  readonly warned = new Set<string>();
  tokens: number;
  refilledAt = Date.now();
  draining = false;
  closed = false;
  alive = true;

  constructor(ws: WebSocket, sessionId: string, log: Logger, burst: number) {
    this.ws = ws;
    this.sessionId = sessionId;
    this.log = log;
    this.tokens = burst;
  }

  /** Resolves once the frame is handed to the socket; rejects when the socket is gone. */
  send(message: ApiMessage): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.closed || this.ws.readyState !== this.ws.OPEN) {
        reject(new Error("sync socket closed"));
        return;
      }
      this.ws.send(JSON.stringify(message), (err) => (err ? reject(err) : resolve()));
    });
  }

  close(code: number, reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.length = 0;
    this.ws.close(code, reason);
  }
}

/** The session view of an interaction, as the API and the event stream show it. */
export function interactionView(i: Interaction): InteractionView {
  return {
    id: i.id,
    session_id: i.sessionId,
    role: i.role,
    content: i.content,
    response: i.response,
    messages: i.messages.map((m) => ({ message_id: m.messageId, role: m.role, content: m.content })),
    state: i.state,
    delivery: i.delivery,
    created_at: i.createdAt.toISOString(),
    updated_at: i.updatedAt.toISOString(),
  };
}

function validate(options: AgentSyncHubOptions): Limits {
  if (!options?.store) throw new InvalidOptionError("store", "is required");
  if (!options.auth) throw new InvalidOptionError("auth", "is required");
  if (!options.logger) throw new InvalidOptionError("logger", "is required");
  const limits = { ...AGENT_SYNC_DEFAULTS };
  for (const name of Object.keys(AGENT_SYNC_DEFAULTS) as (keyof Limits)[]) {
    const value = options[name];
    if (value === undefined) continue;
    if (!Number.isInteger(value) || value < 1)
      throw new InvalidOptionError(name, "must be a positive integer");
    (limits as Record<keyof Limits, number>)[name] = value;
  }
  return limits;
}

export class AgentSyncHub {
  readonly events: SyncEventLog;
  readonly #store: Store;
  readonly #auth: Auth;
  readonly #log: Logger;
  readonly #o: Limits;
  readonly #wss: WebSocketServer;
  readonly #links = new Map<string, SyncLink>();
  /** The last piece of work queued per session; removed when its chain drains. */
  readonly #lanes = new Map<string, Promise<unknown>>();
  readonly #handshakes = new Set<Duplex>();
  readonly #timer: NodeJS.Timeout;
  #closed = false;

  constructor(options: AgentSyncHubOptions) {
    this.#o = validate(options);
    this.#store = options.store;
    this.#auth = options.auth;
    this.#log = options.logger.child({ component: "agent-sync" });
    this.events = new SyncEventLog(options.events);
    this.#wss = new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      maxPayload: this.#o.maxFrameBytes,
    });
    this.#timer = setInterval(() => this.#heartbeat(), this.#o.pingIntervalMs);
    this.#timer.unref();
  }

  /** True when this upgrade request is for the sync socket. */
  matches(req: IncomingMessage): boolean {
    const url = req.url ?? "";
    return url === SYNC_PATH || url.startsWith(`${SYNC_PATH}?`);
  }

  /** True while the session has a live sync socket. */
  isConnected(sessionId: string): boolean {
    return this.#links.has(sessionId);
  }

  /** Handles one `upgrade` event of the HTTP server: answers 4xx before the upgrade, or attaches. */
  async handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    this.#handshakes.add(socket);
    socket.once("close", () => this.#handshakes.delete(socket));
    socket.on("error", () => {});
    let sessionId: string;
    try {
      if (this.#closed) throw new ApiError(503, "RD_ERR_SYNC_SHUTTING_DOWN", "the server is shutting down");
      sessionId = new URL(req.url ?? "/", "http://x").searchParams.get("session_id") ?? "";
      const principal = await this.#auth.authenticate(req.headers);
      if (!principal) throw new ApiError(401, AUTH_ERROR_CODES.required, "missing or invalid API key");
      await this.#authorize(principal, sessionId);
    } catch (err) {
      if (!(err instanceof ApiError)) this.#log.error({ err }, "sync socket handshake failed");
      rejectHandshake(socket, err);
      return;
    }
    if (socket.destroyed) return;
    this.#wss.handleUpgrade(req, socket, head, (ws) => {
      this.#handshakes.delete(socket);
      this.#attach(ws, sessionId);
    });
  }

  /**
   * The session's own `rds-` key, or its owner (or an admin) with a write key. 403 for another
   * session's key, 404 for another user's session (as everywhere in the API).
   */
  async #authorize(principal: Principal, sessionId: string): Promise<void> {
    if (!isSessionId(sessionId))
      throw new ApiError(400, SYNC_ERROR_CODES.invalidSessionId, "session_id must be a session id (ses_…)");
    if (principal.scope === "runner" || principal.scope === "host")
      throw new ApiError(403, AUTH_ERROR_CODES.scope, `a ${principal.scope} key cannot open a sync socket`);
    if (principal.scope === "session" && principal.sessionId !== sessionId) {
      throw new ApiError(
        403,
        SYNC_ERROR_CODES.forbidden,
        "a session key may open only its own session's sync socket",
      );
    }
    const session = await this.#auth.loadOwnedSession(principal, sessionId);
    requireWrite(principal);
    if (ENDED_STATUSES.has(session.status))
      throw new ApiError(409, SYNC_ERROR_CODES.sessionEnded, `session ${sessionId} is ${session.status}`);
  }

  #attach(ws: WebSocket, sessionId: string): void {
    const link = new SyncLink(ws, sessionId, this.#log.child({ session_id: sessionId }), this.#o.eventBurst);
    if (this.#closed) {
      ws.close(SYNC_CLOSE.GOING_AWAY, "server shutting down");
      return;
    }
    const old = this.#links.get(sessionId);
    this.#links.set(sessionId, link);
    old?.close(SYNC_CLOSE.REPLACED, "replaced by a newer sync socket");
    ws.on("message", (data, isBinary) => this.#onFrame(link, data, isBinary));
    ws.on("pong", () => {
      link.alive = true;
    });
    ws.on("error", (err) => link.log.debug({ err: err.message }, "sync socket error"));
    ws.once("close", (code, reason) => {
      link.closed = true;
      link.queue.length = 0;
      if (this.#links.get(sessionId) === link) this.#links.delete(sessionId);
      link.log.info({ code, reason: reason.toString() }, "agent sync socket closed");
    });
    link.log.info({ replaced: old !== undefined }, "agent sync socket open");
    this.#lane(sessionId, () => this.#flush(sessionId)).catch(() => {});
  }

  // ---- inbound events ------------------------------------------------------------------------

  #onFrame(link: SyncLink, data: RawData, isBinary: boolean): void {
    if (link.closed) return;
    const event = isBinary ? null : parseEvent(data);
    if (typeof event === "string" || event === null) {
      const reason = event ?? "binary frames are not accepted";
      link.log.warn({ reason }, "sync socket closed: malformed frame");
      link.close(SYNC_CLOSE.UNSUPPORTED_DATA, reason);
      return;
    }
    if (link.queue.length >= this.#o.maxPendingEvents) {
      link.log.warn({ pending: link.queue.length }, "sync socket closed: too many events in flight");
      link.close(SYNC_CLOSE.POLICY, "rate limited: too many events in flight");
      return;
    }
    link.queue.push(event);
    if (!link.draining) void this.#drain(link);
  }

  /** Processes a socket's events in order, at most eventsPerSecond (token bucket). */
  async #drain(link: SyncLink): Promise<void> {
    link.draining = true;
    try {
      while (link.queue.length > 0 && !link.closed) {
        await this.#takeToken(link);
        const event = link.queue.shift();
        if (!event || link.closed) break;
        // A failure is logged by the lane; the next event still runs.
        await this.#lane(link.sessionId, () => this.#handle(link, event)).catch(() => {});
      }
    } finally {
      link.draining = false;
    }
  }

  async #takeToken(link: SyncLink): Promise<void> {
    const rate = this.#o.eventsPerSecond;
    const now = Date.now();
    link.tokens = Math.min(this.#o.eventBurst, link.tokens + ((now - link.refilledAt) * rate) / 1000);
    link.refilledAt = now;
    if (link.tokens < 1) {
      // Waiting for the bucket's next token is the rate limit itself, not a retry.
      await delay(Math.ceil(((1 - link.tokens) * 1000) / rate));
      link.tokens = Math.min(
        this.#o.eventBurst,
        link.tokens + ((Date.now() - link.refilledAt) * rate) / 1000,
      );
      link.refilledAt = Date.now();
    }
    link.tokens -= 1;
  }

  async #handle(link: SyncLink, event: InboundEvent): Promise<void> {
    if (event.sessionId !== undefined && event.sessionId !== link.sessionId) {
      link.log.warn({ event_session_id: String(event.sessionId) }, "agent event for another session ignored");
      return;
    }
    const explicit = typeof event.data.interaction_id === "string" ? event.data.interaction_id : null;
    if (explicit) await this.#ack(link.sessionId, explicit);
    switch (event.type) {
      case "message_added":
        return this.#messageAdded(link, event.data, explicit);
      case "message_completed":
        return this.#messageCompleted(link, explicit);
      case "agent_ready":
      case "thread_created":
        link.log.info({ event_type: event.type, data: summary(event.data) }, "agent event");
        return;
      case "ping":
        return;
      default:
        this.#unknown(link, event.type);
    }
  }

  #unknown(link: SyncLink, type: string): void {
    const first = !link.warned.has(type) && link.warned.size < 32;
    if (first) link.warned.add(type);
    link.log[first ? "warn" : "debug"]({ event_type: type.slice(0, 64) }, "unknown agent event type ignored");
  }

  /** The turn an event is about: the one it names, else the oldest the agent has been sent. */
  async #turnFor(sessionId: string, explicit: string | null): Promise<Interaction | null> {
    if (!explicit) return this.#store.interactions.currentTurn(sessionId);
    const turn = await this.#store.interactions.get(explicit);
    return turn && turn.sessionId === sessionId ? turn : null;
  }

  async #ack(sessionId: string, interactionId: string): Promise<void> {
    const turn = await this.#store.interactions.get(interactionId);
    if (!turn || turn.sessionId !== sessionId) return;
    const acked = await this.#store.interactions.advanceDelivery(turn.id, "acked");
    if (acked) this.#publish(acked);
  }

  async #messageAdded(link: SyncLink, data: Record<string, unknown>, explicit: string | null): Promise<void> {
    if (typeof data.content !== "string") {
      link.log.warn("message_added without a string content ignored");
      return;
    }
    const role = typeof data.role === "string" ? data.role : "assistant";
    // The agent echoing the user's own message: the turn already holds it.
    if (role === "user") return;
    const turn = await this.#turnFor(link.sessionId, explicit);
    if (turn?.state !== "waiting") {
      link.log.debug({ interaction_id: explicit }, "message_added with no waiting turn ignored");
      return;
    }
    if (!explicit && turn.delivery === "sent") await this.#ack(link.sessionId, turn.id);
    const messageId = typeof data.message_id === "string" && data.message_id ? data.message_id : null;
    const messages = upsertMessage(turn.messages, {
      messageId: messageId ?? "",
      role,
      content: data.content,
    });
    const response = messages.map((m) => m.content).join("\n\n");
    if (messages.length > this.#o.maxAgentMessages || response.length > this.#o.maxResponseChars) {
      link.log.warn({ interaction_id: turn.id }, "agent answer over its bound: update ignored");
      return;
    }
    const updated = await this.#store.interactions.setMessages(turn.id, messages, response);
    if (updated) this.#publish(updated);
  }

  async #messageCompleted(link: SyncLink, explicit: string | null): Promise<void> {
    const turn = await this.#turnFor(link.sessionId, explicit);
    if (!turn) {
      link.log.debug({ interaction_id: explicit }, "message_completed with no waiting turn ignored");
      return;
    }
    const done = await this.#store.interactions.setState(turn.id, "complete", ["waiting"]);
    if (done) this.#publish(done);
  }

  // ---- the user's side -----------------------------------------------------------------------

  /**
   * Stores a user's message as a new turn (delivery `queued`) and resolves; the delivery to a
   * connected agent follows in the session's order, so a slow socket never holds the caller.
   * Throws 429 RD_ERR_SYNC_QUEUE_FULL past maxQueuedMessages unacknowledged.
   */
  send(sessionId: string, content: string): Promise<Interaction> {
    return this.#lane(sessionId, async () => {
      const waiting = await this.#store.interactions.countUndelivered(sessionId);
      if (waiting >= this.#o.maxQueuedMessages) {
        throw new ApiError(
          429,
          SYNC_ERROR_CODES.queueFull,
          `${waiting} messages already wait for the agent (at most ${this.#o.maxQueuedMessages}); try again once it has them`,
        );
      }
      const turn = await this.#store.interactions.create({
        sessionId,
        role: "user",
        content,
        state: "waiting",
        delivery: "queued",
      });
      this.#publish(turn);
      this.#lane(sessionId, () => this.#flush(sessionId)).catch(() => {});
      return turn;
    });
  }

  /** Cancels the turn the agent is on: marks it `cancelled` and tells the agent when connected. */
  cancel(sessionId: string): Promise<{ interaction_id: string | null; sent: boolean }> {
    return this.#lane(sessionId, async () => {
      const turn = await this.#store.interactions.currentTurn(sessionId);
      if (!turn) return { interaction_id: null, sent: false };
      const cancelled = await this.#store.interactions.setState(turn.id, "cancelled", ["waiting"]);
      if (cancelled) this.#publish(cancelled);
      const link = this.#links.get(sessionId);
      const message = { type: API_MESSAGE_TYPES.cancelCurrentTurn, data: { interaction_id: turn.id } };
      const sent = link
        ? await link.send(message).then(
            () => true,
            () => false,
          )
        : false;
      return { interaction_id: turn.id, sent };
    });
  }

  /** Writes every waiting message the live socket has not been sent, oldest first. */
  async #flush(sessionId: string): Promise<void> {
    const link = this.#links.get(sessionId);
    if (!link || link.closed) return;
    for (const turn of await this.#store.interactions.listUndelivered(sessionId)) {
      if (link.sent.has(turn.id)) continue;
      const message = {
        type: API_MESSAGE_TYPES.chatMessage,
        data: { content: turn.content, interaction_id: turn.id },
      };
      try {
        await link.send(message);
      } catch {
        return; // The socket went away: the rest stays queued for the next one.
      }
      link.sent.add(turn.id);
      const sent = await this.#store.interactions.advanceDelivery(turn.id, "sent");
      if (sent) this.#publish(sent);
    }
  }

  #publish(turn: Interaction): void {
    this.events.publish(turn.sessionId, "interaction", interactionView(turn));
  }

  /** Runs `work` after the session's earlier work; its result or error goes to the caller only. */
  #lane<T>(sessionId: string, work: () => Promise<T>): Promise<T> {
    const previous = this.#lanes.get(sessionId) ?? Promise.resolve();
    const result = previous.then(work);
    const settled = result.then(
      () => {},
      (err: unknown) => {
        if (!(err instanceof ApiError))
          this.#log.warn({ session_id: sessionId, err: (err as Error).message }, "agent sync work failed");
      },
    );
    this.#lanes.set(sessionId, settled);
    void settled.then(() => {
      if (this.#lanes.get(sessionId) === settled) this.#lanes.delete(sessionId);
    });
    return result;
  }

  // ---- liveness and shutdown -----------------------------------------------------------------

  #heartbeat(): void {
    for (const link of this.#links.values()) {
      if (!link.alive) {
        link.log.warn("sync socket gave no pong: cut");
        link.closed = true;
        link.ws.terminate();
        continue;
      }
      link.alive = false;
      link.ws.ping();
      void this.#store.sessions.get(link.sessionId).then(
        (s) => {
          if (!s || ENDED_STATUSES.has(s.status)) link.close(SYNC_CLOSE.SESSION_ENDED, "session ended");
        },
        () => {},
      );
    }
  }

  /** Closes every sync socket (1001) and event stream, then waits for work in flight. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    for (const link of this.#links.values()) link.close(SYNC_CLOSE.GOING_AWAY, "server shutting down");
    for (const socket of this.#handshakes) socket.destroy();
    this.events.close();
    await Promise.allSettled([...this.#lanes.values()]);
    for (const client of this.#wss.clients) client.terminate();
    this.#wss.close();
  }
}

/** The event, or a reason why the frame is malformed. */
function parseEvent(frame: RawData): InboundEvent | string {
  const text = Array.isArray(frame)
    ? Buffer.concat(frame).toString("utf8")
    : Buffer.from(frame as ArrayBuffer).toString("utf8");
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return "malformed JSON";
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) return "an event must be a JSON object";
  const v = value as { session_id?: unknown; event_type?: unknown; data?: unknown };
  if (typeof v.event_type !== "string") return "an event needs a string event_type";
  const data =
    v.data && typeof v.data === "object" && !Array.isArray(v.data) ? (v.data as Record<string, unknown>) : {};
  const type = KNOWN_EVENTS.has(v.event_type) ? v.event_type : v.event_type.slice(0, 64);
  return { sessionId: v.session_id, type, data };
}

/** Appends a message, or replaces the content of the one with the same message_id (streaming). */
function upsertMessage(messages: readonly AgentMessage[], next: AgentMessage): AgentMessage[] {
  if (!next.messageId) return [...messages, { ...next, messageId: `m${messages.length + 1}` }];
  const at = messages.findIndex((m) => m.messageId === next.messageId);
  if (at < 0) return [...messages, next];
  return messages.map((m, i) => (i === at ? next : m));
}

/** A short, log-safe view of an event's data. */
function summary(data: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(data).slice(0, 8))
    out[k] = typeof v === "string" ? v.slice(0, 120) : typeof v === "object" ? "[object]" : v;
  return out;
}

const REASONS: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  409: "Conflict",
  503: "Service Unavailable",
};

/** A plain HTTP answer before the upgrade, in the API's error shape. */
function rejectHandshake(socket: Duplex, err: unknown): void {
  const known = err instanceof ApiError;
  const status = known ? err.statusCode : 500;
  const code = known ? err.code : "RD_ERR_INTERNAL";
  const message = known ? err.message : "internal error";
  const body = JSON.stringify({ error: { code, message } });
  const head = [
    `HTTP/1.1 ${status} ${REASONS[status] ?? "Error"}`,
    "Content-Type: application/json",
    `Content-Length: ${Buffer.byteLength(body)}`,
    "Connection: close",
  ];
  if (socket.writable) socket.end(`${head.join("\r\n")}\r\n\r\n${body}`);
  else socket.destroy();
}
