// What the registry holds for one runner: a live tunnel of either protocol. The registry and the
// API see only this shape; v2 (h2-tunnel.ts) and the legacy v1 (legacy-tunnel.ts) implement it.

import type { EventEmitter } from "node:events";
import type { Duplex } from "node:stream";
import type { OpenOptions, TunnelProtocol, TunnelRequest, TunnelResponse, TunnelStats } from "./types.ts";

/** Timings shared by both protocols; every one configurable so tests can make them short. */
export interface TunnelTimings {
  /** How often the API pings each tunnel (HTTP/2 PING + WebSocket ping). Default 15 s. */
  pingIntervalMs: number;
  /** A tunnel with no frame from the agent for this long is dropped. Default 45 s. */
  deadLinkTimeoutMs: number;
  /** How long close() lets calls in flight finish before cutting the link. Default 10 s. */
  drainTimeoutMs: number;
  /** Default deadline for a call's response headers. Default 30 s. */
  callTimeoutMs: number;
}

export const DEFAULT_TIMINGS: Readonly<TunnelTimings> = Object.freeze({
  pingIntervalMs: 15_000,
  deadLinkTimeoutMs: 45_000,
  drainTimeoutMs: 10_000,
  callTimeoutMs: 30_000,
});

/**
 * One live tunnel. Emits `close` (reason: string) exactly once, whichever end closed it.
 * close(code, reason) drains calls in flight (bounded); destroy() cuts; both idempotent.
 */
export interface Tunnel extends EventEmitter {
  readonly runnerId: string;
  readonly protocol: TunnelProtocol;
  readonly closed: boolean;
  request(req: TunnelRequest): Promise<TunnelResponse>;
  open(target: string, options?: OpenOptions): Promise<Duplex>;
  stats(): TunnelStats;
  close(code?: number, reason?: string): Promise<void>;
  destroy(err?: Error): void;
}
