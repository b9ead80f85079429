// The docker driver: each sandbox is one container of a Docker engine (Docker, or podman's
// compatible service), reached over the Engine API on its socket (docker-engine.ts), never the CLI.
// The container runs the sandbox image (`revdial image build`, sandbox-image.ts), whose entry point
// is the same launcher as the process driver's (lobby-launcher.ts: Xvfb, `revdial agent --desktop`
// dialing OUT to the API as sandbox-{session}, the desktop program), under the engine's init, so
// both drivers keep one behaviour. Its start report (one JSON line on stdout) is read from the
// container's log.
//
// Each container: the engine's init (--init); memory, CPU and pids limits; an unprivileged uid, no
// privileges, every capability dropped, no-new-privileges; a read-only root with a tmpfs /tmp and a
// writable workspace (/home/sandbox, a directory of the host's state dir bound in, removed with the
// container); no published port. Network: the host's, when the API is on loopback (a container on a
// bridge cannot reach the host's 127.0.0.1), else the engine's default bridge (see
// docs/containers.md for the host gateway names).
//
// Secrets: the sandbox's rds- key is written into the launch file (/run/revdial/launch.json, 0600,
// the container's uid, bound in from the state dir), which the launcher reads and deletes before it
// starts anything; it is never on a command line nor in the container's environment. The host's own
// key is never given to the container.
//
// Labels: revdial.managed=1, revdial.host (this host's id), revdial.session, revdial.lobby. They are
// the host's record: a host that starts (after a crash, say) adopts its running containers by label
// (the agent inside reconnects by itself) and removes the stopped ones, reporting them as exited;
// with adopt=false it removes them all. A container that ends on its own (engine's wait) is
// reported through onExit and removed. stop() stops (SIGTERM to the init, SIGKILL past the timeout)
// and removes the container with its volumes and its workspace.
//
// start() fails at once, naming the fix, when no engine answers or the image is missing.

import { randomUUID } from "node:crypto";
import { chownSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { InvalidOptionError } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";
import { DEFAULT_APP_COMMAND } from "./default-app.ts";
import { DEFAULT_DOCKER_HOST, DockerEngine, DockerEngineError, type EngineVersion } from "./docker-engine.ts";
import {
  DockerUnavailableError,
  HOST_ERROR_CODES,
  HostAtCapacityError,
  HostError,
  LobbyNotFoundError,
} from "./host-errors.ts";
import { ensurePrivateDir } from "./host-state.ts";
import type { LauncherSpec } from "./lobby-launcher.ts";
import type { ExitListener, LobbyInfo, LobbySpec, SandboxDriver } from "./sandbox-driver.ts";
import { DEFAULT_IMAGE, fullTag } from "./sandbox-image.ts";
import { newCookie, xauthorityFile } from "./xauthority.ts";

export type DockerNetwork = "auto" | "host" | "bridge" | (string & {});

export interface DockerDriverOptions {
  logger: Logger;
  /** unix:///path or tcp://host:port; default DOCKER_HOST, else unix:///var/run/docker.sock. */
  endpoint?: string;
  /** Deadline of the engine check (default 3 s). */
  pingTimeoutMs?: number;
  /** This host's id: the containers' revdial.host label (default "local"). */
  hostId?: string;
  /** The host's state dir: the containers' workspaces and launch files. Default: under the OS temp dir. */
  stateDir?: string;
  /** The sandbox image (default revdial-sandbox, built by `revdial image build`). */
  image?: string;
  /** Sandboxes at most (default 10). */
  maxSandboxes?: number;
  /** The desktop program (`sh -c`), default an xterm titled with the session. */
  app?: string | null;
  /** The agent program each sandbox's agent bridges (`revdial agent --agent-command`). */
  agentCommand?: string | null;
  /** Xvfb screen, WIDTHxHEIGHTxDEPTH (default 1280x800x24). */
  screen?: string;
  /** Memory limit in bytes, swap included (default 1 GiB). */
  memoryBytes?: number;
  /** CPUs (default 1). */
  cpus?: number;
  /** Processes and threads at most (default 256). */
  pidsLimit?: number;
  /** auto (host when the API is on loopback, else bridge), host, bridge, or a network's name. */
  network?: DockerNetwork;
  /** uid:gid the sandbox runs as (default 65532:65532). */
  user?: string;
  /** How long docker stop waits after SIGTERM before SIGKILL (default 5 s). */
  stopTimeoutMs?: number;
  /** How long a container gets to report its sandbox started (default 30 s). */
  startTimeoutMs?: number;
  /** Adopt this host's running containers at start (default true); false removes them. */
  adopt?: boolean;
  /** More labels on every container (e.g. to find a test's containers). */
  labels?: Record<string, string>;
  /** Environment for the sandbox agent only: the host's transport and TLS settings. */
  agentEnv?: Record<string, string>;
  /** PEM CA certificates the agent trusts (written into the workspace, named by REVDIAL_CA_FILE). */
  caPem?: string | null;
  onExit?: ExitListener;
}

export const DOCKER_DRIVER_DEFAULTS = Object.freeze({
  image: DEFAULT_IMAGE,
  maxSandboxes: 10,
  screen: "1280x800x24",
  memoryBytes: 1024 ** 3,
  cpus: 1,
  pidsLimit: 256,
  network: "auto" as DockerNetwork,
  user: "65532:65532",
  stopTimeoutMs: 5_000,
  startTimeoutMs: 30_000,
});

export const LABELS = Object.freeze({
  managed: "revdial.managed",
  host: "revdial.host",
  session: "revdial.session",
  lobby: "revdial.lobby",
});

/** Inside the container. */
const WORK_DIR = "/home/sandbox";
const RUN_DIR = "/run/revdial";
const MAIN_PATH = "/opt/revdial/src/cli/main.ts";

type Settings = Required<
  Omit<
    DockerDriverOptions,
    "logger" | "endpoint" | "pingTimeoutMs" | "onExit" | "caPem" | "agentCommand" | "app"
  >
> & { app: string | null; agentCommand: string | null; caPem: string | null };

interface Lobby {
  info: LobbyInfo;
  containerId: string;
  dir: string;
  stopping: Promise<void> | null;
  watch: AbortController;
}

/** Kept for callers of the engine check alone. */
export async function pingDocker(endpoint: string, timeoutMs: number): Promise<void> {
  await new DockerEngine(endpoint).ping(timeoutMs);
}

/** "1g", "512m", "1073741824" → bytes. */
export function parseBytes(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$/i.exec(text.trim());
  if (!m) throw new InvalidOptionError("memory", `expected a size like 512m or 2g, got "${text}"`);
  const scale = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2].toLowerCase() as "k"];
  return Math.round(Number(m[1]) * scale);
}

function isLoopback(url: string): boolean {
  const host = new URL(url).hostname.replace(/^\[|\]$/g, "");
  return host === "localhost" || host === "::1" || /^127\./.test(host);
}

export class DockerDriver implements SandboxDriver {
  readonly name = "docker" as const;
  readonly engine: DockerEngine;
  readonly #log: Logger;
  readonly #pingTimeoutMs: number;
  readonly #o: Settings;
  readonly #onExit: ExitListener;
  readonly #lobbies = new Map<string, Lobby>();
  readonly #creating = new Map<string, Promise<LobbyInfo>>();
  #version: EngineVersion | null = null;
  #started = false;
  #closing: Promise<void> | null = null;

  constructor(options: DockerDriverOptions) {
    if (!options?.logger) throw new InvalidOptionError("logger", "is required");
    const endpoint = options.endpoint || process.env.DOCKER_HOST || DEFAULT_DOCKER_HOST;
    if (!/^(unix|tcp|http):\/\//.test(endpoint))
      throw new InvalidOptionError("endpoint", `expected unix:///path or tcp://host:port, got "${endpoint}"`);
    this.engine = new DockerEngine(endpoint);
    this.#log = options.logger;
    this.#pingTimeoutMs = options.pingTimeoutMs ?? 3_000;
    const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
    const hostId = options.hostId ?? "local";
    const o = {
      ...DOCKER_DRIVER_DEFAULTS,
      hostId,
      stateDir: join(process.env.TMPDIR || "/tmp", `revdial-docker-${process.getuid?.() ?? "u"}-${hostId}`),
      adopt: true,
      labels: {},
      agentEnv: {},
      ...given,
    } as Settings;
    if (!Number.isInteger(o.maxSandboxes) || o.maxSandboxes < 1)
      throw new InvalidOptionError("maxSandboxes", "must be a positive integer");
    if (!/^\d+x\d+x\d+$/.test(o.screen))
      throw new InvalidOptionError("screen", "expected WIDTHxHEIGHTxDEPTH");
    if (!(o.memoryBytes >= 16 * 1024 ** 2)) throw new InvalidOptionError("memory", "must be at least 16m");
    if (!(o.cpus > 0)) throw new InvalidOptionError("cpus", "must be > 0");
    if (!Number.isInteger(o.pidsLimit) || o.pidsLimit < 16)
      throw new InvalidOptionError("pidsLimit", "must be an integer of at least 16");
    if (!/^\d+:\d+$/.test(o.user)) throw new InvalidOptionError("user", "expected UID:GID");
    if (o.user.startsWith("0:")) throw new InvalidOptionError("user", "a sandbox never runs as root");
    this.#o = {
      ...o,
      image: fullTag(o.image),
      app: options.app === undefined ? null : options.app,
      agentCommand: options.agentCommand ?? null,
      caPem: options.caPem ?? null,
    };
    this.#onExit = options.onExit ?? (() => {});
  }

  /** The engine's name and version, once started. */
  get engineVersion(): EngineVersion | null {
    return this.#version;
  }

  /** "Podman Engine 4.3.1 (API 1.41)", once started. */
  describeEngine(): string {
    const v = this.#version;
    return v ? `${v.name} ${v.version} (API ${v.apiVersion})` : "not started";
  }

  /** What the host adds to its registration: the driver and the engine. */
  labels(): Record<string, string> {
    return { "revdial.driver": this.name, "revdial.engine": this.describeEngine() };
  }

  /** The container of a lobby (for operators' logs and the tests). */
  containerOf(lobbyId: string): string | null {
    return this.#lobbies.get(lobbyId)?.containerId ?? null;
  }

  async start(): Promise<void> {
    if (this.#started) return;
    try {
      await this.engine.ping(this.#pingTimeoutMs);
      this.#version = await this.engine.version();
    } catch (err) {
      const reason = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      throw new DockerUnavailableError(this.engine.endpoint, reason);
    }
    if (!(await this.engine.image(this.#o.image)))
      throw new HostError(
        HOST_ERROR_CODES.dockerUnavailable,
        500,
        `driver docker: the engine at ${this.engine.endpoint} has no image ${this.#o.image}; ` +
          `build it with \`revdial image build --tag ${this.#o.image} --docker-host ${this.engine.endpoint}\``,
      );
    ensurePrivateDir(this.#o.stateDir);
    mkdirSync(join(this.#o.stateDir, "containers"), { recursive: true, mode: 0o700 });
    await this.#recover();
    this.#started = true;
    this.#log.info(
      { engine: this.describeEngine(), endpoint: this.engine.endpoint, image: this.#o.image },
      "docker driver started",
    );
  }

  /** Adopts (or removes) the containers a previous host with this id left; removes stale workspaces. */
  async #recover(): Promise<void> {
    const left = await this.engine.listContainers({ [LABELS.managed]: "1", [LABELS.host]: this.#o.hostId });
    const kept = new Set<string>();
    for (const c of left) {
      const labels = c.Labels ?? {};
      // Labels are the engine's, but a lobby id becomes a path here: only a UUID is taken.
      const lobbyId = /^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$/.test(labels[LABELS.lobby] ?? "")
        ? labels[LABELS.lobby]
        : "";
      const sessionId = labels[LABELS.session];
      const dir = lobbyId ? join(this.#o.stateDir, "containers", lobbyId) : "";
      const ready = c.State === "running" ? await this.#readyReport(c.Id) : null;
      if (this.#o.adopt && c.State === "running" && lobbyId && sessionId && ready) {
        const lobby: Lobby = {
          info: {
            lobbyId,
            sessionId,
            state: "running",
            pid: null,
            display: ready.display,
            startedAt: c.Created ? new Date(c.Created * 1000) : new Date(),
          },
          containerId: c.Id,
          dir,
          stopping: null,
          watch: new AbortController(),
        };
        this.#lobbies.set(lobbyId, lobby);
        kept.add(lobbyId);
        this.#watch(lobby);
        this.#log.info(
          { lobby_id: lobbyId, session_id: sessionId, container: c.Id.slice(0, 12) },
          "adopted a sandbox container left by a previous host",
        );
        continue;
      }
      let code: number | null = null;
      try {
        code = (await this.engine.inspectContainer(c.Id)).State.ExitCode;
      } catch {}
      await this.engine.removeContainer(c.Id);
      if (dir) rmSync(dir, { recursive: true, force: true });
      this.#log.warn(
        { lobby_id: lobbyId, session_id: sessionId, container: c.Id.slice(0, 12), state: c.State },
        "removed a sandbox container left by a previous host",
      );
      if (lobbyId && sessionId)
        this.#onExit({
          lobbyId,
          sessionId,
          code: c.State === "running" ? null : code,
          signal: c.State === "running" ? "SIGKILL" : null,
        });
    }
    for (const entry of readdirSync(join(this.#o.stateDir, "containers")))
      if (!kept.has(entry))
        rmSync(join(this.#o.stateDir, "containers", entry), { recursive: true, force: true });
  }

  list(): LobbyInfo[] {
    return [...this.#lobbies.values()].map((l) => ({ ...l.info }));
  }

  create(spec: LobbySpec): Promise<LobbyInfo> {
    if (this.#closing)
      return Promise.reject(new HostError(HOST_ERROR_CODES.launchFailed, 503, "host is shutting down"));
    if (!this.#started)
      return Promise.reject(
        new HostError(HOST_ERROR_CODES.launchFailed, 503, "the docker driver is not started"),
      );
    const pending = this.#creating.get(spec.sessionId);
    if (pending) return pending;
    const existing = [...this.#lobbies.values()].find(
      (l) => l.info.sessionId === spec.sessionId && l.info.state === "running",
    );
    if (existing) return Promise.resolve({ ...existing.info });
    // A create in flight is in #lobbies once its container exists: count each sandbox once.
    const live = new Set([...this.#lobbies.values()].map((l) => l.info.sessionId));
    const inFlight = [...this.#creating.keys()].filter((sid) => !live.has(sid)).length;
    if (this.#lobbies.size + inFlight >= this.#o.maxSandboxes)
      return Promise.reject(new HostAtCapacityError(this.#o.maxSandboxes));
    const creating = this.#launch(spec).finally(() => this.#creating.delete(spec.sessionId));
    this.#creating.set(spec.sessionId, creating);
    return creating;
  }

  /** The workspace (HOME, X cookie, CA file) and the run dir (the launch file), owned by the sandbox's uid. */
  #prepare(dir: string, launch: LauncherSpec): void {
    const [uid, gid] = this.#o.user.split(":").map(Number);
    rmSync(dir, { recursive: true, force: true });
    const work = join(dir, "work");
    const run = join(dir, "run");
    mkdirSync(dir, { mode: 0o700 });
    for (const d of [work, join(work, "run"), run]) {
      mkdirSync(d, { mode: 0o700 });
      chownSync(d, uid, gid);
    }
    const files: [string, string | Buffer][] = [[join(work, ".Xauthority"), xauthorityFile(newCookie())]];
    if (this.#o.caPem) files.push([join(work, "ca.pem"), this.#o.caPem]);
    files.push([join(run, "launch.json"), `${JSON.stringify(launch)}\n`]);
    for (const [file, content] of files) {
      writeFileSync(file, content, { mode: 0o600 });
      chownSync(file, uid, gid);
    }
  }

  #network(serverUrl: string): string {
    const n = this.#o.network;
    if (n !== "auto") return n;
    return isLoopback(serverUrl) ? "host" : "bridge";
  }

  async #launch(spec: LobbySpec): Promise<LobbyInfo> {
    const lobbyId = randomUUID();
    const log = this.#log.child({ lobby_id: lobbyId, session_id: spec.sessionId });
    const dir = join(this.#o.stateDir, "containers", lobbyId);
    const agentEnv = { ...this.#o.agentEnv };
    if (this.#o.caPem) agentEnv.REVDIAL_CA_FILE = join(WORK_DIR, "ca.pem");
    // The image has xterm (sandbox-image.ts), so the default app needs no check on this host's PATH.
    const app = this.#o.app ?? DEFAULT_APP_COMMAND;
    const launch: LauncherSpec = {
      sessionId: spec.sessionId,
      serverUrl: spec.serverUrl,
      mainPath: MAIN_PATH,
      app,
      agentCommand: this.#o.agentCommand,
      env: spec.env,
      screen: this.#o.screen,
      workDir: WORK_DIR,
      appHome: WORK_DIR,
      drop: null,
      token: spec.sandboxToken,
      agentEnv,
      lang: "C.UTF-8",
    };
    const network = this.#network(spec.serverUrl);
    const hostName = new URL(spec.serverUrl).hostname;
    const body = {
      Image: this.#o.image,
      User: this.#o.user,
      Env: [
        `HOME=${WORK_DIR}`,
        "LANG=C.UTF-8",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        `REVDIAL_LAUNCH_FILE=${RUN_DIR}/launch.json`,
      ],
      WorkingDir: WORK_DIR,
      Labels: {
        ...this.#o.labels,
        [LABELS.managed]: "1",
        [LABELS.host]: this.#o.hostId,
        [LABELS.session]: spec.sessionId,
        [LABELS.lobby]: lobbyId,
      },
      HostConfig: {
        Init: true,
        Memory: this.#o.memoryBytes,
        MemorySwap: this.#o.memoryBytes,
        NanoCpus: Math.round(this.#o.cpus * 1e9),
        PidsLimit: this.#o.pidsLimit,
        Privileged: false,
        CapDrop: ["ALL"],
        SecurityOpt: ["no-new-privileges"],
        ReadonlyRootfs: true,
        Tmpfs: { "/tmp": "rw,nosuid,nodev,size=256m,mode=1777" },
        Binds: [`${join(dir, "work")}:${WORK_DIR}:rw`, `${join(dir, "run")}:${RUN_DIR}:rw`],
        NetworkMode: network,
        ExtraHosts:
          network !== "host" && hostName === "host.docker.internal"
            ? ["host.docker.internal:host-gateway"]
            : [],
        PortBindings: {},
        PublishAllPorts: false,
        RestartPolicy: { Name: "no" },
      },
    };
    let containerId = "";
    const fail = async (what: string, err: unknown): Promise<never> => {
      if (containerId) await this.engine.removeContainer(containerId).catch(() => {});
      rmSync(dir, { recursive: true, force: true });
      this.#lobbies.delete(lobbyId);
      throw new HostError(HOST_ERROR_CODES.launchFailed, 500, `${what}: ${(err as Error).message}`, {
        cause: err,
      });
    };
    try {
      this.#prepare(dir, launch);
    } catch (err) {
      return fail("cannot make the sandbox's workspace", err);
    }
    const name = `revdial-${this.#o.hostId}-${spec.sessionId}`;
    try {
      containerId = await this.engine.createContainer(name, body).catch(async (err) => {
        // A container of that name left by a host that did not adopt it: ours to replace.
        if (!(err instanceof DockerEngineError && err.status === 409)) throw err;
        await this.engine.removeContainer(name);
        return this.engine.createContainer(name, body);
      });
    } catch (err) {
      return fail("the engine did not create the container", err);
    }
    const info: LobbyInfo = {
      lobbyId,
      sessionId: spec.sessionId,
      state: "starting",
      pid: null,
      display: null,
      startedAt: new Date(),
    };
    const lobby: Lobby = { info, containerId, dir, stopping: null, watch: new AbortController() };
    this.#lobbies.set(lobbyId, lobby);
    try {
      await this.engine.startContainer(containerId);
    } catch (err) {
      return fail("the engine did not start the container", err);
    }
    this.#watch(lobby);
    try {
      const ready = await this.#waitReady(lobby);
      info.display = ready.display;
    } catch (err) {
      const logs = await this.#tail(containerId);
      lobby.stopping = this.#remove(lobby);
      await lobby.stopping;
      throw new HostError(
        HOST_ERROR_CODES.launchFailed,
        500,
        `sandbox container did not start: ${(err as Error).message}${logs ? ` (${logs})` : ""}`,
        { cause: err },
      );
    }
    info.state = "running";
    log.info(
      { container: containerId.slice(0, 12), display: info.display, network, image: this.#o.image },
      "sandbox container started",
    );
    return { ...info };
  }

  /** The last lines the container wrote (its stderr), for a start failure's message. */
  async #tail(id: string): Promise<string> {
    try {
      return (await this.engine.logs(id, 5)).replace(/\s+/g, " ").trim().slice(-500);
    } catch {
      return "";
    }
  }

  /** The launcher's start report, from the container's stdout, or null while there is none. */
  async #readyReport(id: string): Promise<{ display: string | null } | null> {
    let out: string;
    try {
      out = await this.engine.logs(id, "all", { stdout: true, stderr: false });
    } catch {
      return null;
    }
    return parseReady(out);
  }

  /** Waits for the launcher's start report; fails when the container stops first or the deadline passes. */
  async #waitReady(lobby: Lobby): Promise<{ display: string | null }> {
    const deadline = Date.now() + this.#o.startTimeoutMs;
    for (let wait = 20; ; wait = Math.min(wait * 2, 250)) {
      const ready = await this.#readyReport(lobby.containerId);
      if (ready) return ready;
      if (lobby.stopping || !this.#lobbies.has(lobby.info.lobbyId))
        throw new Error("it stopped while starting");
      if (Date.now() > deadline) throw new Error(`no start report in ${this.#o.startTimeoutMs} ms`);
      await delay(wait);
    }
  }

  /** Reports a container that ends on its own (the engine's wait), then removes it. */
  #watch(lobby: Lobby): void {
    const { lobbyId, sessionId } = lobby.info;
    void (async () => {
      for (let attempt = 0; !lobby.watch.signal.aborted; attempt++) {
        let code: number;
        try {
          code = await this.engine.waitContainer(lobby.containerId, lobby.watch.signal);
        } catch (err) {
          if (lobby.watch.signal.aborted || lobby.stopping) return;
          if (err instanceof DockerEngineError && err.status === 404) code = -1;
          else {
            this.#log.warn(
              { lobby_id: lobbyId, err: (err as Error).message },
              "lost the engine's wait; retrying",
            );
            await delay(Math.min(250 * 2 ** attempt, 5_000));
            continue;
          }
        }
        if (lobby.stopping || lobby.watch.signal.aborted) return;
        let oom = false;
        try {
          oom = (await this.engine.inspectContainer(lobby.containerId)).State.OOMKilled === true;
        } catch {}
        const output = await this.#tail(lobby.containerId);
        this.#log.warn(
          {
            lobby_id: lobbyId,
            session_id: sessionId,
            container: lobby.containerId.slice(0, 12),
            code,
            oom,
            output,
          },
          "sandbox container exited on its own",
        );
        const wasRunning = lobby.info.state === "running";
        lobby.stopping = this.#remove(lobby);
        await lobby.stopping;
        if (wasRunning)
          this.#onExit({ lobbyId, sessionId, code: code >= 0 ? code : null, signal: oom ? "SIGKILL" : null });
        return;
      }
    })();
  }

  /** Stops and removes the container and its workspace; forgets the lobby. */
  async #remove(lobby: Lobby): Promise<void> {
    lobby.info.state = "stopping";
    try {
      await this.engine.stopContainer(lobby.containerId, Math.ceil(this.#o.stopTimeoutMs / 1000));
    } catch (err) {
      this.#log.warn(
        { lobby_id: lobby.info.lobbyId, err: (err as Error).message },
        "docker stop failed; removing by force",
      );
    }
    lobby.watch.abort();
    try {
      await this.engine.removeContainer(lobby.containerId);
    } catch (err) {
      this.#log.error(
        {
          lobby_id: lobby.info.lobbyId,
          container: lobby.containerId.slice(0, 12),
          err: (err as Error).message,
        },
        "could not remove a sandbox container; the next host with this id removes it",
      );
    }
    rmSync(lobby.dir, { recursive: true, force: true });
    this.#lobbies.delete(lobby.info.lobbyId);
  }

  stop(lobbyId: string): Promise<void> {
    const lobby = this.#lobbies.get(lobbyId);
    if (!lobby) return Promise.reject(new LobbyNotFoundError(lobbyId));
    lobby.stopping ??= this.#remove(lobby).then(() =>
      this.#log.info(
        { lobby_id: lobbyId, session_id: lobby.info.sessionId },
        "sandbox container stopped and removed",
      ),
    );
    return lobby.stopping;
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      await Promise.allSettled([...this.#creating.values()]);
      await Promise.all([...this.#lobbies.keys()].map((id) => this.stop(id).catch(() => {})));
    })();
    return this.#closing;
  }

  /** The memory a sandbox's container uses now, in bytes (the engine's stats). */
  memoryOf(lobbyId: string): Promise<number> {
    const lobby = this.#lobbies.get(lobbyId);
    if (!lobby) return Promise.reject(new LobbyNotFoundError(lobbyId));
    return this.engine.memoryUsage(lobby.containerId);
  }
}

/**
 * The launcher's start report: the first line of its stdout that is a JSON object (the sandbox
 * can write there too, so only a display of the form :N is taken from it).
 */
export function parseReady(stdout: string): { display: string | null } | null {
  for (const line of stdout.split("\n").slice(0, 50)) {
    if (!line.startsWith("{") || line.length > 16 * 1024) continue;
    try {
      const parsed = JSON.parse(line) as { display?: unknown };
      const display =
        typeof parsed.display === "string" && /^:\d{1,5}$/.test(parsed.display) ? parsed.display : null;
      return { display };
    } catch {}
  }
  return null;
}
