// Wire constants of the revdial protocols (PROTOCOL.md), in one place.

/** WebSocket subprotocol that selects protocol v2 (HTTP/2 over the WebSocket byte stream). */
export const SUBPROTOCOL_H2 = "revdial.h2";

/**
 * WebSocket subprotocol that selects protocol v3 (the revdial multiplexer, mux-frames.ts). Agents
 * offer it before SUBPROTOCOL_H2, so a server that knows v3 picks it and an older one v2.
 */
export const SUBPROTOCOL_MUX = "revdial.mux";

/** HTTP/1.1 upgrade token of protocol v3 on the raw transport. */
export const RAW_UPGRADE_MUX = "revdial.mux";

/**
 * HTTP/1.1 upgrade token of the raw transport: after `101 Switching Protocols` the socket itself
 * carries protocol v2's HTTP/2 (no WebSocket framing). Same endpoint, same authentication.
 */
export const RAW_UPGRADE = "revdial.h2";

/**
 * Header on every handshake refusal of the tunnel endpoint (`Revdial-Handshake: refused`), so an
 * agent can tell the server's refusal from an answer made by a proxy that did not pass the upgrade.
 */
export const HANDSHAKE_HEADER = "Revdial-Handshake";

/** The one endpoint for tunnels, both protocols. */
export const TUNNEL_PATH = "/api/v1/revdial";

/** Runner ids: what a tunnel registers as (`sandbox-{sessionID}`, `wolf-{id}`, ...). */
export const RUNNER_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** WebSocket close codes revdial sends (4000-4999 is the private range). */
export const CLOSE = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  UNSUPPORTED_DATA: 1003,
  /** The runner id was registered again by a newer agent; this one must stop, not reconnect. */
  REPLACED: 4001,
  /** No frame arrived within the dead-link timeout. */
  DEAD_LINK: 4002,
  /** The server is shutting down; reconnect (to another replica) with backoff. */
  SHUTDOWN: 4003,
  /**
   * The server evicted this runner (its session stopped, its keys revoked). The agent waits the hint
   * carried in the reason (`retry-after=SECONDS`, EVICTED_RETRY_AFTER_S by default) before dialing
   * again, where it will most likely be refused: it must not spin.
   */
  EVICTED: 4004,
});

/** How long an evicted agent waits before dialing again, unless the server says otherwise. */
export const EVICTED_RETRY_AFTER_S = 60;

/** Flow-control windows (PROTOCOL.md: at least 4 MiB per stream, 32 MiB per connection). */
export const STREAM_WINDOW = 4 * 1024 * 1024;
export const CONNECTION_WINDOW = 32 * 1024 * 1024;

/**
 * How long a WebSocket close handshake may take before the socket is cut (the peer never answered
 * our close frame). Bounds what a silent or hostile peer holds after its tunnel ended.
 */
export const WS_CLOSE_TIMEOUT_MS = 5000;

/** HTTP/2 frame size: small enough that a PING or a small request never waits behind a large body. */
export const MAX_FRAME_SIZE = 16 * 1024;

/**
 * Headers that describe one hop and never cross the tunnel (RFC 9110 §7.6.1, plus the proxy
 * credentials meant for a proxy on the caller's side). Headers named in `Connection` are dropped
 * too (headers.ts). `host` and `http2-settings` are set by each hop itself.
 */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
  "te",
  "trailer",
  "proxy-authorization",
  "proxy-authenticate",
  "host",
  "http2-settings",
]);

/**
 * A request whose body is a stream carries this header (value `trailer`) and ends its body with a
 * trailer of the same name (value `complete`). The agent ends the request towards the target only
 * when that trailer came: a stream that is reset mid-body reaches Node's HTTP/2 server as a plain
 * end of data, and without the trailer the target would see a cut-off upload as complete.
 */
export const BODY_END_HEADER = "revdial-body-end";

/** Target name used when a call names none: the sandbox's desktop service. */
export const DEFAULT_TARGET = "desktop";
