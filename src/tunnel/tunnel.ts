// What the registry holds for one runner: a live tunnel of either protocol. The registry and the
// API see only this shape; v2 (h2-tunnel.ts) and the legacy v1 (legacy-tunnel.ts) implement it.

import type { EventEmitter } from "node:events";
import type { Duplex } from "node:stream";
import type { OpenOptions, TunnelProtocol, TunnelRequest, TunnelResponse, TunnelStats } from "./types.ts";

/** Timings shared by both protocols; every one configurable so tests can make them short. */
export interface TunnelTimings {
  /** How often the API pings each tunnel (HTTP/2 PING + WebSocket ping). Default 15 s. */
  pingIntervalMs: number;
  /**
   * A tunnel with no sign of life for this long is dropped. Default 45 s. On v2 only HTTP/2 frames
   * count (PING answers), never WebSocket pings or pongs; on v1 the agent's JSON control lines.
   */
  deadLinkTimeoutMs: number;
  /** How long close() lets calls in flight finish before cutting the link. Default 10 s. */
  drainTimeoutMs: number;
  /** Default deadline for a call's response headers. Default 30 s. */
  callTimeoutMs: number;
  /**
   * A v2 link whose agent has not sent the HTTP/2 preface (its SETTINGS) within this long is closed.
   * Default 10 s.
   */
  prefaceTimeoutMs: number;
}

export const DEFAULT_TIMINGS: Readonly<TunnelTimings> = Object.freeze({
  pingIntervalMs: 15_000,
  deadLinkTimeoutMs: 45_000,
  drainTimeoutMs: 10_000,
  callTimeoutMs: 30_000,
  prefaceTimeoutMs: 10_000,
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
  /** Drains within `drainMs` (the timings' drainTimeoutMs by default; 0 cuts calls in flight). */
  close(code?: number, reason?: string, drainMs?: number): Promise<void>;
  destroy(err?: Error): void;
}
