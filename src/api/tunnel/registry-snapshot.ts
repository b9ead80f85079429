// The registry snapshot: the runner ids this API process reaches or waits for, saved as they change,
// so that the next process (after a kill -9 as after a clean stop) knows which runners were live and
// holds their calls for the grace period instead of answering 503 at once.
//
// Why it exists: the store knows only some runners (sandboxes of `starting`/`running` sessions,
// `online` hosts). A runner registered ad hoc with an admin key (any runner id: a fleet's,
// `revdial doctor`'s) is in no table, so after a restart its calls failed at once until it was
// back. The snapshot is what the registry held; start-up unions it with the store's list
// (src/api/server.ts) and passes both to registry.expect().
//
// Contracts:
// - RegistrySnapshot follows a RunnerSource (the TunnelRegistry) by its events, never by polling,
//   and saves at most once per minIntervalMs, only when the set differs from the one saved last: a
//   change after a quiet spell is saved at once, a burst (a fleet reconnecting) once per interval.
//   So a runner that connected less than minIntervalMs before a kill -9 may be missing.
// - The set is every id the registry would reach or wait for (live, or in a grace period): a runner
//   that dropped just before a crash, or one expected back that had not returned yet when the API
//   crashed again, is still expected by the next process.
// - At most backend.maxIds ids are saved, the live ones first; past that a warning is logged once.
// - A failed save is logged once per streak of failures and retried at the next interval; nothing
//   throws out of the follower.
// - close() stops following and saves the set as it is then; idempotent. The server calls it when
//   shutdown begins, before the tunnels drain, so a clean restart expects the runners a crash would.
// - Where the ids are kept is a SnapshotBackend, two methods. This process keeps a file in its data
//   dir (snapshot-file.ts). For replicas sharing one Postgres, a store-backed backend (a row of ids
//   per process, load() the union of them) replaces it without touching this follower.
// No state outside the instance.

import { InvalidOptionError } from "../../common/errors.ts";
import type { Logger } from "../../common/logger.ts";

/** Where a snapshot is kept. */
export interface SnapshotBackend {
  /** Most ids save() accepts, and load() reads. */
  readonly maxIds: number;
  /** The ids saved last (by an earlier process too); [] when there are none. Never throws. */
  load(): Promise<string[]>;
  /** Replaces the saved ids with `ids` (at most maxIds). Throws when they could not be kept. */
  save(ids: readonly string[]): Promise<void>;
}

/** The registry events after which knownRunnerIds() may differ. */
const CHANGES = ["connected", "disconnected", "grace-ended"] as const;
type ChangeEvent = (typeof CHANGES)[number];

/** What the snapshot follows: the TunnelRegistry fits it. */
export interface RunnerSource {
  /** Every runner id a call would reach or wait for, the live ones first. */
  knownRunnerIds(): string[];
  on(event: ChangeEvent, listener: (runnerId: string) => void): unknown;
  off(event: ChangeEvent, listener: (runnerId: string) => void): unknown;
}

export interface RegistrySnapshotOptions {
  source: RunnerSource;
  backend: SnapshotBackend;
  logger: Logger;
  /** Least time between two saves. Default 1000 ms. */
  minIntervalMs?: number;
  /** What the backend held at start (load()'s answer): not saved again while the set is the same. */
  saved?: readonly string[];
  now?: () => number;
}

const DEFAULTS = Object.freeze({ minIntervalMs: 1000 });

export class RegistrySnapshot {
  readonly #source: RunnerSource;
  readonly #backend: SnapshotBackend;
  readonly #log: Logger;
  readonly #intervalMs: number;
  readonly #now: () => number;
  readonly #onChange = () => this.#changed();
  #saved: ReadonlySet<string>;
  #lastSaveAt = Number.NEGATIVE_INFINITY;
  /** A change not saved yet (the first pass compares the source with what was loaded). */
  #dirty = true;
  #timer: NodeJS.Timeout | null = null;
  #saving: Promise<void> | null = null;
  #closed = false;
  #closing: Promise<void> | null = null;
  #overCap = false;
  #failing = false;

  constructor(options: RegistrySnapshotOptions) {
    const intervalMs = options.minIntervalMs ?? DEFAULTS.minIntervalMs;
    if (!Number.isFinite(intervalMs) || intervalMs < 0)
      throw new InvalidOptionError("minIntervalMs", "must be a number of milliseconds >= 0");
    if (!options.source || typeof options.source.knownRunnerIds !== "function")
      throw new InvalidOptionError("source", "must have knownRunnerIds(), on() and off()");
    if (!options.backend || !(Number.isInteger(options.backend.maxIds) && options.backend.maxIds >= 1))
      throw new InvalidOptionError("backend", "must have load(), save() and a maxIds >= 1");
    this.#source = options.source;
    this.#backend = options.backend;
    this.#log = options.logger;
    this.#intervalMs = intervalMs;
    this.#now = options.now ?? Date.now;
    this.#saved = new Set(options.saved ?? []);
    for (const event of CHANGES) this.#source.on(event, this.#onChange);
    this.#schedule();
  }

  #changed(): void {
    this.#dirty = true;
    this.#schedule();
  }

  /** One timer at most; a save in flight schedules the next one when it ends. */
  #schedule(): void {
    if (this.#closed || this.#timer || this.#saving) return;
    const wait = Math.max(0, this.#lastSaveAt + this.#intervalMs - this.#now());
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#saving = this.#saveIfChanged().finally(() => {
        this.#saving = null;
        if (this.#dirty) this.#schedule();
      });
    }, wait);
    this.#timer.unref();
  }

  async #saveIfChanged(): Promise<void> {
    if (!this.#dirty) return;
    this.#dirty = false;
    const ids = this.#capped([...new Set(this.#source.knownRunnerIds())]);
    if (sameSet(ids, this.#saved)) return;
    this.#lastSaveAt = this.#now();
    try {
      await this.#backend.save(ids);
      this.#saved = new Set(ids);
      if (this.#failing) this.#log.info({ runners: ids.length }, "registry snapshot saved again");
      this.#failing = false;
    } catch (err) {
      // Retried at the next interval (the closing save is the last try).
      this.#dirty = true;
      if (!this.#failing)
        this.#log.warn(
          { err },
          "could not save the registry snapshot: after a restart, runners not in the store may get 503 until they are back",
        );
      this.#failing = true;
    }
  }

  #capped(ids: string[]): string[] {
    const max = this.#backend.maxIds;
    if (ids.length <= max) {
      this.#overCap = false;
      return ids;
    }
    if (!this.#overCap)
      this.#log.warn(
        { runners: ids.length, max_ids: max },
        "more runners than the registry snapshot keeps: the rest are not expected back after a restart",
      );
    this.#overCap = true;
    return ids.slice(0, max);
  }

  /** Stops following the registry and saves the set as it is now (if it changed). Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#closeOnce();
    return this.#closing;
  }

  async #closeOnce(): Promise<void> {
    this.#closed = true;
    for (const event of CHANGES) this.#source.off(event, this.#onChange);
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    await this.#saving;
    this.#dirty = true;
    await this.#saveIfChanged();
  }
}

function sameSet(ids: readonly string[], set: ReadonlySet<string>): boolean {
  return ids.length === set.size && ids.every((id) => set.has(id));
}
