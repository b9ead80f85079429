// The contract between the tunnel registry and its callers (the API's handlers). Handlers never know
// where a sandbox runs or which protocol its agent speaks: they call request() or open() on a
// runner id and get a response or a duplex back, or a TunnelError with a stable code.

import type { Duplex, Readable } from "node:stream";

/** v1: the seed's Go protocol; h2: v2, HTTP/2 over the link; mux: v3, the revdial multiplexer. */
export type TunnelProtocol = "h2" | "v1" | "mux";

/** An HTTP request to send through a tunnel. */
export interface TunnelRequest {
  method: string;
  /** Path and query, e.g. `/screenshot?format=png`. */
  path: string;
  headers?: Record<string, string | string[] | undefined>;
  /** The request body: a buffer, a string, or a stream piped through as it arrives. */
  body?: Buffer | string | Readable | null;
  /** Target name in the agent's target map (`desktop` by default). */
  target?: string;
  /** Deadline for the response headers, in ms (the registry's default otherwise). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** The response: status and headers at once, the body streamed. */
export interface TunnelResponse {
  status: number;
  headers: Record<string, string | string[]>;
  body: Readable;
  /**
   * The whole body, when it had all arrived with the head (small answers on v3): a reader may take it
   * instead of reading `body`, and then no body stream is made at all.
   */
  whole?: Buffer;
}

/** One live tunnel's figures, as `GET /api/v1/revdial/connections` shows them. */
export interface TunnelStats {
  runner_id: string;
  protocol: TunnelProtocol;
  /** What carries the bytes: WebSocket messages, or the raw upgraded socket. */
  transport: "ws" | "raw";
  connected_at: string;
  remote_address: string;
  rtt_ms: number | null;
  active_streams: number;
  bytes_in: number;
  bytes_out: number;
}

export interface OpenOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** What the registry offers its callers. */
export interface TunnelDialer {
  /** Sends an HTTP request to the runner's agent; rejects with a TunnelError. */
  request(runnerId: string, req: TunnelRequest): Promise<TunnelResponse>;
  /** Opens a raw byte stream to a target inside the runner (HTTP/2 CONNECT). */
  open(runnerId: string, target: string, options?: OpenOptions): Promise<Duplex>;
  /** True when a live tunnel is registered for the runner id right now. */
  isConnected(runnerId: string): boolean;
  /** Figures for every live tunnel. */
  list(): TunnelStats[];
  /** A cluster's dialer: the runner ids live anywhere in the cluster (from its directory). */
  liveRunnerIds?(): string[];
  /** A cluster's dialer: every live tunnel of the cluster, each with the replica holding it. */
  listAll?(): Promise<(TunnelStats & { replica: string })[]>;
  /**
   * Closes the runner's live tunnel at once and fails calls waiting for it (RD_ERR_TUNNEL_EVICTED);
   * for a session that was stopped or whose keys were revoked. Never throws.
   */
  evict(runnerId: string, reason: string): boolean;
  /**
   * A cluster's dialer: evict(), resolved once the tunnel is closed wherever it is held (bounded:
   * false when its replica did not answer in time). Never rejects.
   */
  evictEverywhere?(runnerId: string, reason: string): Promise<boolean>;
  /**
   * Evicts every tunnel that registered with the credential `owner` (a revoked key), wherever it
   * is held: resolves with how many were cut (bounded: a replica that does not answer in time is
   * logged and not counted). Never rejects.
   */
  evictOwnedBy?(owner: string, reason: string): Promise<number>;
}

/** Events the registry emits, for the API to follow sandboxes and hosts coming and going. */
export interface TunnelEvents {
  /** A tunnel became the live one for its runner id (first time, reconnect, or replacement). */
  connected: [runnerId: string, stats: TunnelStats];
  /** The live tunnel for a runner id went away (not emitted for a replaced tunnel). */
  disconnected: [runnerId: string, reason: string];
  /**
   * A runner's grace period ended without it coming back (it expired, or the runner was evicted
   * while away): calls for it fail at once from now on. Not emitted when the registry closes.
   */
  "grace-ended": [runnerId: string];
}
