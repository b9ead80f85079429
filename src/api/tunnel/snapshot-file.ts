// The registry snapshot's file in the data dir, DATA_DIR/tunnels.snapshot (registry-snapshot.ts
// says what it is for). One runner id per line under a header that names the format and the count:
//
//   revdial-tunnels-snapshot v1 count=2
//   sandbox-01hx...
//   fleet0-17
//
// Written whole to a temp file beside it (mode 0600, like every file in the data dir), synced, and
// renamed over the old one: the next process, after a kill -9 in the middle of a save too, reads the
// old set or the new one, never half of one.
//
// Bounds: at most maxIds ids (default 50,000: 2.5 times the server's default tunnel cap, room for
// the live runners and those in a grace period) and maxBytes bytes (default: what maxIds ids of the
// longest runner id take, about 6.2 MiB). A file that is larger, does not parse, names an invalid
// runner id or whose count does not match its lines is ignored with a warning: the snapshot costs at
// most a grace period, so it is never fatal. No file is the normal first start.

import { open, rename, unlink } from "node:fs/promises";
import { InvalidOptionError } from "../../common/errors.ts";
import type { Logger } from "../../common/logger.ts";
import { positiveIntegerOptions } from "../../common/options.ts";
import { PRIVATE_FILE_MODE } from "../../store/data-dir.ts";
import { RUNNER_ID_PATTERN } from "../../tunnel/constants.ts";
import type { SnapshotBackend } from "./registry-snapshot.ts";

export const SNAPSHOT_FILE_NAME = "tunnels.snapshot";

const MAGIC = "revdial-tunnels-snapshot v1";
const HEADER_PATTERN = /^revdial-tunnels-snapshot v1 count=(\d{1,9})$/;
/** The longest line: a runner id of the most characters RUNNER_ID_PATTERN accepts, and its newline. */
const MAX_LINE_BYTES = 129;
/** The header line at its longest. */
const MAX_HEADER_BYTES = MAGIC.length + " count=".length + 9 + 1;

export const SNAPSHOT_FILE_DEFAULTS = Object.freeze({ maxIds: 50_000 });

/** The bytes a snapshot of `maxIds` ids of the longest runner id takes. */
export function snapshotBytesFor(maxIds: number): number {
  return MAX_HEADER_BYTES + maxIds * MAX_LINE_BYTES;
}

export interface SnapshotFileOptions {
  /** The file, DATA_DIR/tunnels.snapshot; its temp file is the same path plus ".tmp". */
  path: string;
  logger: Logger;
  /** Most ids kept. Default 50,000. */
  maxIds?: number;
  /** Largest file read; larger ones are ignored. Default snapshotBytesFor(maxIds). */
  maxBytes?: number;
}

/** The file's text for `ids` (each must match RUNNER_ID_PATTERN). */
export function formatSnapshot(ids: readonly string[]): string {
  return `${MAGIC} count=${ids.length}\n${ids.map((id) => `${id}\n`).join("")}`;
}

/** The ids in a snapshot's text, or why it is not one. Never throws. */
export function parseSnapshot(text: string, maxIds: number): { ids: string[] } | { invalid: string } {
  const lines = text.split("\n");
  const header = HEADER_PATTERN.exec(lines[0]);
  if (!header) return { invalid: "no snapshot header" };
  const count = Number(header[1]);
  if (count > maxIds) return { invalid: `${count} ids, more than the ${maxIds} kept` };
  if (lines.at(-1) !== "" || lines.length !== count + 2)
    return { invalid: `the header says ${count} ids, the file has ${Math.max(0, lines.length - 2)} lines` };
  const ids = lines.slice(1, -1);
  const bad = ids.findIndex((id) => !RUNNER_ID_PATTERN.test(id));
  if (bad >= 0) return { invalid: `line ${bad + 2} is not a runner id` };
  return { ids: [...new Set(ids)] };
}

export class SnapshotFile implements SnapshotBackend {
  readonly maxIds: number;
  readonly maxBytes: number;
  readonly #path: string;
  readonly #tmp: string;
  readonly #log: Logger;

  constructor(options: SnapshotFileOptions) {
    if (typeof options.path !== "string" || options.path === "")
      throw new InvalidOptionError("path", "must be a file path");
    const { maxIds } = positiveIntegerOptions(SNAPSHOT_FILE_DEFAULTS, options);
    const { maxBytes } = positiveIntegerOptions({ maxBytes: snapshotBytesFor(maxIds) }, options);
    this.maxIds = maxIds;
    this.maxBytes = maxBytes;
    this.#path = options.path;
    this.#tmp = `${options.path}.tmp`;
    this.#log = options.logger;
  }

  async load(): Promise<string[]> {
    let text: string | null;
    try {
      text = await this.#readBounded();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
      return this.#ignored(`cannot read it: ${(err as Error).message}`);
    }
    if (text === null) return this.#ignored(`larger than ${this.maxBytes} bytes`);
    const parsed = parseSnapshot(text, this.maxIds);
    return "ids" in parsed ? parsed.ids : this.#ignored(parsed.invalid);
  }

  /** The file's text, or null when it is larger than maxBytes (then nothing past its size is read). */
  async #readBounded(): Promise<string | null> {
    const handle = await open(this.#path, "r");
    try {
      const info = await handle.stat();
      if (!info.isFile()) throw new Error("not a regular file");
      if (info.size > this.maxBytes) return null;
      // One byte more than the size it had: a file that grew meanwhile fails to parse, not to stop.
      const buffer = Buffer.alloc(info.size + 1);
      let length = 0;
      while (length < buffer.length) {
        const { bytesRead } = await handle.read(buffer, length, buffer.length - length, length);
        if (bytesRead === 0) break;
        length += bytesRead;
      }
      return length > this.maxBytes ? null : buffer.toString("utf8", 0, length);
    } finally {
      await handle.close();
    }
  }

  #ignored(why: string): string[] {
    this.#log.warn(
      { path: this.#path, reason: why },
      "registry snapshot ignored: after this restart only the runners the store knows are waited for",
    );
    return [];
  }

  async save(ids: readonly string[]): Promise<void> {
    if (ids.length > this.maxIds)
      throw new RangeError(`${ids.length} runner ids, more than maxIds ${this.maxIds}`);
    // Ids no tunnel can register under (a store row's odd host id) would make the file unreadable.
    const text = formatSnapshot(ids.filter((id) => RUNNER_ID_PATTERN.test(id)));
    try {
      const handle = await open(this.#tmp, "w", PRIVATE_FILE_MODE);
      try {
        // A temp file left behind keeps its mode through "w": set it, whatever it was.
        await handle.chmod(PRIVATE_FILE_MODE);
        await handle.writeFile(text);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(this.#tmp, this.#path);
    } catch (err) {
      await unlink(this.#tmp).catch(() => {});
      throw err;
    }
  }
}
