// Turns "this session / host / tunnel changed" into events on the bus, in the API's usual shapes
// (the session view, the Wolf instance view, a tunnel's state): the ids reported by the store
// observer and the tunnel registry are coalesced for one turn of the event loop, then each record
// is read once and published once, whoever is watching. With nobody watching (no subscriber), a
// change costs nothing: no read, no event.
//
// A tunnel event also republishes what it changes: `sandbox-{id}` coming or going flips that
// session's sandbox_connected (and its owner sees the tunnel event), `wolf-{id}` that host's
// tunnel_connected. The session's one read serves both.
//
// A record read again unchanged (two writes read once each, after both landed: a change told by
// another replica is read later than here) is not published again: the last view published per
// session and host is kept (as many as maxPending, the oldest forgotten first), and forgotten
// whenever a change of it may have gone unpublished (nobody watching, a change dropped, a failed
// read), so a view is only held back when every subscriber was sent that very view last.
//
// Bounds: at most maxPending ids wait for the next turn (default 10,000; a reconnect storm of
// tunnels is coalesced under it); past it a change is dropped and logged (a client sees it with its
// next event or reload). A failed read is logged at debug.

import { InvalidOptionError } from "../../common/errors.ts";
import type { Logger } from "../../common/logger.ts";
import type { Store } from "../../store/index.ts";
import type { TunnelDialer, TunnelStats } from "../../tunnel/types.ts";
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
  /** Changes waiting for the next turn at most. Default 10,000. */
  maxPending?: number;
}

export const CHANGE_PUBLISHER_DEFAULTS = Object.freeze({ maxPending: 10_000 });

type TunnelState = { state: "up" | "down"; stats?: TunnelStats };

const SANDBOX = "sandbox-";
const WOLF = "wolf-";

export class ChangePublisher implements ChangeSink {
  readonly #o: Required<ChangePublisherOptions>;
  readonly #sessions = new Set<string>();
  readonly #hosts = new Set<string>();
  /** runner id -> its latest state this turn. */
  readonly #tunnels = new Map<string, TunnelState>();
  /** `session:{id}` / `host:{id}` -> the JSON of the view last published. */
  readonly #last = new Map<string, string>();
  #scheduled = false;
  #closed = false;

  constructor(options: ChangePublisherOptions) {
    for (const name of ["bus", "store", "dialer", "logger"] as const) {
      if (!options?.[name]) throw new InvalidOptionError(name, "is required");
    }
    this.#o = { ...CHANGE_PUBLISHER_DEFAULTS, ...options };
    const max = this.#o.maxPending;
    if (!Number.isSafeInteger(max) || max < 1) {
      throw new InvalidOptionError("maxPending", `expected a positive integer, got ${max}`);
    }
  }

  sessionChanged(id: string): void {
    if (this.#admit(this.#sessions.has(id))) this.#sessions.add(id);
  }

  hostChanged(id: string): void {
    if (this.#admit(this.#hosts.has(id))) this.#hosts.add(id);
  }

  /** A tunnel registered (`up`, with its figures then) or went away (`down`). */
  tunnelChanged(runnerId: string, state: "up" | "down", stats?: TunnelStats): void {
    if (!this.#admit(this.#tunnels.has(runnerId))) return;
    this.#tunnels.set(runnerId, { state, stats });
    if (runnerId.startsWith(SANDBOX)) this.#sessions.add(runnerId.slice(SANDBOX.length));
    else if (runnerId.startsWith(WOLF)) this.#hosts.add(runnerId.slice(WOLF.length));
  }

  close(): void {
    this.#closed = true;
    this.#sessions.clear();
    this.#hosts.clear();
    this.#tunnels.clear();
    this.#last.clear();
  }

  /** Whether a change may be queued (and the flush is scheduled); `known`: it is queued already. */
  #admit(known: boolean): boolean {
    if (this.#closed || this.#o.bus.subscribers === 0) {
      this.#last.clear();
      return false;
    }
    const pending = this.#sessions.size + this.#hosts.size + this.#tunnels.size;
    if (!known && pending >= this.#o.maxPending) {
      this.#o.logger.warn({ pending }, "too many changes waiting to be published; one dropped");
      this.#last.clear();
      return false;
    }
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(() => void this.#flush());
    }
    return true;
  }

  async #flush(): Promise<void> {
    this.#scheduled = false;
    const sessions = [...this.#sessions];
    const hosts = new Set(this.#hosts);
    const tunnels = new Map(this.#tunnels);
    this.#sessions.clear();
    this.#hosts.clear();
    this.#tunnels.clear();
    const owners = new Map<string, string>();
    for (const id of sessions) {
      const placed = await this.#publishSession(id, owners);
      if (placed) hosts.add(placed); // the host's load may have changed with it
    }
    for (const [runnerId, t] of tunnels) this.#publishTunnel(runnerId, t, owners);
    for (const id of hosts) await this.#publishHost(id);
  }

  /** Publishes the session's view; returns the host it is placed on, and notes its owner. */
  async #publishSession(id: string, owners: Map<string, string>): Promise<string | null> {
    const { store, dialer, logger } = this.#o;
    try {
      const session = await store.sessions.get(id);
      if (this.#closed) return null;
      if (!session) {
        // Deleted: nobody can be told but admins (the owner is gone with the record).
        this.#publishView("session", id, null, { id, deleted: true });
        return null;
      }
      owners.set(id, session.ownerId);
      const data = sessionView(session, dialer.isConnected(`${SANDBOX}${id}`));
      this.#publishView("session", id, session.ownerId, data);
      return session.wolfInstanceId;
    } catch (err) {
      this.#last.delete(`session:${id}`);
      logger.debug({ err, session_id: id }, "session change not published");
      return null;
    }
  }

  #publishTunnel(runnerId: string, t: TunnelState, owners: Map<string, string>): void {
    if (this.#closed) return;
    const sessionId = runnerId.startsWith(SANDBOX) ? runnerId.slice(SANDBOX.length) : null;
    const owner = sessionId ? (owners.get(sessionId) ?? null) : null;
    const data = sessionId
      ? { runner_id: runnerId, state: t.state, session_id: sessionId, owner, stats: t.stats }
      : { runner_id: runnerId, state: t.state, stats: t.stats };
    this.#o.bus.publish({ type: "tunnel", ownerId: owner, data });
  }

  /** Publishes a record's view unless it is the very view published last for that record. */
  #publishView(type: "session" | "host", id: string, ownerId: string | null, data: unknown): void {
    const key = `${type}:${id}`;
    const json = JSON.stringify(data);
    if (this.#last.get(key) === json) return;
    this.#last.delete(key);
    this.#last.set(key, json);
    if (this.#last.size > this.#o.maxPending) this.#last.delete(this.#last.keys().next().value as string);
    this.#o.bus.publish({ type, ownerId, data });
  }

  async #publishHost(id: string): Promise<void> {
    const { store, dialer, logger } = this.#o;
    try {
      const host = await store.wolfInstances.get(id);
      if (this.#closed) return;
      const data = host ? wolfInstanceView(host, dialer.isConnected(`${WOLF}${id}`)) : { id, deleted: true };
      this.#publishView("host", id, null, data);
    } catch (err) {
      this.#last.delete(`host:${id}`);
      logger.debug({ err, wolf_id: id }, "host change not published");
    }
  }
}
