// Admission of new tunnel handshakes: a token bucket (rate per second, burst), so that a restart
// storm (thousands of agents redialing at once) is answered with cheap 429s and a Retry-After instead
// of thousands of concurrent authentications and HTTP/2 sessions that starve the process.
//
// Contract: admit() never blocks and never throws. When it refuses it says how long to wait, spread
// at random over the time the bucket needs to refill, so refused agents do not all return together.

import { InvalidOptionError } from "../../common/errors.ts";

export interface AdmissionLimiterOptions {
  /** Handshakes admitted per second, sustained. Default 1000. */
  ratePerSecond?: number;
  /** Handshakes admitted at once after a quiet period. Default 2 × the rate. */
  burst?: number;
  now?: () => number;
  random?: () => number;
}

const DEFAULTS = Object.freeze({ ratePerSecond: 1000 });

export type Admission = { admitted: true } | { admitted: false; retryAfterS: number };

export class AdmissionLimiter {
  readonly #rate: number;
  readonly #burst: number;
  readonly #now: () => number;
  readonly #random: () => number;
  #tokens: number;
  #at: number;

  constructor(options: AdmissionLimiterOptions = {}) {
    const rate = options.ratePerSecond ?? DEFAULTS.ratePerSecond;
    if (!(rate > 0) || !Number.isFinite(rate)) throw new InvalidOptionError("ratePerSecond", "must be > 0");
    const burst = options.burst ?? Math.max(1, Math.ceil(rate * 2));
    if (!Number.isInteger(burst) || burst < 1)
      throw new InvalidOptionError("burst", "must be an integer >= 1");
    this.#rate = rate;
    this.#burst = burst;
    this.#now = options.now ?? Date.now;
    this.#random = options.random ?? Math.random;
    this.#tokens = burst;
    this.#at = this.#now();
  }

  admit(): Admission {
    const now = this.#now();
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#at) / 1000) * this.#rate);
    this.#at = now;
    if (this.#tokens >= 1) {
      this.#tokens -= 1;
      return { admitted: true };
    }
    const refill = this.#burst / this.#rate;
    const wait = (1 - this.#tokens) / this.#rate + this.#random() * refill;
    return { admitted: false, retryAfterS: Math.max(1, Math.ceil(wait)) };
  }
}
