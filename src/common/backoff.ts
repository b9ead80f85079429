// Reconnect delays: exponential backoff with full jitter (delay drawn from [0, min(cap, base*2^n)]),
// so a thousand agents cut off at once do not return in lockstep. A server's Retry-After is a floor.

export interface BackoffOptions {
  /** First ceiling. Default 500 ms. */
  baseMs?: number;
  /** Largest ceiling. Default 30 s. */
  capMs?: number;
  random?: () => number;
}

export class Backoff {
  readonly #base: number;
  readonly #cap: number;
  readonly #random: () => number;
  #attempt = 0;

  constructor(options: BackoffOptions = {}) {
    this.#base = options.baseMs ?? 500;
    this.#cap = options.capMs ?? 30_000;
    this.#random = options.random ?? Math.random;
  }

  /** The next delay in ms; `floorMs` (a Retry-After) is honoured as a minimum. */
  next(floorMs = 0): number {
    const ceiling = Math.min(this.#cap, this.#base * 2 ** Math.min(this.#attempt, 30));
    this.#attempt++;
    return Math.max(floorMs, Math.floor(this.#random() * ceiling));
  }

  reset(): void {
    this.#attempt = 0;
  }

  get attempt(): number {
    return this.#attempt;
  }
}

/**
 * Waits out a backoff delay, or less when `signal` aborts (a stopping client must not sit out its
 * delay). Never rejects: the caller checks `signal.aborted` after it.
 */
export function waitOrAbort(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}
