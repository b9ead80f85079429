// The sandbox's end of the agent sync channel (docs/agent-sync.md): `revdial agent --agent-command
// CMD` runs CMD (agent-program.ts) and bridges it to the session's sync WebSocket on the API
// (`/api/v1/external-agents/sync?session_id=ID`), beside the tunnel, with the same token (taken from
// the agent's options, i.e. env REVDIAL_TOKEN: never from a command line).
//
// - Each message from the API is written to the program's stdin as one JSON line, exactly as
//   received. A chat_message whose interaction_id the program has already been given is dropped:
//   the API sends a message again to a new socket until the agent has answered about it, so a
//   socket that drops never loses a message, and this keeps the program from seeing it twice. The
//   last rememberInteractions ids (default 1000) are remembered.
// - Each JSON line the program prints, `{"event_type", "data"}`, is sent as an event with
//   `session_id` and `timestamp` added. A line that is not such an object is logged and skipped.
//   Events printed while the socket is down wait (at most maxPendingEvents, default 1000, the
//   oldest dropped) and go out in order once it is back.
// - The socket reconnects with backoff and jitter (src/common/backoff.ts), except after close code
//   4001: a newer socket took the session, and fighting it would flap both.

import { once } from "node:events";
import type { SecureContextOptions } from "node:tls";
import WebSocket from "ws";
import { SYNC_CLOSE, SYNC_MAX_FRAME_BYTES, SYNC_PATH } from "../common/agent-sync-wire.ts";
import { Backoff, waitOrAbort } from "../common/backoff.ts";
import { InvalidOptionError } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";
import { positiveIntegerOptions } from "../common/options.ts";
import { AgentProgram, type AgentProgramOptions } from "./agent-program.ts";
import { webSocketBase } from "./tunnel-client.ts";

export interface SyncBridgeOptions {
  /** API base URL (http, https, ws or wss). */
  serverUrl: string;
  sessionId: string;
  /** The session's `rds-` key. */
  token: string;
  /** The agent program, run as `sh -c COMMAND`. */
  command: string;
  logger: Logger;
  tls?: SecureContextOptions & { rejectUnauthorized?: boolean };
  backoffBaseMs?: number;
  backoffCapMs?: number;
  /** Handshake deadline (default 15 s). */
  handshakeTimeoutMs?: number;
  maxPendingEvents?: number;
  rememberInteractions?: number;
  /** Options of the program's supervisor (restart backoff, line bounds, environment). */
  program?: Partial<Omit<AgentProgramOptions, "command" | "logger" | "onLine">>;
}

export const SYNC_BRIDGE_DEFAULTS = Object.freeze({
  backoffBaseMs: 500,
  backoffCapMs: 30_000,
  handshakeTimeoutMs: 15_000,
  maxPendingEvents: 1000,
  rememberInteractions: 1000,
});

type Limits = typeof SYNC_BRIDGE_DEFAULTS;

/** The sync socket's URL for a server URL as users give it. */
export function syncUrl(serverUrl: string, sessionId: string): URL {
  const url = webSocketBase(serverUrl);
  // A server URL given as the tunnel's (…/api/v1/revdial) still names the same API.
  url.pathname = url.pathname.replace(/\/+$/, "").replace(/\/api\/v1\/revdial$/, "") + SYNC_PATH;
  url.searchParams.set("session_id", sessionId);
  return url;
}

export class SyncBridge {
  readonly program: AgentProgram;
  readonly #o: Limits;
  readonly #url: URL;
  readonly #token: string;
  readonly #sessionId: string;
  readonly #tls: SyncBridgeOptions["tls"];
  readonly #log: Logger;
  readonly #backoff: Backoff;
  readonly #pending: string[] = [];
  /** Interaction ids handed to the program, oldest first (a Set keeps insertion order). */
  readonly #given = new Set<string>();
  readonly #stop = new AbortController();
  #ws: WebSocket | null = null;
  #running: Promise<void> | null = null;
  /** Sockets opened so far (for logs and tests). */
  connections = 0;

  constructor(options: SyncBridgeOptions) {
    if (!options?.logger) throw new InvalidOptionError("logger", "is required");
    if (!options.sessionId) throw new InvalidOptionError("sessionId", "is required");
    if (!options.token) throw new InvalidOptionError("token", "is required");
    const o: Limits = positiveIntegerOptions(SYNC_BRIDGE_DEFAULTS, options);
    this.#o = o;
    this.#url = syncUrl(options.serverUrl, options.sessionId);
    this.#token = options.token;
    this.#sessionId = options.sessionId;
    this.#tls = options.tls;
    this.#log = options.logger.child({ session_id: options.sessionId, component: "sync-bridge" });
    this.#backoff = new Backoff({ baseMs: o.backoffBaseMs, capMs: o.backoffCapMs });
    this.program = new AgentProgram({
      maxLineBytes: SYNC_MAX_FRAME_BYTES,
      ...options.program,
      command: options.command,
      logger: this.#log,
      onLine: (line) => this.#fromProgram(line),
    });
  }

  /** Starts the program and the socket loop; resolves when close() is called or the socket was replaced. */
  start(): Promise<void> {
    this.#running ??= (async () => {
      this.program.start();
      await this.#loop();
    })();
    return this.#running;
  }

  async #loop(): Promise<void> {
    const signal = this.#stop.signal;
    while (!signal.aborted) {
      let code = 0;
      try {
        code = await this.#connectOnce();
      } catch (err) {
        this.#log.warn({ err: (err as Error).message }, "sync socket could not connect");
      }
      if (code === SYNC_CLOSE.REPLACED) {
        this.#log.warn("a newer sync socket took this session: not reconnecting");
        return;
      }
      if (signal.aborted) return;
      const wait = this.#backoff.next();
      this.#log.info({ retry_in_ms: wait }, "sync socket down: reconnecting");
      await waitOrAbort(wait, signal);
    }
  }

  /** One socket's life: resolves with its close code. */
  async #connectOnce(): Promise<number> {
    const ws = new WebSocket(this.#url, {
      headers: { authorization: `Bearer ${this.#token}` },
      handshakeTimeout: this.#o.handshakeTimeoutMs,
      maxPayload: SYNC_MAX_FRAME_BYTES,
      perMessageDeflate: false,
      ...(this.#tls ?? {}),
    });
    const onAbort = () => ws.terminate();
    this.#stop.signal.addEventListener("abort", onAbort, { once: true });
    try {
      const closed = once(ws, "close") as Promise<[number, Buffer]>;
      ws.on("error", (err) => this.#log.debug({ err: err.message }, "sync socket error"));
      ws.once("unexpected-response", (_req, res) => {
        this.#log.warn({ status: res.statusCode }, "sync socket refused");
        res.resume();
        ws.terminate();
      });
      ws.once("open", () => this.#opened(ws));
      ws.on("message", (data, isBinary) => {
        if (!isBinary) this.#fromApi(data.toString("utf8"));
      });
      const [code, reason] = await closed;
      if (this.#ws === ws) this.#ws = null;
      this.#log.info({ code, reason: reason.toString() }, "sync socket closed");
      return code;
    } finally {
      this.#stop.signal.removeEventListener("abort", onAbort);
    }
  }

  #opened(ws: WebSocket): void {
    this.#ws = ws;
    this.connections++;
    this.#backoff.reset();
    this.#log.info({ connections: this.connections }, "sync socket open");
    for (const text of this.#pending.splice(0)) ws.send(text);
  }

  #fromApi(text: string): void {
    const id = chatInteractionId(text);
    if (id !== null) {
      if (this.#given.has(id)) {
        this.#log.debug({ interaction_id: id }, "message already given to the program: dropped");
        return;
      }
      this.#given.add(id);
      if (this.#given.size > this.#o.rememberInteractions) {
        const oldest = this.#given.values().next().value as string;
        this.#given.delete(oldest);
      }
    }
    this.program.write(text);
  }

  #fromProgram(line: string): void {
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch {
      this.#log.warn({ line: line.slice(0, 200) }, "agent program printed a line that is not JSON: skipped");
      return;
    }
    const p = parsed as { event_type?: unknown; data?: unknown } | null;
    if (!p || typeof p !== "object" || typeof p.event_type !== "string") {
      this.#log.warn(
        { line: line.slice(0, 200) },
        "agent program printed a line without event_type: skipped",
      );
      return;
    }
    const event = {
      session_id: this.#sessionId,
      event_type: p.event_type,
      data: p.data && typeof p.data === "object" ? p.data : {},
      timestamp: new Date().toISOString(),
    };
    this.#sendEvent(JSON.stringify(event));
  }

  #sendEvent(text: string): void {
    const ws = this.#ws;
    if (ws && ws.readyState === ws.OPEN) {
      ws.send(text);
      return;
    }
    this.#pending.push(text);
    if (this.#pending.length > this.#o.maxPendingEvents) {
      this.#pending.shift();
      this.#log.warn({ max: this.#o.maxPendingEvents }, "sync socket down: oldest waiting event dropped");
    }
  }

  /** Closes the socket and stops the program. Idempotent. */
  async close(): Promise<void> {
    this.#stop.abort();
    this.#ws?.close(1000, "agent stopping");
    await Promise.allSettled([this.#running, this.program.close()]);
  }
}

/** The interaction_id of a chat_message, or null for anything else. */
function chatInteractionId(text: string): string | null {
  try {
    const m = JSON.parse(text) as { type?: unknown; data?: { interaction_id?: unknown } };
    return m?.type === "chat_message" && typeof m.data?.interaction_id === "string"
      ? m.data.interaction_id
      : null;
  } catch {
    return null;
  }
}
