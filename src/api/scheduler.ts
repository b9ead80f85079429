// The scheduler: places a session's sandbox on a host and takes it off again. It never connects to
// a host: every call to a host's lobby API goes through that host's `wolf-{id}` tunnel.
//
// Placement (claim): among hosts that are online AND have a live `wolf-{id}` tunnel, the store picks
// the lowest connected/max with a free slot (ties: fewest sandboxes, then id) and places the session
// on it in one transaction, so concurrent starts never overshoot a host's capacity. A host's load is
// the count of its sessions in starting/running: nothing to increment, nothing to drift.
//
// Release: a session leaves its slot by leaving starting/running (stopped or failed); its scoped
// sandbox keys are revoked and forgotten by auth at once, so a stopped sandbox cannot dial back in.

import type { Readable } from "node:stream";
import type { ClaimResult, Session, SessionStatus } from "../store/index.ts";
import type { ApiContext } from "./context.ts";
import { ApiError } from "./http-errors.ts";
import { readBounded } from "./routes/sandbox-call.ts";

export const NO_WOLF_AVAILABLE_MESSAGE = "no Wolf instance available (all offline or at capacity)";

export const SCHEDULER_ERROR_CODES = Object.freeze({
  noHost: "RD_ERR_NO_WOLF_AVAILABLE",
  hostCall: "RD_ERR_WOLF_CALL_FAILED",
});

/** The tunnel target a host serves its lobby API as (see src/host/wolf-host.ts). */
export const LOBBY_TARGET = "lobbies";
const WOLF_PREFIX = "wolf-";
/** Largest answer read from a host's lobby API. */
const MAX_LOBBY_ANSWER_BYTES = 1024 * 1024;
/** Deadline of a call to a host's lobby API (creating a sandbox waits for its display). */
export const DEFAULT_HOST_CALL_TIMEOUT_MS = 30_000;

export interface HostLobby {
  lobby_id: string;
  session_id: string;
  state?: string;
  pid?: number | null;
}

export function wolfRunnerId(hostId: string): string {
  return WOLF_PREFIX + hostId;
}

/** Statuses a session is released from (it occupies or may occupy a slot). */
const RELEASABLE: readonly SessionStatus[] = ["pending", "starting", "running", "stopping"];

export class Scheduler {
  readonly #ctx: ApiContext;
  readonly #hostCallTimeoutMs: number;

  constructor(ctx: ApiContext, options: { hostCallTimeoutMs?: number } = {}) {
    this.#ctx = ctx;
    this.#hostCallTimeoutMs = options.hostCallTimeoutMs ?? DEFAULT_HOST_CALL_TIMEOUT_MS;
  }

  /** Ids of hosts with a live `wolf-{id}` tunnel right now. */
  connectedHostIds(): string[] {
    return this.#ctx.dialer
      .list()
      .map((t) => t.runner_id)
      .filter((id) => id.startsWith(WOLF_PREFIX))
      .map((id) => id.slice(WOLF_PREFIX.length));
  }

  /** Places a pending session on the least-loaded eligible host; 503 when none has room. */
  async claim(session: Session): Promise<ClaimResult> {
    const claim = await this.#ctx.store.wolfInstances.claimSlot({
      sessionId: session.id,
      eligibleIds: this.connectedHostIds(),
    });
    if (!claim) {
      this.#ctx.logger.warn({ session_id: session.id }, NO_WOLF_AVAILABLE_MESSAGE);
      throw new ApiError(503, SCHEDULER_ERROR_CODES.noHost, NO_WOLF_AVAILABLE_MESSAGE);
    }
    this.#ctx.logger.info(
      {
        wolf_id: claim.host.id,
        session_id: session.id,
        current_load: claim.previousLoad,
        max_capacity: claim.host.maxSandboxes,
      },
      "Selected Wolf instance for sandbox",
    );
    return claim;
  }

  /** Asks the host to start the sandbox; returns the host's lobby id. */
  async createLobby(hostId: string, session: Session, sandboxToken: string): Promise<string> {
    const body = JSON.stringify({
      session_id: session.id,
      sandbox_token: sandboxToken,
      server_url: this.#ctx.config.publicUrl,
      env: { REVDIAL_SESSION_ID: session.id },
    });
    const answer = await this.#call<{ lobby_id: string }>(hostId, "POST", "/lobbies", body);
    if (typeof answer?.lobby_id !== "string") throw hostFailed(hostId, "answered without a lobby_id");
    return answer.lobby_id;
  }

  /** Asks the host to stop a lobby; a lobby the host no longer has counts as stopped. */
  async stopLobby(hostId: string, lobbyId: string): Promise<void> {
    await this.#call(hostId, "DELETE", `/lobbies/${encodeURIComponent(lobbyId)}`, null, [404]);
  }

  async listLobbies(hostId: string): Promise<HostLobby[]> {
    const lobbies = await this.#call<HostLobby[]>(hostId, "GET", "/lobbies", null);
    if (!Array.isArray(lobbies)) throw hostFailed(hostId, "GET /lobbies did not answer a list");
    return lobbies;
  }

  /**
   * Takes the session off its slot: status `to` (only from a releasable status), scoped keys
   * revoked and forgotten. Returns the updated session, or null when it was already released.
   */
  async release(sessionId: string, to: "stopped" | "failed"): Promise<Session | null> {
    const session = await this.#ctx.store.sessions.setStatus(sessionId, to, RELEASABLE);
    await this.#ctx.store.apiKeys.revokeForSession(sessionId);
    this.#ctx.auth.forgetSession(sessionId);
    if (session?.wolfInstanceId) {
      const host = await this.#ctx.store.wolfInstances.get(session.wolfInstanceId);
      this.#ctx.logger.info(
        {
          wolf_id: session.wolfInstanceId,
          session_id: sessionId,
          status: to,
          new_count: host?.connectedSandboxes,
        },
        "Decremented Wolf sandbox count",
      );
    }
    return session;
  }

  async #call<T>(
    hostId: string,
    method: string,
    path: string,
    body: string | null,
    okStatuses: number[] = [],
  ): Promise<T | null> {
    const headers: Record<string, string> = body
      ? { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)) }
      : {};
    const res = await this.#ctx.dialer.request(wolfRunnerId(hostId), {
      target: LOBBY_TARGET,
      method,
      path,
      headers,
      body,
      timeoutMs: this.#hostCallTimeoutMs,
    });
    const raw = await readBounded(res.body as Readable, MAX_LOBBY_ANSWER_BYTES, this.#hostCallTimeoutMs);
    if (okStatuses.includes(res.status)) return null;
    if (res.status < 200 || res.status >= 300) {
      throw hostFailed(hostId, `${method} ${path} answered ${res.status}: ${errorText(raw)}`);
    }
    return raw.length ? (JSON.parse(raw.toString("utf8")) as T) : null;
  }
}

function errorText(raw: Buffer): string {
  try {
    return (JSON.parse(raw.toString("utf8")) as { error: { message: string } }).error.message;
  } catch {
    return raw.toString("utf8").slice(0, 200);
  }
}

function hostFailed(hostId: string, what: string): ApiError {
  return new ApiError(502, SCHEDULER_ERROR_CODES.hostCall, `Wolf instance ${hostId}: ${what}`);
}
