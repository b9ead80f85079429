// The data directory: created safely, locked for the life of the process, and private.
//
// - ensureDir() creates a directory and its missing parents one level at a time. Node's
//   mkdir({recursive:true}) loops forever (100% CPU) under /proc, where mkdir answers ENOENT for a
//   parent that exists; here every level is tried once, so an unusable path fails at once.
// - lockDataDir() takes an exclusive lock on DATA_DIR/revdial.lock for as long as the process
//   lives, so two servers never open one PGlite directory (that destroys it). The lock is a real
//   kernel lock (flock(2)), not a pid file: the kernel drops it when the process dies, even by
//   kill -9, so there is no stale lock to detect and no pid reuse to get wrong, and it holds
//   between containers that share the directory. Node has no flock(), so the util-linux program
//   `flock` (or busybox's) is run ONCE on our own file descriptor (`flock -n 3`): the lock belongs to
//   the open file description, which our descriptor keeps open after the program exits. The holder
//   writes its pid into the file, so a second server names it. The lock file is never unlinked
//   (unlinking a lock file lets two processes lock two different inodes). Where no flock program
//   exists (macOS), the pid in that file is checked instead (best effort, and logged as such).
// - secureTree() makes the directory 0700 and every file in it 0600, recursively; the server runs
//   it on every start (fixing a dir an older version left 0755) and after the store opens (PGlite
//   unpacks its template files 0666 and writes some 0644 whatever the umask).

import { spawn } from "node:child_process";
import { closeSync, constants, ftruncateSync, openSync, readFileSync, writeSync } from "node:fs";
import { chmod, lstat, mkdir, readdir, readFile, realpath, stat } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import type { Logger } from "../common/logger.ts";
import { DATA_DIR_ERROR_CODES, DataDirError } from "./store-errors.ts";

export const LOCK_FILE_NAME = "revdial.lock";
export const PRIVATE_DIR_MODE = 0o700;
export const PRIVATE_FILE_MODE = 0o600;

/** How long the flock program may take (it never waits: --nonblock). */
const LOCK_PROGRAM_TIMEOUT_MS = 5000;

function unusable(dir: string, why: string, cause?: unknown): DataDirError {
  return new DataDirError(DATA_DIR_ERROR_CODES.unusable, `data dir ${dir} is not usable: ${why}`, { cause });
}

/** Creates `dir` and its missing parents with `mode`; fails at once where a level cannot be made. */
export async function ensureDir(dir: string, mode: number): Promise<void> {
  const missing: string[] = [];
  for (let cur = resolve(dir); ; cur = dirname(cur)) {
    try {
      if (!(await stat(cur)).isDirectory()) throw unusable(dir, `${cur} is not a directory`);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
        throw err instanceof DataDirError ? err : unusable(dir, (err as Error).message, err);
      }
      missing.push(cur);
      if (dirname(cur) === cur) break;
    }
  }
  for (const level of missing.reverse()) {
    try {
      await mkdir(level, { mode });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EEXIST") continue;
      throw unusable(dir, `cannot create ${level}: ${(err as Error).message}`, err);
    }
  }
}

export interface DataDirLock {
  readonly path: string;
  /** Drops the lock (closes its descriptor); safe to call twice. */
  release(): void;
}

export interface LockOptions {
  /** The flock(1) program. Default "flock" from PATH (util-linux, or busybox). */
  program?: string;
  /** Told when no flock program exists and the pid-file fallback is used. */
  logger?: Logger;
}

/** True when a process with this pid exists (EPERM: it does, under another user). */
function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * The fallback where no flock program exists (macOS): the pid in the lock file holds the dir while
 * that process lives. Best effort: two servers starting in the same instant after a holder died
 * can both see it dead; the kernel lock above has no such window, which is why it comes first.
 */
function pidFileLock(dir: string, path: string): void {
  const text = readFileSync(path, "utf8").trim();
  const pid = Number(/^(\d+)/.exec(text)?.[1] ?? 0);
  if (pid > 0 && pid !== process.pid && pidAlive(pid)) {
    throw new DataDirError(DATA_DIR_ERROR_CODES.locked, `data dir ${dir} is in use by pid ${pid}`);
  }
}

/** Runs `flock --nonblock --exclusive 3` on `fd`: true when locked, false when another holds it. */
function flockFd(fd: number, program: string): Promise<boolean> {
  return new Promise((resolveLock, reject) => {
    const child = spawn(program, ["-n", "-x", "3"], { stdio: ["ignore", "ignore", "pipe", fd] });
    let stderr = "";
    child.stderr?.on("data", (chunk: Buffer) => {
      if (stderr.length < 1000) stderr += chunk;
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), LOCK_PROGRAM_TIMEOUT_MS);
    child.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once("close", (code) => {
      clearTimeout(timer);
      if (code === 0) resolveLock(true);
      else if (code === 1) resolveLock(false);
      else reject(new Error(`${program} exited with ${code}: ${stderr.trim()}`));
    });
  });
}

async function holderOf(path: string): Promise<string> {
  const text = await readFile(path, "utf8").catch(() => "");
  const pid = /^(\d+)/.exec(text.trim())?.[1];
  return pid ? `pid ${pid}` : "another process";
}

/**
 * Takes the data dir's exclusive lock or throws RD_ERR_DATA_DIR_LOCKED naming the holder's pid
 * (RD_ERR_DATA_DIR_UNUSABLE when the dir cannot hold a lock file, or no flock program exists).
 */
export async function lockDataDir(dir: string, options: LockOptions = {}): Promise<DataDirLock> {
  const program = options.program ?? "flock";
  const path = join(dir, LOCK_FILE_NAME);
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDWR | constants.O_CREAT, PRIVATE_FILE_MODE);
  } catch (err) {
    throw unusable(dir, `cannot create ${path}: ${(err as Error).message}`, err);
  }
  let locked: boolean;
  try {
    locked = await flockFd(fd, program);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
      closeSync(fd);
      throw unusable(dir, `cannot lock it: ${(err as Error).message}`, err);
    }
    options.logger?.warn(
      { path },
      `no ${program} program (util-linux): the data dir is locked by a pid file only (best effort)`,
    );
    try {
      pidFileLock(dir, path);
    } catch (lockErr) {
      closeSync(fd);
      throw lockErr;
    }
    locked = true;
  }
  if (!locked) {
    closeSync(fd);
    throw new DataDirError(
      DATA_DIR_ERROR_CODES.locked,
      `data dir ${dir} is in use by ${await holderOf(path)}`,
    );
  }
  ftruncateSync(fd, 0);
  writeSync(fd, `${process.pid}\n`, 0);
  let open = true;
  return {
    path,
    release() {
      if (!open) return;
      open = false;
      // An empty file names no holder: the pid-file fallback then sees the dir free.
      ftruncateSync(fd, 0);
      closeSync(fd);
    },
  };
}

/** Makes `dir` 0700 and everything under it 0700 (dirs) or 0600 (files); symlinks inside are left alone. */
export async function secureTree(dir: string): Promise<void> {
  // The root itself may be a symlink (data -> /srv/revdial): its target is what gets secured.
  const stack = [await realpath(dir)];
  for (let path = stack.pop(); path !== undefined; path = stack.pop()) {
    const info = await lstat(path).catch(() => null);
    if (!info || info.isSymbolicLink()) continue;
    const want = info.isDirectory() ? PRIVATE_DIR_MODE : PRIVATE_FILE_MODE;
    if ((info.mode & 0o7777) !== want) await chmod(path, want).catch(() => {});
    if (!info.isDirectory()) continue;
    const entries = await readdir(path).catch(() => [] as string[]);
    for (const name of entries) stack.push(join(path, name));
  }
}
