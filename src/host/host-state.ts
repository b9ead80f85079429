// What a sandbox host leaves on disk so that a host killed with SIGKILL strands nothing: a state dir
// (0700, the host's user) holding lobbies.json, the live lobbies with their process group, the
// leader's start time and the sandbox's uid. A host that starts reads it and kills what the last
// one left (recoverLeftovers), then reports those lobbies to the API as exited.
//
// Why the start time: a process group id is a pid, and pids are reused. A group is only killed
// when its processes started no earlier than the recorded leader did, on the same boot; a group id
// reused by another program after a reboot, or long after, is left alone.
//
// Contract: one host per state dir (the lobby API socket lives there too; a second host on the
// same dir would kill the first one's sandboxes at start). The file is rewritten whole, through a
// rename, on every change, so a crash leaves the old or the new list, never half of one.

import { createHash } from "node:crypto";
import {
  chmodSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { HOST_ERROR_CODES, HostError } from "./host-errors.ts";

export interface LobbyRecord {
  lobbyId: string;
  sessionId: string;
  /** The launcher wrapper's pid: its process group. */
  pgid: number;
  /** The leader's start time in clock ticks since boot (/proc/PID/stat field 22). */
  startTicks: number;
  /** The sandbox's uid (users mode) or null. */
  uid: number | null;
  /** The sandbox's work dir on the host, removed with it. */
  workDir: string;
}

interface StateFile {
  bootId: string;
  /** The host that wrote it: pid and start time. */
  owner?: { pid: number; startTicks: number };
  lobbies: LobbyRecord[];
}

const STATE_FILE = "lobbies.json";
/** How long recovery waits for killed processes to go (they were sent SIGKILL). */
const RECOVERY_WAIT_MS = 5_000;

/** The default state dir of host `id`: per user, under the OS temp dir. */
export function defaultStateDir(id: string): string {
  return join(tmpdir(), `revdial-host-${process.getuid?.() ?? "u"}-${id}`);
}

/** The state dir of the local host of the server on `dataDir` (`server --with-local-host`): one per data dir. */
export function localHostStateDir(dataDir: string): string {
  const hash = createHash("sha256").update(resolve(dataDir)).digest("hex").slice(0, 12);
  return defaultStateDir(`local-${hash}`);
}

/**
 * Creates `dir` (and parents) and makes it 0700; throws when it is a symlink or another user owns
 * it (under a shared temp dir, another local user may have made it first).
 */
export function ensurePrivateDir(dir: string, uid = process.getuid?.()): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = lstatSync(dir);
  if (!st.isDirectory()) throw new Error(`${dir} is not a directory (a symlink?)`);
  if (uid !== undefined && st.uid !== uid)
    throw new Error(`${dir} belongs to uid ${st.uid}, not to this host's user (${uid})`);
  if ((st.mode & 0o777) !== 0o700) chmodSync(dir, 0o700);
}

export function bootId(): string {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return "";
  }
}

interface ProcInfo {
  pid: number;
  pgrp: number;
  startTicks: number;
  uid: number;
}

/** /proc/PID/stat and status, or null when the process is gone. */
export function procInfo(pid: number): ProcInfo | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const uid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1] ?? -1);
    return { pid, pgrp: Number(rest[2]), startTicks: Number(rest[19]), uid };
  } catch {
    return null;
  }
}

function allProcesses(): ProcInfo[] {
  const out: ProcInfo[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const info = procInfo(Number(entry));
    if (info) out.push(info);
  }
  return out;
}

/** Where users-mode hosts claim their uid ranges: one file per host, machine-wide. */
export function uidClaimDir(): string {
  return join(tmpdir(), "revdial-uid-claims");
}

/**
 * Claims `range` for this process (users mode), so that no two hosts on one machine run sandboxes
 * as the same uids, nor kill each other's at start. A claim is the claimer's pid and start time; a
 * claim whose process is gone is stale and ignored. Returns null when claimed, or the pid of the
 * live host holding an overlapping range.
 */
export function claimUidRange(range: { first: number; last: number }, dir = uidClaimDir()): number | null {
  ensurePrivateDir(dir);
  const me = procInfo(process.pid);
  for (const entry of readdirSync(dir)) {
    if (!entry.endsWith(".json")) continue;
    try {
      const claim = JSON.parse(readFileSync(join(dir, entry), "utf8")) as {
        pid: number;
        startTicks: number;
        first: number;
        last: number;
      };
      const holder = procInfo(claim.pid);
      const alive = holder !== null && holder.startTicks === claim.startTicks;
      if (!alive) rmSync(join(dir, entry), { force: true });
      else if (claim.pid !== process.pid && claim.first <= range.last && range.first <= claim.last)
        return claim.pid;
    } catch {}
  }
  const file = join(dir, `${range.first}-${range.last}.json`);
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify({ pid: process.pid, startTicks: me?.startTicks ?? 0, ...range }), {
    mode: 0o600,
  });
  renameSync(tmp, file);
  return null;
}

/** Drops this process's claim on `range`. */
export function releaseUidRange(range: { first: number; last: number }, dir = uidClaimDir()): void {
  const file = join(dir, `${range.first}-${range.last}.json`);
  try {
    const claim = JSON.parse(readFileSync(file, "utf8")) as { pid: number };
    if (claim.pid === process.pid) rmSync(file, { force: true });
  } catch {}
}

/** The state of one host: its lobbies on disk. */
export class HostState {
  readonly dir: string;
  readonly #file: string;
  readonly #boot = bootId();

  constructor(dir: string) {
    this.dir = dir;
    this.#file = join(dir, STATE_FILE);
    ensurePrivateDir(dir);
  }

  read(): StateFile {
    try {
      const parsed = JSON.parse(readFileSync(this.#file, "utf8")) as StateFile;
      return {
        bootId: String(parsed.bootId ?? ""),
        owner: parsed.owner,
        lobbies: Array.isArray(parsed.lobbies) ? parsed.lobbies : [],
      };
    } catch {
      return { bootId: this.#boot, lobbies: [] };
    }
  }

  write(lobbies: LobbyRecord[]): void {
    const tmp = `${this.#file}.${process.pid}.tmp`;
    const owner = { pid: process.pid, startTicks: procInfo(process.pid)?.startTicks ?? 0 };
    writeFileSync(tmp, JSON.stringify({ bootId: this.#boot, owner, lobbies } satisfies StateFile), {
      mode: 0o600,
    });
    renameSync(tmp, this.#file);
  }

  /**
   * Kills what a previous host left: every process of a recorded group that started no earlier
   * than its leader (same boot), and every process whose uid is in `uids` (users mode: the slots of
   * this host). Waits, bounded, until they are gone, removes their work dirs, empties the file, and
   * returns the lobbies found so the host reports them as exited.
   */
  async recoverLeftovers(uids: { first: number; last: number } | null): Promise<LobbyRecord[]> {
    const state = this.read();
    const sameBoot = state.bootId === this.#boot && this.#boot !== "";
    const owner = state.owner && sameBoot ? procInfo(state.owner.pid) : null;
    if (owner && owner.pid !== process.pid && owner.startTicks === state.owner?.startTicks)
      throw new HostError(
        HOST_ERROR_CODES.stateInUse,
        500,
        `the state dir ${this.dir} belongs to a running host (pid ${owner.pid}); give this host its own --state-dir`,
      );
    const doomed = (p: ProcInfo) =>
      p.pid !== process.pid &&
      ((sameBoot && state.lobbies.some((l) => l.pgid === p.pgrp && p.startTicks >= l.startTicks)) ||
        (uids !== null && p.uid >= uids.first && p.uid <= uids.last));
    const deadline = Date.now() + RECOVERY_WAIT_MS;
    for (let wait = 5; ; wait = Math.min(wait * 2, 100)) {
      const left = allProcesses().filter(doomed);
      if (left.length === 0 || Date.now() >= deadline) break;
      for (const p of left) {
        try {
          process.kill(p.pid, "SIGKILL");
        } catch {}
      }
      await delay(wait);
    }
    for (const l of state.lobbies) rmSync(l.workDir, { recursive: true, force: true });
    this.write([]);
    return state.lobbies;
  }
}
