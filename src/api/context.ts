// What every route plugin receives: the parts of the control plane, passed in (never global).

import type { Logger } from "../common/logger.ts";
import type { Store } from "../store/index.ts";
import type { TunnelDialer } from "../tunnel/types.ts";
import type { Auth } from "./auth.ts";
import type { EventBus } from "./events/event-bus.ts";
import type { Quotas } from "./quotas.ts";
import type { AgentSyncHub } from "./sync-hub.ts";

export interface ApiConfig {
  /** The URL agents and hosts use to reach this API (what a host hands to the sandboxes it starts). */
  publicUrl: string;
  /** Largest request body the API accepts on proxied and upload routes, in bytes. */
  bodyLimit: number;
  /** Deadline for a call through a tunnel (screenshot, clipboard), in ms. */
  callTimeoutMs: number;
  /**
   * Tests only: called after each recorded step of start-planning (src/api/routes/lifecycle.ts);
   * a throw from it stops the start there with no clean-up, as a kill -9 at that point would.
   */
  startPlanningFault?: (step: string) => void;
  /**
   * Largest screenshot a sandbox may answer, in bytes (default 16 MiB): a larger declared answer is
   * a 502 and its stream is reset; an undeclared one is cut off at this size. Also the largest
   * final screenshot stored per session.
   */
  screenshotLimit: number;
  /** Keep-alive and key re-check interval of GET /api/v1/events (default 15 s). */
  eventsHeartbeatMs?: number;
  /** Bytes of stored final screenshots kept per user (default 64 MiB); the oldest go first. */
  storedScreenshotsPerUser: number;
}

export interface ApiContext {
  store: Store;
  auth: Auth;
  /** Per-user limits on tunnels, sessions, host slots and calls in flight (quotas.ts). */
  quotas: Quotas;
  dialer: TunnelDialer;
  logger: Logger;
  config: ApiConfig;
  /** Live changes for GET /api/v1/events (events/event-bus.ts); absent: that route answers 503. */
  events?: EventBus;
  /** The agent sync hub (sync socket, interactions, event streams); made by routes/agent-sync.ts. */
  sync?: AgentSyncHub;
}
