// A sandbox host ("Wolf instance"): what `revdial wolf run` and `revdial server --with-local-host`
// run. It registers itself with the API (runner token), heartbeats, and dials out as `wolf-{id}`,
// serving its lobby API (lobby-server.ts) through that tunnel only: the API never connects to a host.
// Sandboxes are made by a driver (process or docker). A sandbox that ends on its own is reported to
// the API: POST /api/v1/wolf-instances/{id}/lobbies/{lobby}/exited {session_id, exit_code, signal}.
// When the API has missed a report, it reconciles on reconnect by asking GET /lobbies.
//
// Its state dir (--state-dir, 0700) holds the lobby API's socket and the process driver's record of
// live sandboxes; a host started after a crash kills what is left there and reports those lobbies
// as exited once it is registered.
//
// close() stops heartbeats, closes the tunnel, stops every sandbox (no orphans), then the lobby API.

import { rmSync } from "node:fs";
import { join } from "node:path";
import { TargetMap } from "../agent/target-map.ts";
import { AgentClient, type AgentClientOptions, type AgentExit } from "../agent/tunnel-client.ts";
import { Backoff, waitOrAbort } from "../common/backoff.ts";
import { InvalidOptionError } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";
import { ControlPlaneCallError, ControlPlaneClient } from "./control-plane-client.ts";
import { DockerDriver, type DockerDriverOptions } from "./docker-driver.ts";
import { defaultStateDir } from "./host-state.ts";
import type { IsolationRequest, UidRange } from "./isolation.ts";
import { type LobbyServer, startLobbyServer } from "./lobby-server.ts";
import { ProcessDriver } from "./process-driver.ts";
import type { LobbyExit, SandboxDriver } from "./sandbox-driver.ts";

export const HOST_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** The tunnel target name the API uses for the lobby API. */
export const LOBBY_TARGET = "lobbies";

export interface WolfHostOptions {
  serverUrl: string;
  /** The runner token. */
  token: string;
  id: string;
  /** Default: the id. */
  name?: string;
  /** Default 10. */
  maxSandboxes?: number;
  driver?: "process" | "docker" | SandboxDriver;
  /** Command run on each sandbox's display (process driver). */
  app?: string | null;
  /** Agent program bridged to each sandbox's session (process driver; `revdial agent --agent-command`). */
  agentCommand?: string | null;
  labels?: Record<string, string>;
  /** Default 30 s. */
  heartbeatIntervalMs?: number;
  /** Registration retry backoff ceiling (default 10 s); retries go on until close(). */
  registerBackoffCapMs?: number;
  /** Extra tunnel client options (backoff, dead-link timeout, TLS). */
  agent?: Partial<Omit<AgentClientOptions, "serverUrl" | "runnerId" | "token" | "targets" | "logger">>;
  /** Process driver timings. */
  stopTimeoutMs?: number;
  /** The host's state dir (0700): lobby API socket, live sandboxes. Default: per user and id under the OS temp dir. */
  stateDir?: string;
  /** Remove the state dir after a clean close (default: true for the default dir, false for a given one). */
  removeStateDirOnClose?: boolean;
  /** Sandbox isolation of the process driver (default auto: fails where none is possible). */
  isolation?: IsolationRequest;
  /** auto falls back to unsafe-shared-user (logged) instead of failing. */
  allowSharedFallback?: boolean;
  /** uids of the users isolation mode (default 200000-200999). */
  sandboxUids?: UidRange;
  /** Docker driver settings: engine, image, limits, network (docker-driver.ts). */
  docker?: Partial<Omit<DockerDriverOptions, "logger" | "onExit">>;
  logger: Logger;
}

export const WOLF_HOST_DEFAULTS = Object.freeze({
  maxSandboxes: 10,
  heartbeatIntervalMs: 30_000,
  registerBackoffCapMs: 10_000,
});

function validate(o: WolfHostOptions): void {
  if (!o?.logger) throw new InvalidOptionError("logger", "is required");
  if (!o.serverUrl) throw new InvalidOptionError("serverUrl", "is required");
  if (!o.token) throw new InvalidOptionError("token", "is required");
  if (!HOST_ID_PATTERN.test(o.id ?? ""))
    throw new InvalidOptionError("id", "letters, digits, . _ - (at most 64)");
  const max = o.maxSandboxes;
  if (max !== undefined && (!Number.isInteger(max) || max < 1 || max > 10_000))
    throw new InvalidOptionError("maxSandboxes", "must be an integer from 1 to 10000");
  const hb = o.heartbeatIntervalMs;
  if (hb !== undefined && !(hb > 0)) throw new InvalidOptionError("heartbeatIntervalMs", "must be > 0");
}

export class WolfHost {
  readonly id: string;
  readonly name: string;
  readonly maxSandboxes: number;
  readonly driver: SandboxDriver;
  readonly #o: WolfHostOptions;
  readonly #log: Logger;
  readonly #api: ControlPlaneClient;
  readonly #heartbeatMs: number;
  #lobbyServer: LobbyServer | null = null;
  #agent: AgentClient | null = null;
  #agentDone: Promise<AgentExit> | null = null;
  #heartbeat: NodeJS.Timeout | null = null;
  #closing: Promise<void> | null = null;
  readonly #stop = new AbortController();
  readonly stateDir: string;
  /** Exits found before registration (leftovers of a crashed host), reported once registered. */
  #unreported: LobbyExit[] | null = [];
  /** Set once the driver started: the state dir is then this host's to remove. */
  #started = false;

  constructor(options: WolfHostOptions) {
    validate(options);
    this.#o = options;
    this.id = options.id;
    this.name = options.name || options.id;
    this.maxSandboxes = options.maxSandboxes ?? WOLF_HOST_DEFAULTS.maxSandboxes;
    this.#heartbeatMs = options.heartbeatIntervalMs ?? WOLF_HOST_DEFAULTS.heartbeatIntervalMs;
    this.#log = options.logger.child({ wolf_id: this.id });
    const tls = options.agent?.tls;
    this.#api = new ControlPlaneClient({
      serverUrl: options.serverUrl,
      token: options.token,
      tls: tls
        ? { ca: tls.ca as string[] | undefined, rejectUnauthorized: tls.rejectUnauthorized !== false }
        : null,
    });
    this.stateDir = options.stateDir ?? defaultStateDir(this.id);
    this.driver = this.#makeDriver(options.driver ?? "process");
  }

  get runnerId(): string {
    return `wolf-${this.id}`;
  }

  #makeDriver(driver: "process" | "docker" | SandboxDriver): SandboxDriver {
    if (typeof driver === "object") return driver;
    if (driver !== "process" && driver !== "docker")
      throw new InvalidOptionError("driver", `expected process or docker, got "${driver}"`);
    const agent = this.#o.agent;
    const agentEnv: Record<string, string> = {};
    if (agent?.transport) agentEnv.REVDIAL_TRANSPORT = agent.transport;
    if (agent?.protocol) agentEnv.REVDIAL_PROTOCOL = agent.protocol;
    if (agent?.tls?.rejectUnauthorized === false) agentEnv.REVDIAL_INSECURE = "1";
    const ca = agent?.tls?.ca as string[] | undefined;
    if (driver === "docker")
      return new DockerDriver({
        logger: this.#log,
        hostId: this.id,
        stateDir: this.stateDir,
        maxSandboxes: this.maxSandboxes,
        app: this.#o.app,
        agentCommand: this.#o.agentCommand,
        stopTimeoutMs: this.#o.stopTimeoutMs,
        agentEnv,
        caPem: ca ? ca.join("\n") : null,
        ...this.#o.docker,
        onExit: (exit) => this.#reportExit(exit),
      });
    return new ProcessDriver({
      logger: this.#log,
      stateDir: this.stateDir,
      maxSandboxes: this.maxSandboxes,
      app: this.#o.app,
      agentCommand: this.#o.agentCommand,
      stopTimeoutMs: this.#o.stopTimeoutMs,
      isolation: this.#o.isolation,
      allowSharedFallback: this.#o.allowSharedFallback,
      sandboxUids: this.#o.sandboxUids,
      agentEnv,
      caPem: ca ? ca.join("\n") : null,
      onExit: (exit) => this.#reportExit(exit),
    });
  }

  /** Checks the driver, registers, starts heartbeats and the tunnel. Resolves once registered. */
  async start(): Promise<void> {
    await this.driver.start();
    this.#started = true;
    this.#lobbyServer = await startLobbyServer({
      driver: this.driver,
      logger: this.#log,
      socketDir: join(this.stateDir, "api"),
    });
    await this.#registerUntilDone();
    if (this.#stop.signal.aborted) return;
    const unreported = this.#unreported ?? [];
    this.#unreported = null;
    for (const exit of unreported) this.#reportExit(exit);
    this.#scheduleHeartbeat();
    this.#agent = new AgentClient({
      ...this.#o.agent,
      serverUrl: this.#o.serverUrl,
      runnerId: this.runnerId,
      token: this.#o.token,
      targets: new TargetMap({ [LOBBY_TARGET]: this.#lobbyServer.address }, null),
      logger: this.#log,
    });
    this.#agentDone = this.#agent.start();
    this.#agentDone.then((exit) => {
      if (exit === "replaced") {
        this.#log.error({ runner_id: this.runnerId }, "another host registered with this id; stopping");
        void this.close();
      }
    });
    this.#log.info(
      {
        driver: this.driver.name,
        isolation: this.isolation,
        max_sandboxes: this.maxSandboxes,
        lobby_api: this.#lobbyServer.address,
      },
      "Wolf host started",
    );
  }

  /** The process driver's sandbox isolation, e.g. "users (uid 200000-200009)"; null for other drivers. */
  get isolation(): string | null {
    return this.driver instanceof ProcessDriver ? this.driver.describeIsolation() : null;
  }

  /** Resolves when the host's tunnel client ends (closed or replaced). */
  get done(): Promise<AgentExit> | null {
    return this.#agentDone;
  }

  async #registerUntilDone(): Promise<void> {
    const backoff = new Backoff({
      baseMs: 250,
      capMs: this.#o.registerBackoffCapMs ?? WOLF_HOST_DEFAULTS.registerBackoffCapMs,
    });
    const identity = {
      id: this.id,
      name: this.name,
      maxSandboxes: this.maxSandboxes,
      labels: this.#labels(),
    };
    while (!this.#stop.signal.aborted) {
      try {
        await this.#api.register(identity);
        this.#log.info({ max_sandboxes: this.maxSandboxes }, "Wolf instance registered");
        return;
      } catch (err) {
        const status = err instanceof ControlPlaneCallError ? err.status : 0;
        if (status >= 400 && status < 500) throw err;
        const wait = backoff.next();
        this.#log.warn({ err: (err as Error).message, retry_in_ms: wait }, "registration failed; retrying");
        await waitOrAbort(wait, this.#stop.signal);
      }
    }
  }

  /** The operator's labels, plus the driver's name (revdial.driver) and the docker driver's engine (revdial.engine). */
  #labels(): Record<string, string> {
    const own = this.driver instanceof DockerDriver ? this.driver.labels() : {};
    return { "revdial.driver": this.driver.name, ...own, ...this.#o.labels };
  }

  #scheduleHeartbeat(): void {
    if (this.#stop.signal.aborted) return;
    this.#heartbeat = setTimeout(
      () => void this.#beat().finally(() => this.#scheduleHeartbeat()),
      this.#heartbeatMs,
    );
  }

  async #beat(): Promise<void> {
    try {
      const known = await this.#api.heartbeat(this.id, this.driver.list().length);
      if (!known) {
        this.#log.warn("the API does not know this host; registering again");
        await this.#api.register({
          id: this.id,
          name: this.name,
          maxSandboxes: this.maxSandboxes,
          labels: this.#labels(),
        });
      }
    } catch (err) {
      this.#log.warn({ err: (err as Error).message }, "heartbeat failed");
    }
  }

  #reportExit(exit: LobbyExit): void {
    if (this.#unreported) {
      this.#unreported.push(exit);
      return;
    }
    this.#api.reportExit(this.id, exit).then(
      () => this.#log.info({ lobby_id: exit.lobbyId, session_id: exit.sessionId }, "sandbox exit reported"),
      (err: Error) =>
        this.#log.warn(
          { lobby_id: exit.lobbyId, session_id: exit.sessionId, err: err.message },
          "could not report sandbox exit",
        ),
    );
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#stop.abort();
      if (this.#heartbeat) clearTimeout(this.#heartbeat);
      await this.#agent?.close();
      await this.driver.close();
      await this.#lobbyServer?.close();
      // Only when every sandbox is gone: a lobby left on record must be found by the next host.
      const clean =
        this.driver.list().length === 0 &&
        !(this.driver instanceof ProcessDriver && this.driver.leftBehind > 0);
      if (clean && (this.#o.removeStateDirOnClose ?? this.#o.stateDir === undefined) && this.#started)
        rmSync(this.stateDir, { recursive: true, force: true });
      this.#log.info("Wolf host stopped");
    })();
    return this.#closing;
  }
}
