// Wire constants of the agent sync channel (docs/agent-sync.md), in one place: the WebSocket between
// the agent program in a sandbox (through `revdial agent --agent-command`) and the API, which carries
// the conversation beside the tunnel, not through it. Both ends import this file: the API's hub
// (src/api/sync-hub.ts) and the sandbox's bridge (src/agent/sync-bridge.ts).

/** The sync WebSocket: `GET SYNC_PATH?session_id=ID` with the session's `rds-` key (or its owner's). */
export const SYNC_PATH = "/api/v1/external-agents/sync";

/** Agent -> API: `{session_id, event_type, data, timestamp}`. Any other type is ignored and logged. */
export const AGENT_EVENT_TYPES = Object.freeze([
  "agent_ready",
  "thread_created",
  "message_added",
  "message_completed",
  "ping",
] as const);
export type AgentEventType = (typeof AGENT_EVENT_TYPES)[number];

/** API -> agent: `{type, data}`. */
export const API_MESSAGE_TYPES = Object.freeze({
  /** data: {content, interaction_id} */
  chatMessage: "chat_message",
  /** data: {interaction_id} of the turn being cancelled, or null */
  cancelCurrentTurn: "cancel_current_turn",
} as const);

/** One agent event as it travels on the socket. */
export interface AgentEvent {
  session_id: string;
  event_type: string;
  data: Record<string, unknown>;
  timestamp: string;
}

/** One API message as it travels on the socket. */
export interface ApiMessage {
  type: string;
  data: Record<string, unknown>;
}

/** Close codes the API sends on a sync socket. */
export const SYNC_CLOSE = Object.freeze({
  /** The server is shutting down: reconnect with backoff. */
  GOING_AWAY: 1001,
  /** A frame that is not a JSON object (or a binary frame). */
  UNSUPPORTED_DATA: 1003,
  /** Too many events in flight: the agent floods. */
  POLICY: 1008,
  /** A frame over the size limit (sent by ws itself). */
  TOO_BIG: 1009,
  /** A newer sync socket for the same session took over; this one must not reconnect. */
  REPLACED: 4001,
  /** The session stopped (or its key was revoked). */
  SESSION_ENDED: 4004,
});

/** Largest frame either side accepts: 1 MiB (ws answers a bigger one with close 1009). */
export const SYNC_MAX_FRAME_BYTES = 1024 * 1024;
