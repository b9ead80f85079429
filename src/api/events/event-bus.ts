// The in-process bus of live changes the dashboard's event stream (GET /api/v1/events) carries:
// session status, host records and load, tunnels up and down. Publishers say what changed and who
// may see it; subscribers (one per open stream) get every event and pick what their key may see
// with canSee().
//
// Why a bus: the places that change state (the store's writes, the tunnel registry) should not know
// who is watching. They publish here through the store observer (store-observer.ts) and the
// registry's events; with several replicas, the ids other replicas' writes touched arrive over
// Postgres NOTIFY and their tunnels through the cluster's directory (cluster-events.ts), and go the
// same way: nothing downstream knows which replica a change came from.
//
// Contract: publish() never throws and never waits: a listener that throws is logged and kept. The
// number of subscribers is bounded (maxSubscribers, default 1000); subscribe() past it returns null.
// A subscriber's own buffering is its business (routes/events.ts bounds it per client).

import { InvalidOptionError } from "../../common/errors.ts";
import type { Logger } from "../../common/logger.ts";

export type BusEventType = "session" | "host" | "tunnel";

export interface BusEvent {
  type: BusEventType;
  /** The user whose resource this is (they and admins see it); null: admins only. */
  ownerId: string | null;
  /** The JSON body sent to clients, in the API's usual shape for that resource. */
  data: unknown;
}

export type BusListener = (event: BusEvent) => void;

export interface EventBusOptions {
  logger: Logger;
  /** Subscribers at most (open event streams). Default 1000. */
  maxSubscribers?: number;
}

export const EVENT_BUS_DEFAULTS = Object.freeze({ maxSubscribers: 1000 });

/** Who may see an event: admins all of them, a user only their own resources. */
export function canSee(viewer: { userId: string | null; admin: boolean }, event: BusEvent): boolean {
  if (viewer.admin) return true;
  return event.ownerId !== null && event.ownerId === viewer.userId;
}

export class EventBus {
  readonly #listeners = new Set<BusListener>();
  readonly #logger: Logger;
  readonly #maxSubscribers: number;

  constructor(options: EventBusOptions) {
    if (!options?.logger) throw new InvalidOptionError("logger", "is required");
    const max = options.maxSubscribers ?? EVENT_BUS_DEFAULTS.maxSubscribers;
    if (!Number.isSafeInteger(max) || max < 1) {
      throw new InvalidOptionError("maxSubscribers", `expected a positive integer, got ${max}`);
    }
    this.#logger = options.logger;
    this.#maxSubscribers = max;
  }

  get subscribers(): number {
    return this.#listeners.size;
  }

  /** Delivers `event` to every subscriber, synchronously. Never throws. */
  publish(event: BusEvent): void {
    for (const listener of this.#listeners) {
      try {
        listener(event);
      } catch (err) {
        this.#logger.warn({ err, event_type: event.type }, "event listener failed");
      }
    }
  }

  /** Adds a listener; returns its unsubscribe function (idempotent), or null when full. */
  subscribe(listener: BusListener): (() => void) | null {
    if (this.#listeners.size >= this.#maxSubscribers) return null;
    const own = (event: BusEvent) => listener(event);
    this.#listeners.add(own);
    return () => {
      this.#listeners.delete(own);
    };
  }
}
