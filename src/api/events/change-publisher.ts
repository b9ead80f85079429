// Turns "this session / host / tunnel changed" into events on the bus, in the API's usual shapes
// (the session view, the Wolf instance view, a tunnel's state): the ids reported by the store
// observer and the tunnel registry are coalesced for one turn of the event loop, then each record
// is read once and published once, whoever is watching.
//
// A tunnel event also republishes what it changes: `sandbox-{id}` coming or going flips that
// session's sandbox_connected, `wolf-{id}` that host's tunnel_connected.
//
// Bounds: at most maxPending ids wait for the next turn (default 10,000); past it an id is dropped
// and logged (a client sees the change with its next event or reload). A failed read is logged.

import type { Logger } from "../../common/logger.ts";
import type { Store } from "../../store/index.ts";
import type { TunnelDialer } from "../../tunnel/types.ts";
import { sessionView } from "../routes/route-views.ts";
import { wolfInstanceView } from "../routes/wolf-instances.ts";
import type { EventBus } from "./event-bus.ts";
import type { ChangeSink } from "./store-observer.ts";

export interface ChangePublisherOptions {
  bus: EventBus;
  /** The store read from (the plain one: reads need no observing). */
  store: Store;
  dialer: TunnelDialer;
  logger: Logger;
  /** Ids waiting for the next turn at most. Default 10,000. */
  maxPending?: number;
}

const SANDBOX = "sandbox-";
const WOLF = "wolf-";

export class ChangePublisher implements ChangeSink {
  readonly #o: Required<ChangePublisherOptions>;
  readonly #sessions = new Set<string>();
  readonly #hosts = new Set<string>();
  #scheduled = false;
  #closed = false;

  constructor(options: ChangePublisherOptions) {
    this.#o = { maxPending: 10_000, ...options };
  }

  sessionChanged(id: string): void {
    this.#add(this.#sessions, id);
  }

  hostChanged(id: string): void {
    this.#add(this.#hosts, id);
  }

  /** A tunnel registered (`up`) or went away (`down`). */
  tunnelChanged(runnerId: string, state: "up" | "down"): void {
    if (this.#closed) return;
    const stats = state === "up" ? this.#o.dialer.list().find((s) => s.runner_id === runnerId) : undefined;
    const sessionId = runnerId.startsWith(SANDBOX) ? runnerId.slice(SANDBOX.length) : null;
    if (!sessionId) {
      this.#o.bus.publish({ type: "tunnel", ownerId: null, data: { runner_id: runnerId, state, stats } });
      if (runnerId.startsWith(WOLF)) this.hostChanged(runnerId.slice(WOLF.length));
      return;
    }
    // The owner sees their sandbox's tunnel: look it up first.
    this.#o.store.sessions.get(sessionId).then(
      (session) => {
        this.#o.bus.publish({
          type: "tunnel",
          ownerId: session?.ownerId ?? null,
          data: { runner_id: runnerId, state, session_id: sessionId, owner: session?.ownerId ?? null, stats },
        });
        if (session) this.sessionChanged(sessionId);
      },
      (err: unknown) => this.#o.logger.debug({ err, runner_id: runnerId }, "tunnel event: session not read"),
    );
  }

  close(): void {
    this.#closed = true;
    this.#sessions.clear();
    this.#hosts.clear();
  }

  #add(set: Set<string>, id: string): void {
    if (this.#closed) return;
    if (this.#sessions.size + this.#hosts.size >= this.#o.maxPending && !set.has(id)) {
      this.#o.logger.warn({ id }, "too many changes waiting to be published; one dropped");
      return;
    }
    set.add(id);
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(() => void this.#flush());
    }
  }

  async #flush(): Promise<void> {
    this.#scheduled = false;
    const sessions = [...this.#sessions];
    const hosts = new Set(this.#hosts);
    this.#sessions.clear();
    this.#hosts.clear();
    for (const id of sessions) {
      const host = await this.#publishSession(id);
      if (host) hosts.add(host); // the host's load may have changed with it
    }
    for (const id of hosts) await this.#publishHost(id);
  }

  async #publishSession(id: string): Promise<string | null> {
    const { store, dialer, bus, logger } = this.#o;
    try {
      const session = await store.sessions.get(id);
      if (this.#closed) return null;
      if (!session) {
        // Deleted: nobody can be told but admins (the owner is gone with the record).
        bus.publish({ type: "session", ownerId: null, data: { id, deleted: true } });
        return null;
      }
      const data = sessionView(session, dialer.isConnected(`${SANDBOX}${id}`));
      bus.publish({ type: "session", ownerId: session.ownerId, data });
      return session.wolfInstanceId;
    } catch (err) {
      logger.debug({ err, session_id: id }, "session change not published");
      return null;
    }
  }

  async #publishHost(id: string): Promise<void> {
    const { store, dialer, bus, logger } = this.#o;
    try {
      const host = await store.wolfInstances.get(id);
      if (this.#closed) return;
      const data = host ? wolfInstanceView(host, dialer.isConnected(`${WOLF}${id}`)) : { id, deleted: true };
      bus.publish({ type: "host", ownerId: null, data });
    } catch (err) {
      logger.debug({ err, wolf_id: id }, "host change not published");
    }
  }
}
