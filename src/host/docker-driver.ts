// The docker driver: sandboxes as containers of a Docker engine on this machine. start() checks
// that an engine answers (GET /_ping on DOCKER_HOST or /var/run/docker.sock) and fails with a clear
// message when none does, so `revdial wolf run --driver docker` stops at once instead of
// accepting sandboxes it cannot start.
//
// Container lifecycle beyond the check is not built yet: with an engine present, create() refuses
// with a message that names the process driver. (No engine on the machines this was built on.)

import http from "node:http";
import { InvalidOptionError } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";
import { DockerUnavailableError, HOST_ERROR_CODES, HostError, LobbyNotFoundError } from "./host-errors.ts";
import type { LobbyInfo, SandboxDriver } from "./sandbox-driver.ts";

export interface DockerDriverOptions {
  logger: Logger;
  /** unix:///path or tcp://host:port; default DOCKER_HOST, else unix:///var/run/docker.sock. */
  endpoint?: string;
  /** Deadline of the engine check (default 3 s). */
  pingTimeoutMs?: number;
}

const DEFAULT_ENDPOINT = "unix:///var/run/docker.sock";

function requestOptions(endpoint: string): http.RequestOptions {
  if (endpoint.startsWith("unix://")) return { socketPath: endpoint.slice("unix://".length) };
  const url = new URL(endpoint.replace(/^tcp:/, "http:"));
  return { host: url.hostname, port: Number(url.port || 2375) };
}

export function pingDocker(endpoint: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { ...requestOptions(endpoint), path: "/_ping", method: "GET", timeout: timeoutMs },
      (res) => {
        res.resume();
        if (res.statusCode === 200) resolve();
        else reject(new Error(`engine answered ${res.statusCode}`));
      },
    );
    req.once("timeout", () => req.destroy(new Error(`no answer in ${timeoutMs} ms`)));
    req.once("error", reject);
    req.end();
  });
}

export class DockerDriver implements SandboxDriver {
  readonly name = "docker" as const;
  readonly #endpoint: string;
  readonly #pingTimeoutMs: number;

  constructor(options: DockerDriverOptions) {
    if (!options?.logger) throw new InvalidOptionError("logger", "is required");
    this.#endpoint = options.endpoint ?? process.env.DOCKER_HOST ?? DEFAULT_ENDPOINT;
    this.#pingTimeoutMs = options.pingTimeoutMs ?? 3_000;
    if (!/^(unix|tcp|http):\/\//.test(this.#endpoint))
      throw new InvalidOptionError(
        "endpoint",
        `expected unix:///path or tcp://host:port, got "${this.#endpoint}"`,
      );
  }

  async start(): Promise<void> {
    try {
      await pingDocker(this.#endpoint, this.#pingTimeoutMs);
    } catch (err) {
      const reason = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      throw new DockerUnavailableError(this.#endpoint, reason);
    }
  }

  async create(): Promise<LobbyInfo> {
    throw new HostError(
      HOST_ERROR_CODES.launchFailed,
      501,
      "driver docker: container sandboxes are not built yet; run the host with --driver process",
    );
  }

  list(): LobbyInfo[] {
    return [];
  }

  async stop(lobbyId: string): Promise<void> {
    throw new LobbyNotFoundError(lobbyId);
  }

  async close(): Promise<void> {}
}
