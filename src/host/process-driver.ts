// The process driver: each sandbox is a process group on this machine, led by lobby-launcher.ts
// (Xvfb on a free display, the sandbox agent, the optional app). Stopping signals the whole group
// and waits, bounded, until no process of it is left (SIGTERM, then SIGKILL past stopTimeoutMs), so
// a stopped sandbox leaves no orphans. A group that ends on its own is reported through onExit.
//
// Concurrency: create() counts a lobby against maxSandboxes from the moment it is called, so
// concurrent creates never overshoot; a second create for the same session returns the first lobby.

import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { InvalidOptionError } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";
import { HOST_ERROR_CODES, HostAtCapacityError, HostError, LobbyNotFoundError } from "./host-errors.ts";
import type { LauncherSpec } from "./lobby-launcher.ts";
import type { ExitListener, LobbyInfo, LobbySpec, SandboxDriver } from "./sandbox-driver.ts";

export interface ProcessDriverOptions {
  logger: Logger;
  /** Lobbies at most (default 10). */
  maxSandboxes?: number;
  /** A command started on each sandbox's display (`sh -c`), e.g. an editor. */
  app?: string | null;
  /** The agent program each sandbox's agent runs and bridges (`revdial agent --agent-command`). */
  agentCommand?: string | null;
  /** Xvfb screen, WIDTHxHEIGHTxDEPTH (default 1280x800x24). */
  screen?: string;
  /** How long a stopped group gets to exit after SIGTERM before SIGKILL (default 5 s). */
  stopTimeoutMs?: number;
  /** How long a launcher gets to report its sandbox started (default 20 s). */
  startTimeoutMs?: number;
  onExit?: ExitListener;
}

export const PROCESS_DRIVER_DEFAULTS = Object.freeze({
  maxSandboxes: 10,
  screen: "1280x800x24",
  stopTimeoutMs: 5_000,
  startTimeoutMs: 20_000,
});

const LAUNCHER_PATH = fileURLToPath(new URL("./lobby-launcher.ts", import.meta.url));
const MAIN_PATH = fileURLToPath(new URL("../cli/main.ts", import.meta.url));
/** Longest stderr line of a sandbox passed to the host's log. */
const MAX_LOG_LINE = 2000;

interface Lobby {
  info: LobbyInfo;
  child: ChildProcess;
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

/** Waits, with backoff, until the group is empty or the deadline passes; true when empty. */
async function groupGone(pgid: number, deadline: number): Promise<boolean> {
  for (let wait = 5; groupAlive(pgid); wait = Math.min(wait * 2, 100)) {
    if (Date.now() >= deadline) return false;
    await delay(wait);
  }
  return true;
}

export class ProcessDriver implements SandboxDriver {
  readonly name = "process" as const;
  readonly #log: Logger;
  readonly #o: Required<Omit<ProcessDriverOptions, "logger" | "onExit" | "app" | "agentCommand">> & {
    app: string | null;
    agentCommand: string | null;
  };
  readonly #onExit: ExitListener;
  readonly #lobbies = new Map<string, Lobby>();
  /** Creates in flight, by session id, so a retry joins the first. */
  readonly #creating = new Map<string, Promise<LobbyInfo>>();
  #closing: Promise<void> | null = null;

  constructor(options: ProcessDriverOptions) {
    if (!options?.logger) throw new InvalidOptionError("logger", "is required");
    const o = { ...PROCESS_DRIVER_DEFAULTS, ...stripUndefined(options) };
    if (!Number.isInteger(o.maxSandboxes) || o.maxSandboxes < 1)
      throw new InvalidOptionError("maxSandboxes", "must be a positive integer");
    if (!/^\d+x\d+x\d+$/.test(o.screen))
      throw new InvalidOptionError("screen", "expected WIDTHxHEIGHTxDEPTH");
    for (const name of ["stopTimeoutMs", "startTimeoutMs"] as const)
      if (!(o[name] > 0)) throw new InvalidOptionError(name, "must be > 0");
    this.#log = options.logger;
    this.#o = { ...o, app: options.app ?? null, agentCommand: options.agentCommand ?? null };
    this.#onExit = options.onExit ?? (() => {});
  }

  async start(): Promise<void> {}

  list(): LobbyInfo[] {
    return [...this.#lobbies.values()].map((l) => ({ ...l.info }));
  }

  create(spec: LobbySpec): Promise<LobbyInfo> {
    if (this.#closing)
      return Promise.reject(new HostError(HOST_ERROR_CODES.launchFailed, 503, "host is shutting down"));
    const existing = [...this.#lobbies.values()].find((l) => l.info.sessionId === spec.sessionId);
    if (existing) return Promise.resolve({ ...existing.info });
    const pending = this.#creating.get(spec.sessionId);
    if (pending) return pending;
    if (this.#lobbies.size + this.#creating.size >= this.#o.maxSandboxes)
      return Promise.reject(new HostAtCapacityError(this.#o.maxSandboxes));
    const creating = this.#launch(spec).finally(() => this.#creating.delete(spec.sessionId));
    this.#creating.set(spec.sessionId, creating);
    return creating;
  }

  async #launch(spec: LobbySpec): Promise<LobbyInfo> {
    const lobbyId = randomUUID();
    const log = this.#log.child({ lobby_id: lobbyId, session_id: spec.sessionId });
    const launcherSpec: LauncherSpec = {
      sessionId: spec.sessionId,
      serverUrl: spec.serverUrl,
      mainPath: MAIN_PATH,
      app: this.#o.app,
      agentCommand: this.#o.agentCommand,
      env: spec.env,
      screen: this.#o.screen,
    };
    const child = spawn(process.execPath, [LAUNCHER_PATH], {
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
      env: {
        ...process.env,
        REVDIAL_LOBBY_SPEC: JSON.stringify(launcherSpec),
        REVDIAL_TOKEN: spec.sandboxToken,
      },
    });
    const info: LobbyInfo = {
      lobbyId,
      sessionId: spec.sessionId,
      state: "starting",
      pid: child.pid ?? null,
      display: null,
      startedAt: new Date(),
    };
    const lobby: Lobby = { info, child, stopping: null };
    createInterface({ input: child.stderr! }).on("line", (line) =>
      log.debug({ line: line.slice(0, MAX_LOG_LINE) }, "sandbox output"),
    );
    child.once("exit", (code, signal) => this.#exited(lobby, code, signal));
    try {
      const ready = await this.#readReady(child);
      info.display = ready.display;
    } catch (err) {
      if (info.pid) signalGroup(info.pid, "SIGKILL");
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
    this.#lobbies.set(lobbyId, lobby);
    log.info({ pid: info.pid, display: info.display }, "sandbox started");
    return { ...info };
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
    const { lobbyId, sessionId, pid } = lobby.info;
    if (lobby.stopping || !this.#lobbies.has(lobbyId)) return;
    this.#lobbies.delete(lobbyId);
    // The leader is gone; take down anything of the group it left behind.
    if (pid) signalGroup(pid, "SIGKILL");
    this.#log.warn({ lobby_id: lobbyId, session_id: sessionId, code, signal }, "sandbox exited on its own");
    this.#onExit({ lobbyId, sessionId, code, signal });
  }

  stop(lobbyId: string): Promise<void> {
    const lobby = this.#lobbies.get(lobbyId);
    if (!lobby) return Promise.reject(new LobbyNotFoundError(lobbyId));
    lobby.stopping ??= this.#stopGroup(lobby).finally(() => this.#lobbies.delete(lobbyId));
    return lobby.stopping;
  }

  async #stopGroup(lobby: Lobby): Promise<void> {
    lobby.info.state = "stopping";
    const pid = lobby.info.pid;
    if (!pid) return;
    const exited =
      lobby.child.exitCode !== null || lobby.child.signalCode !== null ? null : once(lobby.child, "exit");
    signalGroup(pid, "SIGTERM");
    if (!(await groupGone(pid, Date.now() + this.#o.stopTimeoutMs))) {
      this.#log.warn({ lobby_id: lobby.info.lobbyId, pid }, "sandbox did not stop in time: SIGKILL");
      signalGroup(pid, "SIGKILL");
      await groupGone(pid, Date.now() + this.#o.stopTimeoutMs);
    }
    await exited;
    this.#log.info({ lobby_id: lobby.info.lobbyId, session_id: lobby.info.sessionId }, "sandbox stopped");
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      await Promise.allSettled([...this.#creating.values()]);
      await Promise.all([...this.#lobbies.keys()].map((id) => this.stop(id).catch(() => {})));
    })();
    return this.#closing;
  }
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
