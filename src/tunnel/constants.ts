// Wire constants of the revdial protocols (PROTOCOL.md), in one place.

/** WebSocket subprotocol that selects protocol v2 (HTTP/2 over the WebSocket byte stream). */
export const SUBPROTOCOL_H2 = "revdial.h2";

/**
 * HTTP/1.1 upgrade token of the raw transport: after `101 Switching Protocols` the socket itself
 * carries protocol v2's HTTP/2 (no WebSocket framing). Same endpoint, same authentication.
 */
export const RAW_UPGRADE = "revdial.h2";

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
});

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

/** Headers that describe one hop and never cross the tunnel. */
export const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
  "te",
  "trailer",
  "host",
  "http2-settings",
]);

/** Target name used when a call names none: the sandbox's desktop service. */
export const DEFAULT_TARGET = "desktop";
