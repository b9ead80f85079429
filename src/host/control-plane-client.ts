// The host's calls to the API, with the runner token: register (upsert of id, name, capacity,
// labels), heartbeat (404 when the API does not know the host: the caller registers again), and the
// report of a sandbox that ended on its own. These are plain HTTPS calls out; the API's calls into
// the host go through the host's tunnel instead.

import { RevdialError } from "../common/errors.ts";
import type { ClientTls } from "../common/tls.ts";
import { fetchWithTls } from "../common/tls-fetch.ts";
import { HOST_ERROR_CODES } from "./host-errors.ts";
import type { LobbyExit } from "./sandbox-driver.ts";

export interface HostIdentity {
  id: string;
  name: string;
  maxSandboxes: number;
  labels: Record<string, string>;
}

export class ControlPlaneCallError extends RevdialError {
  readonly status: number;
  constructor(status: number, message: string, options?: { cause?: unknown }) {
    super(HOST_ERROR_CODES.registerFailed, message, options);
    this.status = status;
  }
}

export class ControlPlaneClient {
  readonly #base: string;
  readonly #token: string;
  readonly #timeoutMs: number;
  readonly #tls: ClientTls | null;

  /** `tls`: the host's trust settings (--ca-file, --insecure), the same its tunnel uses. */
  constructor(options: { serverUrl: string; token: string; timeoutMs?: number; tls?: ClientTls | null }) {
    this.#base = options.serverUrl
      .replace(/^ws/, "http")
      .replace(/\/api\/v1\/revdial\/?$/, "")
      .replace(/\/+$/, "");
    this.#token = options.token;
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#tls = options.tls ?? null;
  }

  async register(host: HostIdentity): Promise<void> {
    await this.#post("/api/v1/wolf-instances/register", {
      id: host.id,
      name: host.name,
      max_sandboxes: host.maxSandboxes,
      labels: host.labels,
    });
  }

  /** False when the API does not know this host (register again). */
  async heartbeat(hostId: string, lobbies: number): Promise<boolean> {
    try {
      await this.#post(`/api/v1/wolf-instances/${encodeURIComponent(hostId)}/heartbeat`, { lobbies });
      return true;
    } catch (err) {
      if (err instanceof ControlPlaneCallError && err.status === 404) return false;
      throw err;
    }
  }

  async reportExit(hostId: string, exit: LobbyExit): Promise<void> {
    const path = `/api/v1/wolf-instances/${encodeURIComponent(hostId)}/lobbies/${encodeURIComponent(exit.lobbyId)}/exited`;
    await this.#post(path, { session_id: exit.sessionId, exit_code: exit.code, signal: exit.signal });
  }

  async #post(path: string, body: unknown): Promise<void> {
    let res: Response;
    try {
      const init = {
        method: "POST",
        headers: { authorization: `Bearer ${this.#token}`, "content-type": "application/json" },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(this.#timeoutMs),
      };
      const url = this.#base + path;
      res =
        this.#tls && url.startsWith("https:")
          ? await fetchWithTls(url, init, this.#tls)
          : await fetch(url, init);
    } catch (err) {
      throw new ControlPlaneCallError(0, `cannot reach ${this.#base}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    const text = await res.text();
    if (!res.ok) {
      let message = text.slice(0, 200);
      try {
        message = (JSON.parse(text) as { error: { message: string } }).error.message;
      } catch {}
      throw new ControlPlaneCallError(res.status, `${path}: ${res.status} ${message}`);
    }
  }
}
