// What every route plugin receives: the parts of the control plane, passed in (never global).

import type { Logger } from "../common/logger.ts";
import type { Store } from "../store/index.ts";
import type { TunnelDialer } from "../tunnel/types.ts";
import type { Auth } from "./auth.ts";
import type { AgentSyncHub } from "./sync-hub.ts";

export interface ApiConfig {
  /** The URL agents and hosts use to reach this API (what a host hands to the sandboxes it starts). */
  publicUrl: string;
  /** Largest request body the API accepts on proxied and upload routes, in bytes. */
  bodyLimit: number;
  /** Deadline for a call through a tunnel (screenshot, clipboard), in ms. */
  callTimeoutMs: number;
}

export interface ApiContext {
  store: Store;
  auth: Auth;
  dialer: TunnelDialer;
  logger: Logger;
  config: ApiConfig;
  /** The agent sync hub (sync socket, interactions, event streams); made by routes/agent-sync.ts. */
  sync?: AgentSyncHub;
}
