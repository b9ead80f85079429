// The lifecycle sweeper: settles, within a bound, every state a crash (of the API, of a host, or
// of the network between them) can leave sessions and spec tasks in. It runs on an interval and is
// idempotent: every action is a conditional write (`from` statuses) or a host call that is
// harmless to repeat (a lobby already gone counts as stopped), so two sweeps racing each other, or
// a sweep racing a request, converge. Running it once per cluster later is a leader-election
// wrapper around sweep().
//
// Each sweep:
// 1. Hosts with a live `wolf-{id}` tunnel are reconciled against their own list (GET /lobbies):
//    - a `stopping` session's lobbies are stopped, then the session is `stopped`;
//    - a starting/running session whose lobby the host no longer lists is `stopped`;
//    - a lobby the host runs for a session the API did not record yet is recorded;
//    - a lobby of no live session on this host (failed, stopped, unknown) is stopped.
//    After it, the host's count (sessions in ACTIVE statuses) equals the lobbies it runs.
// 2. A session `starting` for longer than startingTimeoutMs: `running` if its sandbox is connected
//    (the event was lost), else its host is asked to stop its lobby, and it is `failed`.
// 3. A starting/running session on a host that is offline, with no sandbox tunnel either, becomes
//    `stopping` (keys revoked): the host kills its lobby when it returns (step 1). A session whose
//    sandbox still has a tunnel is kept: only the host's link is down, the sandbox works.
// 4. A `stopping` session with no host left (deleted) is `stopped`.
// 5. A task in `planning` that no session holds goes back to `backlog` (its startable state).
// Bound: a crash state is settled within startingTimeoutMs + intervalMs (45 s + 15 s by default).
// Sessions changed during the sweep are re-read before a lobby is stopped, so a start committing
// meanwhile is never undone.

import { InvalidOptionError } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";
import { ACTIVE_SESSION_STATUSES, type Session } from "../store/index.ts";
import type { ApiContext } from "./context.ts";
import { sandboxRunnerId } from "./routes/sandbox-call.ts";
import { type HostLobby, Scheduler, wolfRunnerId } from "./scheduler.ts";

export interface LifecycleSweeperOptions {
  ctx: ApiContext;
  /** How often the sweep runs. Default 15 s. */
  intervalMs?: number;
  /** A session `starting` for this long without its sandbox connecting has failed. Default 45 s. */
  startingTimeoutMs?: number;
  /** Deadline of each call to a host's lobby API during a sweep. Default 10 s. */
  hostCallTimeoutMs?: number;
  /** Hosts reconciled at once. Default 8. */
  hostConcurrency?: number;
  now?: () => number;
}

export const LIFECYCLE_SWEEPER_DEFAULTS = Object.freeze({
  intervalMs: 15_000,
  startingTimeoutMs: 45_000,
  hostCallTimeoutMs: 10_000,
  hostConcurrency: 8,
});

/** What one sweep changed, for logs and tests. */
export interface SweepReport {
  hostsReconciled: number;
  sessionsStopped: string[];
  sessionsFailed: string[];
  sessionsRunning: string[];
  stopsRequested: string[];
  lobbiesStopped: string[];
  tasksReleased: string[];
}

function emptyReport(): SweepReport {
  return {
    hostsReconciled: 0,
    sessionsStopped: [],
    sessionsFailed: [],
    sessionsRunning: [],
    stopsRequested: [],
    lobbiesStopped: [],
    tasksReleased: [],
  };
}

const ACTIVE = ACTIVE_SESSION_STATUSES;

/**
 * Reconciles one host's sessions with the lobbies it lists (step 1 above). Does nothing when the
 * host has no live tunnel. Used by the sweeper and when a host's tunnel (re)connects.
 */
export async function reconcileHost(
  ctx: ApiContext,
  scheduler: Scheduler,
  hostId: string,
  report: SweepReport = emptyReport(),
): Promise<SweepReport> {
  const store = ctx.store;
  const log = ctx.logger;
  if (!ctx.dialer.isConnected(wolfRunnerId(hostId))) return report;
  // Read BEFORE the host is asked: a lobby created meanwhile is never mistaken for a lost one.
  const placed = await store.sessions.list({ wolfInstanceId: hostId, statuses: ACTIVE });
  const lobbies = await scheduler.listLobbies(hostId);
  const bySession = new Map<string, HostLobby[]>();
  for (const l of lobbies) bySession.set(l.session_id, [...(bySession.get(l.session_id) ?? []), l]);
  for (const session of placed) {
    const mine = bySession.get(session.id) ?? [];
    bySession.delete(session.id);
    await settlePlaced(ctx, scheduler, hostId, session, mine, report);
  }
  for (const [sessionId, strays] of bySession) {
    const session = await store.sessions.get(sessionId);
    const live = session?.wolfInstanceId === hostId && session.status !== "stopping";
    if (session && live && ACTIVE.includes(session.status)) continue; // placed after the read
    for (const lobby of strays) {
      await scheduler.stopLobby(hostId, lobby.lobby_id);
      report.lobbiesStopped.push(lobby.lobby_id);
      log.warn(
        { wolf_id: hostId, lobby_id: lobby.lobby_id, session_id: sessionId, status: session?.status ?? null },
        "lobby of no live session stopped",
      );
    }
    if (session?.status === "stopping" && (await scheduler.release(sessionId, "stopped")))
      report.sessionsStopped.push(sessionId);
  }
  report.hostsReconciled++;
  log.debug(
    { wolf_id: hostId, lobbies: lobbies.length, sessions: placed.length },
    "Wolf instance reconciled",
  );
  return report;
}

async function settlePlaced(
  ctx: ApiContext,
  scheduler: Scheduler,
  hostId: string,
  session: Session,
  mine: HostLobby[],
  report: SweepReport,
): Promise<void> {
  const fields = { wolf_id: hostId, session_id: session.id, lobby_id: session.lobbyId };
  if (session.status === "stopping") {
    for (const lobby of mine) await scheduler.stopLobby(hostId, lobby.lobby_id);
    if (await scheduler.release(session.id, "stopped")) report.sessionsStopped.push(session.id);
    ctx.logger.info({ ...fields, lobbies: mine.length }, "requested stop carried out on the host");
    return;
  }
  if (mine.length === 0) {
    // A start still creating its lobby has no lobby_id yet: the starting bound settles it.
    if (session.status === "starting" && session.lobbyId === null) return;
    if (await scheduler.release(session.id, "stopped")) report.sessionsStopped.push(session.id);
    ctx.logger.warn(fields, "lobby gone from its host: session stopped");
    return;
  }
  if (!mine.some((l) => l.lobby_id === session.lobbyId)) {
    const lobbyId = mine[0].lobby_id;
    await ctx.store.sessions.setLobby(session.id, lobbyId, ["starting", "running"]);
    ctx.logger.info({ ...fields, lobby_id: lobbyId }, "lobby the host created recorded");
  }
}

export class LifecycleSweeper {
  readonly #ctx: ApiContext;
  readonly #log: Logger;
  readonly #scheduler: Scheduler;
  readonly #intervalMs: number;
  readonly #startingTimeoutMs: number;
  readonly #hostConcurrency: number;
  readonly #now: () => number;
  #timer: NodeJS.Timeout | null = null;
  /** The sweep in flight; a tick while one runs is skipped, so sweeps never overlap. */
  #running: Promise<SweepReport> | null = null;
  #closed = false;

  constructor(options: LifecycleSweeperOptions) {
    if (!options?.ctx) throw new InvalidOptionError("ctx", "is required");
    const o = { ...LIFECYCLE_SWEEPER_DEFAULTS, ...stripUndefined(options), ctx: options.ctx };
    for (const name of ["intervalMs", "startingTimeoutMs", "hostCallTimeoutMs"] as const)
      if (!(o[name] > 0)) throw new InvalidOptionError(name, "must be > 0");
    if (!(Number.isInteger(o.hostConcurrency) && o.hostConcurrency >= 1))
      throw new InvalidOptionError("hostConcurrency", "must be an integer >= 1");
    this.#ctx = o.ctx;
    this.#log = o.ctx.logger;
    this.#scheduler = new Scheduler(o.ctx, { hostCallTimeoutMs: o.hostCallTimeoutMs });
    this.#intervalMs = o.intervalMs;
    this.#startingTimeoutMs = o.startingTimeoutMs;
    this.#hostConcurrency = o.hostConcurrency;
    this.#now = o.now ?? Date.now;
  }

  start(): void {
    if (this.#timer || this.#closed) return;
    this.#timer = setInterval(() => {
      if (!this.#running) void this.sweep();
    }, this.#intervalMs);
    this.#timer.unref();
  }

  /** Stops the interval (start() starts it again): a cluster's replica that is no longer the leader. */
  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** Stops the interval and waits for the sweep in flight. Idempotent. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    await this.#running?.catch(() => {});
  }

  /** One sweep (joins the one in flight). Never throws: failures are logged, the next sweep retries. */
  sweep(): Promise<SweepReport> {
    if (this.#closed) return Promise.resolve(emptyReport());
    this.#running ??= this.#sweepOnce().finally(() => {
      this.#running = null;
    });
    return this.#running;
  }

  async #sweepOnce(): Promise<SweepReport> {
    const report = emptyReport();
    const steps: [string, () => Promise<void>][] = [
      ["reconcile hosts", () => this.#reconcileHosts(report)],
      ["starting sessions", () => this.#settleStarting(report)],
      ["offline hosts", () => this.#requestStopsOnOfflineHosts(report)],
      ["orphaned stops", () => this.#settleHostlessStops(report)],
      ["planning tasks", () => this.#releaseTasks(report)],
    ];
    for (const [what, step] of steps) {
      if (this.#closed) break;
      try {
        await step();
      } catch (err) {
        this.#log.warn({ err: (err as Error).message, step: what }, "lifecycle sweep step failed");
      }
    }
    const changed =
      report.sessionsStopped.length +
      report.sessionsFailed.length +
      report.sessionsRunning.length +
      report.stopsRequested.length +
      report.lobbiesStopped.length +
      report.tasksReleased.length;
    if (changed > 0) this.#log.info({ ...report }, "lifecycle sweep settled sessions");
    return report;
  }

  async #reconcileHosts(report: SweepReport): Promise<void> {
    const ids = this.#scheduler.connectedHostIds();
    const known = new Set((await this.#ctx.store.wolfInstances.list()).map((h) => h.id));
    const queue = ids.filter((id) => known.has(id));
    const worker = async () => {
      for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
        try {
          await reconcileHost(this.#ctx, this.#scheduler, id, report);
        } catch (err) {
          this.#log.warn({ wolf_id: id, err: (err as Error).message }, "host reconcile failed");
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.#hostConcurrency, queue.length) }, worker));
  }

  async #settleStarting(report: SweepReport): Promise<void> {
    const stale = await this.#ctx.store.sessions.list({
      status: "starting",
      updatedBefore: new Date(this.#now() - this.#startingTimeoutMs),
    });
    for (const session of stale) {
      if (this.#ctx.dialer.isConnected(sandboxRunnerId(session.id))) {
        if (await this.#ctx.store.sessions.setStatus(session.id, "running", ["starting"]))
          report.sessionsRunning.push(session.id);
        continue;
      }
      if (session.wolfInstanceId) {
        try {
          await this.#scheduler.stopSessionLobbies(session.wolfInstanceId, session);
        } catch (err) {
          // The host's reconcile stops a lobby of a failed session later.
          this.#log.warn({ session_id: session.id, err: (err as Error).message }, "could not stop the lobby");
        }
      }
      if (await this.#scheduler.release(session.id, "failed")) {
        report.sessionsFailed.push(session.id);
        this.#log.warn(
          { session_id: session.id, wolf_id: session.wolfInstanceId, lobby_id: session.lobbyId },
          "sandbox never connected: session failed",
        );
      }
    }
  }

  async #requestStopsOnOfflineHosts(report: SweepReport): Promise<void> {
    const connected = new Set(this.#scheduler.connectedHostIds());
    const offline = (await this.#ctx.store.wolfInstances.list()).filter(
      (h) => h.status === "offline" && !connected.has(h.id),
    );
    for (const host of offline) {
      const sessions = await this.#ctx.store.sessions.list({
        wolfInstanceId: host.id,
        statuses: ["starting", "running"],
      });
      for (const session of sessions) {
        if (this.#ctx.dialer.isConnected(sandboxRunnerId(session.id))) continue;
        if (!(await this.#ctx.store.sessions.setStatus(session.id, "stopping", ["starting", "running"])))
          continue;
        await this.#scheduler.cutSandbox(session.id, "host offline");
        if (session.specTaskId)
          await this.#ctx.store.specTasks.releasePlanning({ taskId: session.specTaskId });
        report.stopsRequested.push(session.id);
        this.#log.warn(
          { session_id: session.id, wolf_id: host.id, lobby_id: session.lobbyId },
          "host offline and sandbox gone: stop recorded for when the host returns",
        );
      }
    }
  }

  async #settleHostlessStops(report: SweepReport): Promise<void> {
    const stopping = await this.#ctx.store.sessions.list({ status: "stopping" });
    const known = new Set((await this.#ctx.store.wolfInstances.list()).map((h) => h.id));
    for (const session of stopping) {
      if (session.wolfInstanceId && known.has(session.wolfInstanceId)) continue;
      if (await this.#scheduler.release(session.id, "stopped")) report.sessionsStopped.push(session.id);
    }
  }

  async #releaseTasks(report: SweepReport): Promise<void> {
    // Only tasks unchanged for a whole interval: a start committing right now is never undone.
    const ids = await this.#ctx.store.specTasks.releasePlanning({
      changedBefore: new Date(this.#now() - Math.min(this.#intervalMs, this.#startingTimeoutMs)),
    });
    report.tasksReleased.push(...ids);
  }
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
