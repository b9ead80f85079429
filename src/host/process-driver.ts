// The process driver: each sandbox is a process group on this machine, led by lobby-launcher.ts
// (Xvfb on a private display, the sandbox agent, the optional app), wrapped by the isolation the
// host runs with (isolation.ts: its own uid and namespaces through bubblewrap, or, only when the
// operator asked for it, the host's own user). Stopping signals the whole group and waits, bounded,
// until no process of it (nor, in users mode, of its uid) is left: SIGTERM, then SIGKILL past
// stopTimeoutMs. A group that ends on its own is reported through onExit.
//
// No orphans: the launcher dies with the host (bwrap --die-with-parent, setpriv --pdeathsig, and
// the launcher's own parent watch), and the live lobbies are written to the host's state dir
// (host-state.ts), so a host started after a crash kills what the last one left, in start(), and
// hands those lobbies to onExit like any sandbox that ended.
//
// Each sandbox has a slot (0..maxSandboxes-1): its uids in users mode (the host claims a window of
// 2 x maxSandboxes uids starting at F: the agent runs as F + slot, the app as F + max + slot) and
// its dirs (stateDir/sandboxes/s{slot} for the agent, s{slot}-app for the app, each 0700 and owned
// by its uid). A slot is reused only once nothing of the previous sandbox is left.
//
// Concurrency: create() counts a lobby against maxSandboxes from the moment it is called, so
// concurrent creates never overshoot; a second create for the same session returns the first lobby.

import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { chownSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { InvalidOptionError } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";
import { chooseApp } from "./default-app.ts";
import { HOST_ERROR_CODES, HostAtCapacityError, HostError, LobbyNotFoundError } from "./host-errors.ts";
import { claimUidRange, HostState, type LobbyRecord, procInfo, releaseUidRange } from "./host-state.ts";
import {
  chooseIsolation,
  codeBinds,
  describeIsolation,
  INNER_APP_DIR,
  INNER_WORK_DIR,
  type Isolation,
  type IsolationRequest,
  IsolationUnavailableError,
  modulesDirOf,
  type UidRange,
  wrapCommand,
} from "./isolation.ts";
import type { LauncherSpec } from "./lobby-launcher.ts";
import type { ExitListener, LobbyInfo, LobbySpec, SandboxDriver } from "./sandbox-driver.ts";
import { newCookie, xauthorityFile } from "./xauthority.ts";

export interface ProcessDriverOptions {
  logger: Logger;
  /** The host's state dir (0700): lobbies.json and the sandboxes' work dirs. Required. */
  stateDir: string;
  /** Lobbies at most (default 10). */
  maxSandboxes?: number;
  /**
   * A command started on each sandbox's display (`sh -c`), e.g. an editor; default a terminal
   * showing the session (default-app.ts); "" runs nothing.
   */
  app?: string | null;
  /** The agent program each sandbox's agent runs and bridges (`revdial agent --agent-command`). */
  agentCommand?: string | null;
  /** Xvfb screen, WIDTHxHEIGHTxDEPTH (default 1280x800x24). */
  screen?: string;
  /** How long a stopped group gets to exit after SIGTERM before SIGKILL (default 5 s). */
  stopTimeoutMs?: number;
  /** How long a launcher gets to report its sandbox started (default 20 s). */
  startTimeoutMs?: number;
  /** The isolation asked for (default auto); chosen and probed in start(). */
  isolation?: IsolationRequest;
  /** auto falls back to unsafe-shared-user instead of failing (what `server --with-local-host` does). */
  allowSharedFallback?: boolean;
  /**
   * The uids of users mode (default 200000-200999): the host claims the first free window of
   * 2 x maxSandboxes of them on this machine; slot i runs as window + i, its app as window + max + i.
   */
  sandboxUids?: UidRange;
  /** Environment for the sandbox agent only: the host's transport and TLS settings. */
  agentEnv?: Record<string, string>;
  /** PEM CA certificates the agent trusts (written into the sandbox, named by REVDIAL_CA_FILE). */
  caPem?: string | null;
  onExit?: ExitListener;
}

export const PROCESS_DRIVER_DEFAULTS = Object.freeze({
  maxSandboxes: 10,
  screen: "1280x800x24",
  stopTimeoutMs: 5_000,
  startTimeoutMs: 20_000,
  isolation: "auto" as IsolationRequest,
  allowSharedFallback: false,
});

/** ".ts" when running the sources (a checkout), ".js" when running the build (an installed package). */
const CODE_EXT = import.meta.url.endsWith(".ts") ? ".ts" : ".js";
const LAUNCHER_PATH = fileURLToPath(new URL(`./lobby-launcher${CODE_EXT}`, import.meta.url));
const MAIN_PATH = fileURLToPath(new URL(`../cli/main${CODE_EXT}`, import.meta.url));
const PROJECT_ROOT = dirname(dirname(dirname(LAUNCHER_PATH)));
/** sun_path holds 108 bytes with the terminating NUL. */
const MAX_SOCKET_PATH = 107;
/** Longest stderr line of a sandbox passed to the host's log. */
const MAX_LOG_LINE = 2000;

interface Lobby {
  info: LobbyInfo;
  child: ChildProcess;
  slot: number;
  /** users mode: the agent's and the app's uids; else empty. */
  uids: number[];
  workDir: string;
  appDir: string | null;
  startTicks: number;
  stopping: Promise<void> | null;
}

/** True while any process of group `pgid` exists. */
export function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // Already gone.
  }
}

/** Pids of every process running as one of `uids` (a sandbox that left its group with setsid included). */
export async function processesOfUids(uids: number[]): Promise<number[]> {
  const { readdir } = await import("node:fs/promises");
  const out: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const uid = procInfo(Number(entry))?.uid;
    if (uid !== undefined && uids.includes(uid)) out.push(Number(entry));
  }
  return out;
}

export class ProcessDriver implements SandboxDriver {
  readonly name = "process" as const;
  readonly #log: Logger;
  /** Why sandboxes run no app when none was given (xterm missing), for start()'s log. */
  readonly #appNote: string | null;
  readonly #o: Required<
    Omit<ProcessDriverOptions, "logger" | "onExit" | "app" | "sandboxUids" | "caPem" | "agentCommand">
  > & {
    app: string | null;
    sandboxUids: UidRange | undefined;
    caPem: string | null;
    agentCommand: string | null;
  };
  readonly #onExit: ExitListener;
  readonly #lobbies = new Map<string, Lobby>();
  /** Creates in flight, by session id, so a retry joins the first. */
  readonly #creating = new Map<string, Promise<LobbyInfo>>();
  /** Slots taken by a live, starting or not yet reaped sandbox. */
  readonly #slots = new Set<number>();
  #state: HostState | null = null;
  #uidWindow: UidRange | null = null;
  /** Sandboxes whose processes outlived SIGKILL: kept on record for the next host to kill. */
  readonly #stuck: LobbyRecord[] = [];
  #isolation: Isolation | null = null;
  #closing: Promise<void> | null = null;

  constructor(options: ProcessDriverOptions) {
    if (!options?.logger) throw new InvalidOptionError("logger", "is required");
    if (!options.stateDir) throw new InvalidOptionError("stateDir", "is required");
    // Unsafe-shared-user sandboxes use the host's path of the desktop socket: it must fit sun_path.
    const longest = join(options.stateDir, "sandboxes", "s99999", "run", "desktop.sock");
    if (Buffer.byteLength(longest) > MAX_SOCKET_PATH)
      throw new InvalidOptionError("stateDir", `too long for a Unix socket path inside it (${longest})`);
    const o = { ...PROCESS_DRIVER_DEFAULTS, agentEnv: {}, ...stripUndefined(options) };
    if (!Number.isInteger(o.maxSandboxes) || o.maxSandboxes < 1)
      throw new InvalidOptionError("maxSandboxes", "must be a positive integer");
    if (!/^\d+x\d+x\d+$/.test(o.screen))
      throw new InvalidOptionError("screen", "expected WIDTHxHEIGHTxDEPTH");
    for (const name of ["stopTimeoutMs", "startTimeoutMs"] as const)
      if (!(o[name] > 0)) throw new InvalidOptionError(name, "must be > 0");
    this.#log = options.logger;
    const chosenApp = chooseApp(options.app);
    this.#appNote = chosenApp.note;
    this.#o = {
      ...o,
      stateDir: options.stateDir,
      app: chosenApp.command,
      sandboxUids: options.sandboxUids,
      caPem: options.caPem ?? null,
      agentCommand: options.agentCommand ?? null,
    };
    this.#onExit = options.onExit ?? (() => {});
  }

  /** The isolation chosen in start(), or null before. */
  get isolation(): Isolation | null {
    return this.#isolation;
  }

  /** "users (uid 200000-200019)", "namespaces" or "unsafe-shared-user". */
  describeIsolation(): string {
    return this.#isolation ? describeIsolation(this.#isolation) : "not started";
  }

  /**
   * Chooses the isolation (throws IsolationUnavailableError when the asked one cannot be had),
   * opens the state dir and kills what a previous host left there, reporting it through onExit.
   */
  async start(): Promise<void> {
    if (this.#isolation) return;
    const iso = await chooseIsolation({
      requested: this.#o.isolation,
      uids: this.#o.sandboxUids,
      maxSandboxes: this.#o.maxSandboxes,
      allowSharedFallback: this.#o.allowSharedFallback,
      codePaths: [
        join(PROJECT_ROOT, "package.json"),
        dirname(dirname(LAUNCHER_PATH)),
        MAIN_PATH,
        LAUNCHER_PATH,
        modulesDirOf(PROJECT_ROOT),
        process.execPath,
      ],
    });
    if (iso.reason) this.#log.warn({ reason: iso.reason }, `sandbox isolation: ${iso.mode}`);
    if (this.#appNote) this.#log.warn(this.#appNote);
    const window = iso.uids ? this.#claimUids(iso.uids) : null;
    const state = new HostState(this.#o.stateDir);
    mkdirSync(join(state.dir, "sandboxes"), { recursive: true, mode: 0o700 });
    const leftovers = await state.recoverLeftovers(window);
    this.#state = state;
    this.#isolation = { ...iso, uids: window };
    for (const l of leftovers) {
      this.#log.warn(
        { lobby_id: l.lobbyId, session_id: l.sessionId, pgid: l.pgid },
        "killed a sandbox left by a previous host",
      );
      this.#onExit({ lobbyId: l.lobbyId, sessionId: l.sessionId, code: null, signal: "SIGKILL" });
    }
  }

  /**
   * The first window of 2 x maxSandboxes uids in `range` that no other live host on this machine
   * has claimed; throws when every window is taken.
   */
  #claimUids(range: UidRange): UidRange {
    // Two uids per slot: the agent's and the app's.
    const size = 2 * this.#o.maxSandboxes;
    const holders: number[] = [];
    for (let first = range.first; first + size - 1 <= range.last; first += size) {
      const window = { first, last: first + size - 1 };
      const holder = claimUidRange(window);
      if (holder === null) {
        this.#uidWindow = window;
        return window;
      }
      holders.push(holder);
    }
    throw new IsolationUnavailableError(
      `every uid in --sandbox-uids ${range.first}-${range.last} is taken by other hosts (pids ${holders.join(", ")}); ` +
        "give this host a range of its own",
    );
  }

  list(): LobbyInfo[] {
    return [...this.#lobbies.values()].map((l) => ({ ...l.info }));
  }

  create(spec: LobbySpec): Promise<LobbyInfo> {
    if (this.#closing)
      return Promise.reject(new HostError(HOST_ERROR_CODES.launchFailed, 503, "host is shutting down"));
    if (!this.#isolation)
      return Promise.reject(
        new HostError(HOST_ERROR_CODES.launchFailed, 503, "the process driver is not started"),
      );
    const pending = this.#creating.get(spec.sessionId);
    if (pending) return pending;
    const existing = [...this.#lobbies.values()].find(
      (l) => l.info.sessionId === spec.sessionId && l.info.state === "running",
    );
    if (existing) return Promise.resolve({ ...existing.info });
    const slot = this.#freeSlot();
    if (slot === null) return Promise.reject(new HostAtCapacityError(this.#o.maxSandboxes));
    this.#slots.add(slot);
    const creating = this.#launch(spec, slot).finally(() => this.#creating.delete(spec.sessionId));
    this.#creating.set(spec.sessionId, creating);
    return creating;
  }

  #freeSlot(): number | null {
    for (let i = 0; i < this.#o.maxSandboxes; i++) if (!this.#slots.has(i)) return i;
    return null;
  }

  /**
   * Makes the slot's dirs afresh, each 0700 and owned by the uid that uses it: the work dir (the
   * agent's HOME, with the X cookie, run/ for the desktop socket, the CA file) and, in users mode,
   * the app's home with its own copy of the cookie.
   */
  #prepareDirs(
    slot: number,
    uids: { agent: number; app: number } | null,
  ): { workDir: string; appDir: string | null } {
    const base = join((this.#state as HostState).dir, "sandboxes");
    const workDir = join(base, `s${slot}`);
    const appDir = uids ? join(base, `s${slot}-app`) : null;
    const cookie = xauthorityFile(newCookie());
    const make = (
      dir: string,
      uid: number | null,
      files: Record<string, string | Buffer>,
      subdirs: string[],
    ) => {
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { mode: 0o700 });
      for (const sub of subdirs) mkdirSync(join(dir, sub), { mode: 0o700 });
      for (const [name, content] of Object.entries(files))
        writeFileSync(join(dir, name), content, { mode: 0o600 });
      if (uid === null) return;
      for (const entry of [
        dir,
        ...subdirs.map((d) => join(dir, d)),
        ...Object.keys(files).map((f) => join(dir, f)),
      ])
        chownSync(entry, uid, uid);
    };
    const agentFiles: Record<string, string | Buffer> = { ".Xauthority": cookie };
    if (this.#o.caPem) agentFiles["ca.pem"] = this.#o.caPem;
    make(workDir, uids?.agent ?? null, agentFiles, ["run"]);
    if (appDir && uids) make(appDir, uids.app, { ".Xauthority": cookie }, []);
    return { workDir, appDir };
  }

  async #launch(spec: LobbySpec, slot: number): Promise<LobbyInfo> {
    const iso = this.#isolation as Isolation;
    const lobbyId = randomUUID();
    const log = this.#log.child({ lobby_id: lobbyId, session_id: spec.sessionId });
    const uids =
      iso.mode === "users" && iso.uids
        ? { agent: iso.uids.first + slot, app: iso.uids.first + this.#o.maxSandboxes + slot }
        : null;
    let dirs: { workDir: string; appDir: string | null };
    try {
      dirs = this.#prepareDirs(slot, uids);
    } catch (err) {
      this.#slots.delete(slot);
      throw new HostError(
        HOST_ERROR_CODES.launchFailed,
        500,
        `cannot make the sandbox's dir: ${(err as Error).message}`,
      );
    }
    const { workDir, appDir } = dirs;
    const inner = iso.mode === "unsafe-shared-user" ? workDir : INNER_WORK_DIR;
    const agentEnv = { ...this.#o.agentEnv };
    if (this.#o.caPem) agentEnv.REVDIAL_CA_FILE = join(inner, "ca.pem");
    const launcherSpec: LauncherSpec = {
      sessionId: spec.sessionId,
      serverUrl: spec.serverUrl,
      mainPath: MAIN_PATH,
      app: this.#o.app,
      agentCommand: this.#o.agentCommand,
      env: spec.env,
      screen: this.#o.screen,
      workDir: inner,
      appHome: appDir ? INNER_APP_DIR : inner,
      drop: uids,
      token: spec.sandboxToken,
      agentEnv,
      lang: process.env.LANG || "C.UTF-8",
    };
    const argv = wrapCommand(
      iso,
      {
        workDir,
        innerWorkDir: inner,
        appDir,
        readOnly: codeBinds(PROJECT_ROOT, dirname(dirname(LAUNCHER_PATH))),
      },
      [process.execPath, LAUNCHER_PATH],
    );
    if (iso.mode === "unsafe-shared-user")
      log.warn(
        { isolation: iso.mode },
        "sandbox runs as the host's user, NOT isolated: it can read other sandboxes and the host's files",
      );
    const child = spawn(argv[0], argv.slice(1), {
      detached: true,
      stdio: ["pipe", "pipe", "pipe"],
      // Only what bwrap/setpriv themselves need; the launcher builds each process's environment.
      env: { PATH: "/usr/local/bin:/usr/bin:/bin" },
    });
    child.stdin?.on("error", () => {});
    child.stdin?.end(`${JSON.stringify(launcherSpec)}\n`);
    const info: LobbyInfo = {
      lobbyId,
      sessionId: spec.sessionId,
      state: "starting",
      pid: child.pid ?? null,
      display: null,
      startedAt: new Date(),
    };
    const startTicks = (child.pid && procInfo(child.pid)?.startTicks) || 0;
    const uidList = uids ? [uids.agent, uids.app] : [];
    const lobby: Lobby = { info, child, slot, uids: uidList, workDir, appDir, startTicks, stopping: null };
    createInterface({ input: child.stderr! }).on("line", (line) =>
      log.debug({ line: line.slice(0, MAX_LOG_LINE) }, "sandbox output"),
    );
    child.once("exit", (code, signal) => this.#exited(lobby, code, signal));
    this.#lobbies.set(lobbyId, lobby);
    this.#persist();
    try {
      const ready = await this.#readReady(child);
      info.display = ready.display;
    } catch (err) {
      lobby.stopping = this.#reap(lobby, "SIGKILL");
      await lobby.stopping;
      throw new HostError(
        HOST_ERROR_CODES.launchFailed,
        500,
        `sandbox did not start: ${(err as Error).message}`,
        {
          cause: err,
        },
      );
    }
    info.state = "running";
    log.info({ pid: info.pid, display: info.display, isolation: iso.mode, uids }, "sandbox started");
    return { ...info };
  }

  /** How many stopped sandboxes left processes SIGKILL did not remove (kept on record). */
  get leftBehind(): number {
    return this.#stuck.length;
  }

  #record(l: Lobby): LobbyRecord {
    return {
      lobbyId: l.info.lobbyId,
      sessionId: l.info.sessionId,
      pgid: l.info.pid as number,
      startTicks: l.startTicks,
      uid: l.uids[0] ?? null,
      workDir: l.workDir,
    };
  }

  #persist(): void {
    const live = [...this.#lobbies.values()].filter((l) => l.info.pid).map((l) => this.#record(l));
    const records = [...live, ...this.#stuck];
    try {
      this.#state?.write(records);
    } catch (err) {
      this.#log.error(
        { err },
        "cannot write the host's state file: a crash now would leave sandboxes behind",
      );
    }
  }

  #readReady(child: ChildProcess): Promise<{ display: string | null }> {
    return new Promise((resolve, reject) => {
      const lines = createInterface({ input: child.stdout! });
      const timer = setTimeout(
        () => reject(new Error(`no start report in ${this.#o.startTimeoutMs} ms`)),
        this.#o.startTimeoutMs,
      );
      child.once("error", reject);
      child.once("exit", (code) => reject(new Error(`launcher exited with ${code}`)));
      lines.once("line", (line) => {
        clearTimeout(timer);
        try {
          resolve(JSON.parse(line) as { display: string | null });
        } catch {
          reject(new Error(`bad start report: ${line.slice(0, 200)}`));
        }
      });
    });
  }

  #exited(lobby: Lobby, code: number | null, signal: NodeJS.Signals | null): void {
    const { lobbyId, sessionId } = lobby.info;
    if (lobby.stopping || lobby.info.state !== "running") return;
    // The leader is gone; take down anything it left behind before the slot is reused.
    lobby.stopping = this.#reap(lobby, "SIGKILL");
    this.#log.warn({ lobby_id: lobbyId, session_id: sessionId, code, signal }, "sandbox exited on its own");
    void lobby.stopping.then(() => this.#onExit({ lobbyId, sessionId, code, signal }));
  }

  /** True while a process of the sandbox is left: its group, or (users mode) its uids. */
  async #alive(lobby: Lobby): Promise<boolean> {
    if (lobby.info.pid && groupAlive(lobby.info.pid)) return true;
    return lobby.uids.length > 0 && (await processesOfUids(lobby.uids)).length > 0;
  }

  async #signal(lobby: Lobby, signal: NodeJS.Signals): Promise<void> {
    if (lobby.info.pid) signalGroup(lobby.info.pid, signal);
    if (lobby.uids.length === 0) return;
    for (const pid of await processesOfUids(lobby.uids)) {
      try {
        process.kill(pid, signal);
      } catch {}
    }
  }

  /** Waits, with backoff, until nothing of the sandbox is left or the deadline passes. */
  async #gone(lobby: Lobby, deadline: number): Promise<boolean> {
    for (let wait = 5; await this.#alive(lobby); wait = Math.min(wait * 2, 100)) {
      if (Date.now() >= deadline) return false;
      await delay(wait);
    }
    return true;
  }

  /** Signals the sandbox, escalates to SIGKILL, waits it out, frees its dir and slot. */
  async #reap(lobby: Lobby, first: "SIGTERM" | "SIGKILL"): Promise<void> {
    lobby.info.state = "stopping";
    const exited =
      lobby.child.exitCode !== null || lobby.child.signalCode !== null ? null : once(lobby.child, "exit");
    await this.#signal(lobby, first);
    if (!(await this.#gone(lobby, Date.now() + this.#o.stopTimeoutMs))) {
      if (first === "SIGTERM")
        this.#log.warn(
          { lobby_id: lobby.info.lobbyId, pid: lobby.info.pid },
          "sandbox did not stop in time: SIGKILL",
        );
      for (let round = 0; round < 3 && (await this.#alive(lobby)); round++) {
        await this.#signal(lobby, "SIGKILL");
        await this.#gone(lobby, Date.now() + this.#o.stopTimeoutMs);
      }
    }
    await exited;
    const clean = !(await this.#alive(lobby));
    if (clean)
      for (const dir of [lobby.workDir, lobby.appDir])
        if (dir) rmSync(dir, { recursive: true, force: true });
        else {
          this.#log.error({ lobby_id: lobby.info.lobbyId }, "processes of a stopped sandbox are still alive");
          if (lobby.info.pid) this.#stuck.push(this.#record(lobby));
        }
    this.#lobbies.delete(lobby.info.lobbyId);
    // A slot whose processes could not be killed is never reused: its uid is not clean.
    if (clean) this.#slots.delete(lobby.slot);
    this.#persist();
  }

  stop(lobbyId: string): Promise<void> {
    const lobby = this.#lobbies.get(lobbyId);
    if (!lobby) return Promise.reject(new LobbyNotFoundError(lobbyId));
    lobby.stopping ??= this.#reap(lobby, "SIGTERM").then(() =>
      this.#log.info({ lobby_id: lobbyId, session_id: lobby.info.sessionId }, "sandbox stopped"),
    );
    return lobby.stopping;
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      await Promise.allSettled([...this.#creating.values()]);
      await Promise.all([...this.#lobbies.keys()].map((id) => this.stop(id).catch(() => {})));
      if (this.#uidWindow) releaseUidRange(this.#uidWindow);
    })();
    return this.#closing;
  }
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
