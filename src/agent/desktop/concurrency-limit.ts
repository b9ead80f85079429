// Bounds how much work of one kind runs at once, with a bounded queue behind it. Screenshots hold
// ~15 MB each while they are converted and encoded, and clipboard writes must not interleave (each one
// confirms its own content by reading it back), so both go through one of these.

import { DesktopBusyError } from "./errors.ts";

export interface ConcurrencyLimitOptions {
  /** Name of the work, for the busy error's message. */
  what: string;
  /** Most tasks running at once. */
  maxActive: number;
  /** Most tasks waiting; one more is refused with DesktopBusyError. */
  maxQueued: number;
}

/** Contract: tasks start in arrival order; a refused task never runs. */
export class ConcurrencyLimit {
  readonly #options: ConcurrencyLimitOptions;
  readonly #waiting: Array<() => void> = [];
  #active = 0;

  constructor(options: ConcurrencyLimitOptions) {
    this.#options = options;
  }

  async run<T>(task: () => Promise<T>): Promise<T> {
    await this.#acquire();
    try {
      return await task();
    } finally {
      this.#release();
    }
  }

  #acquire(): Promise<void> {
    if (this.#active < this.#options.maxActive) {
      this.#active++;
      return Promise.resolve();
    }
    if (this.#waiting.length >= this.#options.maxQueued) {
      return Promise.reject(new DesktopBusyError(this.#options.what));
    }
    // The slot is handed over by #release, so #active stays counted for the waiter.
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  #release(): void {
    const next = this.#waiting.shift();
    if (next) next();
    else this.#active--;
  }
}
