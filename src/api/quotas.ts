// Quotas per user, so that one tenant cannot starve the others. Four of them, each with a default
// and a server flag (`revdial server --quota-*`, env REVDIAL_QUOTA_*):
//   - tunnels:  live tunnels registered with the user's keys (user and session keys);
//   - sessions: the user's sessions not yet ended (pending, starting, running, stopping), checked when
//               a session is created and when a spec task starts;
//   - running:  the user's sessions holding a host slot (starting, running), checked when a spec task
//               starts;
//   - calls:    the user's calls into sandboxes in flight at once (screenshot, clipboard, the admin
//               proxy), from the call until its answer is sent.
// Over a quota: 429 with Retry-After and RD_ERR_QUOTA_TUNNELS | SESSIONS | RUNNING | CALLS.
//
// Who is counted: every user key, an admin's included (an admin is a tenant too when it starts
// sessions or calls through the proxy). Host keys and the runner token carry no user, and `wolf-*`
// tunnels are infrastructure: neither is counted. A tunnel counts against the user whose key
// registered it; a reconnect or replacement of the same runner id does not count twice.
//
// Bounds and exactness: the session and running checks read the store, so requests that start at
// the same instant may each pass and overshoot by at most their number; the tunnel and call counts
// are kept here and are exact within this process. A tunnel counts from its admission (so parallel
// handshakes cannot overshoot) until the registry reports it gone, or, if it never went live, for
// `handshakeMs`. Memory: per user, at most `tunnels` runner ids, and one counter while calls are in
// flight.

import type { ServerResponse } from "node:http";
import { InvalidOptionError } from "../common/errors.ts";
import type { SessionStatus, Store } from "../store/index.ts";
import type { Principal, RunnerGrant } from "./auth.ts";
import { ApiError } from "./http-errors.ts";

export interface QuotaLimits {
  /** Live tunnels per user. Default 100. */
  tunnels: number;
  /** Sessions not yet ended per user. Default 200. */
  sessions: number;
  /** Sessions on a host slot per user. Default 20. */
  running: number;
  /** Concurrent calls into sandboxes per user. Default 64. */
  calls: number;
}

export type QuotaName = keyof QuotaLimits;

export const QUOTA_DEFAULTS: Readonly<QuotaLimits> = Object.freeze({
  tunnels: 100,
  sessions: 200,
  running: 20,
  calls: 64,
});

/** Seconds a refused caller is told to wait (Retry-After), per quota. */
export const QUOTA_RETRY_AFTER_SECONDS: Readonly<Record<QuotaName, number>> = Object.freeze({
  tunnels: 30,
  sessions: 30,
  running: 10,
  calls: 1,
});

export const QUOTA_ERROR_CODES: Readonly<Record<QuotaName, string>> = Object.freeze({
  tunnels: "RD_ERR_QUOTA_TUNNELS",
  sessions: "RD_ERR_QUOTA_SESSIONS",
  running: "RD_ERR_QUOTA_RUNNING",
  calls: "RD_ERR_QUOTA_CALLS",
});

const WHAT: Readonly<Record<QuotaName, string>> = Object.freeze({
  tunnels: "live tunnels",
  sessions: "sessions not yet stopped",
  running: "running sessions",
  calls: "calls into sandboxes in flight",
});

/** 429: a quota is used up. `retryAfter` (seconds) becomes the Retry-After header. */
export class QuotaExceededError extends ApiError {
  readonly retryAfter: number;
  readonly quota: QuotaName;

  constructor(quota: QuotaName, limit: number) {
    super(
      429,
      QUOTA_ERROR_CODES[quota],
      `quota exceeded: at most ${limit} ${WHAT[quota]} per user; try again later`,
      { retryAfterSeconds: QUOTA_RETRY_AFTER_SECONDS[quota] },
    );
    this.quota = quota;
    this.retryAfter = QUOTA_RETRY_AFTER_SECONDS[quota];
  }
}

export interface QuotaOptions {
  store: Store;
  limits?: Partial<QuotaLimits>;
  /**
   * How long an admitted tunnel counts before it appears in the registry: its handshake (default
   * 10 000 ms). Past that, an admitted runner id that is not live no longer counts.
   */
  handshakeMs?: number;
  now?: () => number;
}

const OPTION_DEFAULTS = Object.freeze({ handshakeMs: 10_000 });

function noRelease(): void {}

const UNENDED: readonly SessionStatus[] = Object.freeze(["pending", "starting", "running", "stopping"]);
const ON_A_SLOT: readonly SessionStatus[] = Object.freeze(["starting", "running"]);

/** The limits from options, each checked: a positive integer. */
export function quotaLimits(given: Partial<QuotaLimits> = {}): Readonly<QuotaLimits> {
  const limits = { ...QUOTA_DEFAULTS };
  for (const name of Object.keys(QUOTA_DEFAULTS) as QuotaName[]) {
    const value = given[name];
    if (value === undefined) continue;
    if (!Number.isInteger(value) || value < 1) {
      throw new InvalidOptionError(`quotas.${name}`, "must be a positive integer");
    }
    limits[name] = value;
  }
  return Object.freeze(limits);
}

/**
 * Counts and enforces the quotas. One instance per server, passed in the ApiContext. The tunnel
 * and call counts live here (per instance, never module-wide); the session counts come from the
 * store.
 */
export class Quotas {
  readonly limits: Readonly<QuotaLimits>;
  readonly #store: Store;
  readonly #handshakeMs: number;
  readonly #now: () => number;
  /** runner id -> who registered it, when, and whether it went live. */
  readonly #tunnels = new Map<string, { userId: string; admittedAt: number; live: boolean }>();
  /** user -> the runner ids of #tunnels it holds. */
  readonly #tunnelsByUser = new Map<string, Set<string>>();
  /** user -> calls in flight. */
  readonly #calls = new Map<string, number>();

  constructor(options: QuotaOptions) {
    if (!options?.store) throw new InvalidOptionError("store", "is required");
    const handshakeMs = options.handshakeMs ?? OPTION_DEFAULTS.handshakeMs;
    if (!Number.isInteger(handshakeMs) || handshakeMs < 0) {
      throw new InvalidOptionError("handshakeMs", "must be a non-negative integer");
    }
    this.limits = quotaLimits(options.limits);
    this.#store = options.store;
    this.#handshakeMs = handshakeMs;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Admits one tunnel registration (called by the tunnel endpoint's authorize, after the grant).
   * Throws QuotaExceededError when the user already holds `tunnels` other tunnels.
   */
  admitTunnel(principal: Principal, grant: RunnerGrant): void {
    const userId = principal.userId;
    if (!userId || grant.kind === "wolf") return;
    const now = this.#now();
    const held = this.#tunnelsByUser.get(userId) ?? new Set<string>();
    for (const runnerId of held) {
      const entry = this.#tunnels.get(runnerId);
      if (entry && !entry.live && now - entry.admittedAt > this.#handshakeMs) this.#forget(runnerId);
    }
    const others = held.size - (held.has(grant.runnerId) ? 1 : 0);
    if (others >= this.limits.tunnels) throw new QuotaExceededError("tunnels", this.limits.tunnels);
    this.#forget(grant.runnerId);
    this.#tunnels.set(grant.runnerId, { userId, admittedAt: now, live: false });
    held.add(grant.runnerId);
    this.#tunnelsByUser.set(userId, held);
  }

  /** The registry's `connected` event: an admitted tunnel went live. */
  tunnelConnected(runnerId: string): void {
    const entry = this.#tunnels.get(runnerId);
    if (entry) entry.live = true;
  }

  /** The registry's `disconnected` event: the runner's live tunnel is gone; it counts no more. */
  tunnelDisconnected(runnerId: string): void {
    this.#forget(runnerId);
  }

  #forget(runnerId: string): void {
    const entry = this.#tunnels.get(runnerId);
    if (!entry) return;
    this.#tunnels.delete(runnerId);
    const held = this.#tunnelsByUser.get(entry.userId);
    held?.delete(runnerId);
    if (held?.size === 0) this.#tunnelsByUser.delete(entry.userId);
  }

  /** Tunnels counted against a user now (for tests and metrics). */
  tunnelsHeld(userId: string): number {
    return this.#tunnelsByUser.get(userId)?.size ?? 0;
  }

  /** Before a new session: throws when the user has `sessions` sessions not yet ended. */
  async checkSessions(userId: string): Promise<void> {
    const count = await this.#countSessions(userId, UNENDED, this.limits.sessions);
    if (count >= this.limits.sessions) throw new QuotaExceededError("sessions", this.limits.sessions);
  }

  /** Before a start takes a host slot: throws when the user has `running` sessions on a slot. */
  async checkRunning(userId: string): Promise<void> {
    const count = await this.#countSessions(userId, ON_A_SLOT, this.limits.running);
    if (count >= this.limits.running) throw new QuotaExceededError("running", this.limits.running);
  }

  /** Before a spec task starts: a new session (sessions) that takes a host slot (running). */
  async checkStart(userId: string): Promise<void> {
    await this.checkSessions(userId);
    await this.checkRunning(userId);
  }

  /** Counts up to `limit` sessions of the user in `statuses` (it never needs to count further). */
  async #countSessions(userId: string, statuses: readonly SessionStatus[], limit: number): Promise<number> {
    let count = 0;
    for (const status of statuses) {
      if (count >= limit) break;
      count += (await this.#store.sessions.list({ ownerId: userId, status, limit: limit - count })).length;
    }
    return count;
  }

  /**
   * Takes one call slot of the principal's user; returns its release (idempotent). Principals
   * without a user are not counted. When refused, throws QuotaExceededError (its retryAfterSeconds
   * becomes the answer's Retry-After).
   */
  acquireCall(principal: Principal | null): () => void {
    const userId = principal?.userId;
    if (!userId) return noRelease;
    const inFlight = this.#calls.get(userId) ?? 0;
    if (inFlight >= this.limits.calls) throw new QuotaExceededError("calls", this.limits.calls);
    this.#calls.set(userId, inFlight + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.#calls.get(userId) ?? 1) - 1;
      if (left <= 0) this.#calls.delete(userId);
      else this.#calls.set(userId, left);
    };
  }

  /**
   * acquireCall for the life of a response: the slot is released when the answer has been sent or
   * the client went away, whichever comes first.
   */
  holdCallFor(principal: Principal | null, res: ServerResponse): void {
    const release = this.acquireCall(principal);
    res.once("close", release);
    // A client gone before this point emitted its close already.
    if (res.destroyed || res.socket?.destroyed) release();
  }

  /** Calls in flight for a user (for tests and metrics). */
  callsInFlight(userId: string): number {
    return this.#calls.get(userId) ?? 0;
  }
}
