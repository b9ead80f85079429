// The scheduler: places a session's sandbox on a host and takes it off again. It never connects to
// a host: every call to a host's lobby API goes through that host's `wolf-{id}` tunnel.
//
// Placement (claim): among hosts that are online AND have a live `wolf-{id}` tunnel, the store picks
// the lowest connected/max with a free slot (ties: fewest sandboxes, then id) and places the session
// on it in one transaction, so concurrent starts never overshoot a host's capacity. A host's load is
// the count of its sessions in starting/running: nothing to increment, nothing to drift.
//
// Release: a session leaves its slot by leaving starting/running/stopping (stopped or failed); its
// scoped sandbox keys are revoked and forgotten by auth, and its live `sandbox-{id}` tunnel is
// evicted, at once: a stopped sandbox can neither serve calls nor dial back in. Its spec task goes
// back to `backlog` when no other session holds it.

import type { Readable } from "node:stream";
import type { ClaimResult, Session, SessionStatus } from "../store/index.ts";
import type { TunnelDialer } from "../tunnel/types.ts";
import type { ApiContext } from "./context.ts";
import { ApiError } from "./http-errors.ts";
import { readBounded, sandboxRunnerId } from "./routes/sandbox-call.ts";

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

/**
 * Closes a runner's live tunnel at once. The registry's evict() (close code "evicted", grace
 * waiters failed) is used when it exists; before it does, the live tunnel is destroyed, which
 * cuts it the same way but leaves its grace waiters to their deadline.
 */
export async function evictTunnel(dialer: TunnelDialer, runnerId: string, reason: string): Promise<void> {
  const d = dialer as TunnelDialer & {
    evict?: (id: string, reason: string) => void;
    get?: (id: string) => { destroy(err?: Error): void } | undefined;
  };
  // A cluster's tunnel on another replica is closed there before this returns (bounded).
  if (typeof d.evictEverywhere === "function") await d.evictEverywhere(runnerId, reason);
  else if (typeof d.evict === "function") d.evict(runnerId, reason);
  else d.get?.(runnerId)?.destroy(new Error(reason));
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
    const dialer = this.#ctx.dialer;
    // A cluster's replica knows the hosts connected to any replica.
    return (dialer.liveRunnerIds?.() ?? dialer.list().map((t) => t.runner_id))
      .filter((id) => id.startsWith(WOLF_PREFIX))
      .map((id) => id.slice(WOLF_PREFIX.length));
  }

  /** Places a pending session on the least-loaded eligible host; 503 when none has room. */
  async claim(session: Session): Promise<ClaimResult> {
    const claim = await this.#ctx.store.wolfInstances.claimSlot({
      sessionId: session.id,
      eligibleIds: this.connectedHostIds(),
    });
    if (!claim) throw this.noHostError(session.id);
    this.logClaim(session.id, claim);
    return claim;
  }

  /** The 503 of a start no host has room for (logged). */
  noHostError(sessionId: string): ApiError {
    this.#ctx.logger.warn({ session_id: sessionId }, NO_WOLF_AVAILABLE_MESSAGE);
    return new ApiError(503, SCHEDULER_ERROR_CODES.noHost, NO_WOLF_AVAILABLE_MESSAGE);
  }

  logClaim(sessionId: string, claim: ClaimResult): void {
    this.#ctx.logger.info(
      {
        wolf_id: claim.host.id,
        session_id: sessionId,
        current_load: claim.previousLoad,
        max_capacity: claim.host.maxSandboxes,
      },
      "Selected Wolf instance for sandbox",
    );
  }

  /**
   * The sandbox's environment: its session id, and its task and project (ids and names) for what
   * runs there, such as the terminal its display shows by default.
   */
  async sandboxEnv(session: Session): Promise<Record<string, string>> {
    const env: Record<string, string> = { REVDIAL_SESSION_ID: session.id };
    const task = session.specTaskId ? await this.#ctx.store.specTasks.get(session.specTaskId) : null;
    if (!task) return env;
    Object.assign(env, { REVDIAL_TASK_ID: task.id, REVDIAL_TASK_NAME: task.name });
    const project = await this.#ctx.store.projects.get(task.projectId);
    if (project) Object.assign(env, { REVDIAL_PROJECT_ID: project.id, REVDIAL_PROJECT_NAME: project.name });
    return env;
  }

  /** Asks the host to start the sandbox; returns the host's lobby id. */
  async createLobby(hostId: string, session: Session, sandboxToken: string): Promise<string> {
    const body = JSON.stringify({
      session_id: session.id,
      sandbox_token: sandboxToken,
      server_url: this.#ctx.config.publicUrl,
      env: await this.sandboxEnv(session),
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
   * Takes the session off its slot: status `to` (only from a releasable status), its sandbox cut
   * off (cutSandbox), its task given back. A session whose stop was requested (`stopping`) ends
   * `stopped` even when `to` is `failed` (its sandbox died, or its restarted host killed it: the
   * stop the user asked for is done). Returns the updated session, or null when it was already
   * released.
   */
  async release(sessionId: string, to: "stopped" | "failed"): Promise<Session | null> {
    const sessions = this.#ctx.store.sessions;
    const session =
      (to === "failed" ? await sessions.setStatus(sessionId, "stopped", ["stopping"]) : null) ??
      (await sessions.setStatus(sessionId, to, RELEASABLE));
    await this.cutSandbox(sessionId, `session ${to}`);
    if (session?.specTaskId) await this.#ctx.store.specTasks.releasePlanning({ taskId: session.specTaskId });
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

  /**
   * Cuts a session's sandbox off the API: its scoped keys revoked and forgotten by auth (a
   * reconnect is refused), its live tunnel evicted (no call reaches it). Idempotent.
   */
  async cutSandbox(sessionId: string, reason: string): Promise<void> {
    await this.#ctx.store.apiKeys.revokeForSession(sessionId);
    this.#ctx.auth.forgetSession(sessionId);
    await evictTunnel(this.#ctx.dialer, sandboxRunnerId(sessionId), reason);
  }

  /**
   * Stops every lobby the host runs for the session (the recorded one, and any the host lists for
   * the session id: a create the API crashed before recording). True when the host confirmed;
   * false when its tunnel is down (nothing was asked). Throws when the host answers with an error.
   */
  async stopSessionLobbies(hostId: string, session: Session): Promise<boolean> {
    if (!this.#ctx.dialer.isConnected(wolfRunnerId(hostId))) return false;
    const lobbies = await this.listLobbies(hostId);
    const ids = new Set(lobbies.filter((l) => l.session_id === session.id).map((l) => l.lobby_id));
    if (session.lobbyId && lobbies.some((l) => l.lobby_id === session.lobbyId)) ids.add(session.lobbyId);
    for (const id of ids) await this.stopLobby(hostId, id);
    return true;
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
