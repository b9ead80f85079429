// Logs refused tunnel handshakes (400/401/403/429/503, and the server's own 500s) once per runner id
// and reason per interval,
// with the count of the ones left out. Without it an agent retrying forever with a revoked key is
// invisible; logging every refusal would let that same agent (or a storm) flood the log.
//
// Bounds: at most maxKeys (runner, reason) pairs are remembered; past it the oldest is forgotten
// (it may then be logged once more than the rate allows).

import { InvalidOptionError } from "../../common/errors.ts";
import type { Logger } from "../../common/logger.ts";

export interface RefusalLogOptions {
  logger: Logger;
  /** One line per (runner, reason) per this long. Default 60 s. */
  intervalMs?: number;
  /** (runner, reason) pairs remembered. Default 10,000. */
  maxKeys?: number;
  now?: () => number;
}

const DEFAULTS = Object.freeze({ intervalMs: 60_000, maxKeys: 10_000 });

export interface Refusal {
  runnerId: string;
  status: number;
  code: string;
  message: string;
  remoteAddress: string;
}

interface Entry {
  loggedAt: number;
  suppressed: number;
}

export class RefusalLog {
  readonly #log: Logger;
  readonly #intervalMs: number;
  readonly #maxKeys: number;
  readonly #now: () => number;
  readonly #entries = new Map<string, Entry>();

  constructor(options: RefusalLogOptions) {
    const intervalMs = options.intervalMs ?? DEFAULTS.intervalMs;
    const maxKeys = options.maxKeys ?? DEFAULTS.maxKeys;
    if (!(intervalMs >= 0)) throw new InvalidOptionError("intervalMs", "must be >= 0");
    if (!Number.isInteger(maxKeys) || maxKeys < 1)
      throw new InvalidOptionError("maxKeys", "must be an integer >= 1");
    this.#log = options.logger;
    this.#intervalMs = intervalMs;
    this.#maxKeys = maxKeys;
    this.#now = options.now ?? Date.now;
  }

  /** Records one refusal; logs it unless the same (runner, reason) was logged within the interval. */
  record(refusal: Refusal): void {
    const key = `${refusal.runnerId}\u0000${refusal.code}`;
    const now = this.#now();
    const entry = this.#entries.get(key);
    if (entry && now - entry.loggedAt < this.#intervalMs) {
      entry.suppressed++;
      return;
    }
    const suppressed = entry?.suppressed ?? 0;
    this.#entries.delete(key);
    if (this.#entries.size >= this.#maxKeys) {
      const oldest = this.#entries.keys().next().value;
      if (oldest !== undefined) this.#entries.delete(oldest);
    }
    this.#entries.set(key, { loggedAt: now, suppressed: 0 });
    this.#log[levelOf(refusal.status)](
      {
        runner_id: refusal.runnerId,
        status: refusal.status,
        code: refusal.code,
        reason: refusal.message,
        remote_address: refusal.remoteAddress,
        suppressed_since_last: suppressed,
      },
      "tunnel handshake refused",
    );
  }
}

/**
 * Credentials and ids the agent got wrong are warnings (someone must act); load shedding (429) and
 * draining (503) are the server doing its job; anything else is the server's own failure.
 */
function levelOf(status: number): "info" | "warn" | "error" {
  if (status === 429 || status === 503) return "info";
  return status < 500 ? "warn" : "error";
}
