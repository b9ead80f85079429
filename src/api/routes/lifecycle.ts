// The session lifecycle: start planning a spec task (a session, a place on a host, a sandbox) and
// stop an external agent (final screenshot kept, lobby stopped, keys revoked, tunnel cut). The API
// reaches the host only through `wolf-{id}` and the sandbox only through `sandbox-{sessionID}`.
//
//   POST   /api/v1/spec-tasks/{id}/start-planning -> 200 {task, session_id}; 400 when the task is
//          neither in backlog nor in planning; 503 when no host has room; 409 when the session was
//          stopped while its sandbox was being created. Returns once the host has the lobby,
//          without waiting for the sandbox to dial in (status `starting`; `running` once it does).
//   DELETE /api/v1/external-agents/{sessionID}    -> 200 {message, session_id, status: "stopped"}
//          when the host confirmed the stop (or the session had no sandbox); 202 {..., status:
//          "stopping"} when the host is unreachable: the stop is recorded and carried out when the
//          host's tunnel returns (lifecycle-sweeper.ts). Owner or admin.
//
// start-planning is one idempotent state machine. Each step is written to the store before the
// next is acted on, so a crash between two steps leaves a state that either a second call resumes
// or the sweeper settles:
//   1. placed:  task -> planning, session created and claimed on a host (`starting`), ONE transaction;
//   2. key:     the sandbox's scoped key created;
//   3. lobby:   the host asked for the lobby through its tunnel, keyed by the session id (the host
//               returns the lobby it already has for that session);
//   4. recorded: lobby_id written (only while the session is still starting/running);
//   then `running` when the sandbox dials in (sandbox-tracker.ts).
// A second call for a task whose session is starting or running returns that session, creating
// the lobby again when step 4 never happened; a task in `planning` that no session holds starts anew.

import type { FastifyBaseLogger, FastifyInstance } from "fastify";
import { ACTIVE_SESSION_STATUSES, type Session, TASK_HOLDING_SESSION_STATUSES } from "../../store/index.ts";
import { principalOf, requireUser, requireWrite } from "../auth.ts";
import type { ApiContext } from "../context.ts";
import { ApiError } from "../http-errors.ts";
import { Scheduler, wolfRunnerId } from "../scheduler.ts";
import { sniffImageType } from "./image-type.ts";
import { idParams, sessionIdParams } from "./route-schemas.ts";
import { specTaskView } from "./route-views.ts";
import { readBounded, sandboxRunnerId } from "./sandbox-call.ts";
import { loadVisibleTask } from "./spec-tasks.ts";

/** Longest a stop waits for the final screenshot (it is best effort). */
export const FINAL_SCREENSHOT_TIMEOUT_MS = 5_000;

export const LIFECYCLE_ERROR_CODES = Object.freeze({
  notStartable: "RD_ERR_SPEC_TASK_NOT_BACKLOG",
  endedWhileStarting: "RD_ERR_SESSION_ENDED",
});

/** The steps of start-planning, in order, as the fault hook names them. */
export const START_PLANNING_STEPS = Object.freeze(["placed", "key", "lobby", "recorded"] as const);
export type StartPlanningStep = (typeof START_PLANNING_STEPS)[number];

/** What a throw from the fault hook becomes: a start cut short with no clean-up. */
class SimulatedCrash extends Error {}

function crashPoint(ctx: ApiContext, step: StartPlanningStep): void {
  const hook = ctx.config.startPlanningFault;
  if (!hook) return;
  try {
    hook(step);
  } catch (err) {
    throw new SimulatedCrash(`start-planning cut short after step ${step}`, { cause: err });
  }
}

/** Step 1, or the session already holding the task. One transaction; 400/503 roll it back. */
async function placeOrResume(
  ctx: ApiContext,
  scheduler: Scheduler,
  ownerId: string,
  taskId: string,
): Promise<{ session: Session; resumed: boolean }> {
  const eligibleIds = scheduler.connectedHostIds();
  // A 400/503 thrown inside rolls the transaction back; the store wraps it, its cause is ours.
  const ours = (err: unknown) => {
    const cause = (err as { cause?: unknown })?.cause;
    throw err instanceof ApiError ? err : cause instanceof ApiError ? cause : err;
  };
  return ctx.store
    .transaction(async (tx) => {
      // The task row is locked first, so two starts of one task are serialized here.
      if (!(await tx.specTasks.setStatus(taskId, "planning", ["backlog", "planning"]))) {
        const task = await tx.specTasks.get(taskId);
        throw new ApiError(
          400,
          LIFECYCLE_ERROR_CODES.notStartable,
          `spec task ${taskId} is not in backlog (status: ${task?.status})`,
        );
      }
      const [holding] = await tx.sessions.list({
        specTaskId: taskId,
        statuses: TASK_HOLDING_SESSION_STATUSES,
      });
      if (holding) return { session: holding, resumed: true };
      const task = (await tx.specTasks.get(taskId))!;
      const session = await tx.sessions.create({ ownerId, name: task.name, specTaskId: task.id });
      const claim = await tx.wolfInstances.claimSlot({ sessionId: session.id, eligibleIds });
      if (!claim) throw scheduler.noHostError(session.id);
      scheduler.logClaim(session.id, claim);
      return { session: (await tx.sessions.get(session.id))!, resumed: false };
    })
    .catch(ours);
}

/** Steps 2 to 4 for a session placed on a host (`starting`, no lobby recorded yet). */
async function createAndRecordLobby(
  ctx: ApiContext,
  scheduler: Scheduler,
  log: FastifyBaseLogger,
  session: Session,
): Promise<void> {
  const hostId = session.wolfInstanceId!;
  const { apiKey } = await ctx.auth.createSessionKey(session);
  crashPoint(ctx, "key");
  const lobbyId = await scheduler.createLobby(hostId, session, apiKey);
  crashPoint(ctx, "lobby");
  const recorded = await ctx.store.sessions.setLobby(session.id, lobbyId, ["starting", "running"]);
  if (!recorded) {
    // Stopped (or failed by the sweeper) while the host was creating it: the lobby must not stay.
    await scheduler.stopLobby(hostId, lobbyId).catch(() => {});
    throw new ApiError(
      409,
      LIFECYCLE_ERROR_CODES.endedWhileStarting,
      `session ${session.id} was stopped while its sandbox was being created`,
    );
  }
  crashPoint(ctx, "recorded");
  log.info({ wolf_id: hostId, lobby_id: lobbyId, session_id: session.id }, "Wolf lobby created successfully");
}

async function startPlanning(
  ctx: ApiContext,
  scheduler: Scheduler,
  log: FastifyBaseLogger,
  ownerId: string,
  taskId: string,
) {
  const { session, resumed } = await placeOrResume(ctx, scheduler, ownerId, taskId);
  crashPoint(ctx, "placed");
  if (session.status === "starting" && session.lobbyId === null) {
    try {
      await createAndRecordLobby(ctx, scheduler, log, session);
    } catch (err) {
      if (err instanceof SimulatedCrash) throw err;
      if (!(err instanceof ApiError && err.code === LIFECYCLE_ERROR_CODES.endedWhileStarting))
        await scheduler.release(session.id, "failed");
      log.warn({ session_id: session.id, err: (err as Error).message }, "planning session could not start");
      throw err;
    }
  }
  const task = (await ctx.store.specTasks.get(taskId))!;
  log.info(
    { session_id: session.id, spec_task_id: taskId, resumed },
    resumed ? "Planning session resumed" : "Planning session started",
  );
  // The task is the agent's first message, so it starts planning by itself (queued until it
  // connects). A resumed start sent it already.
  if (!resumed)
    await ctx.sync
      ?.send(session.id, [task.name, task.description].filter(Boolean).join("\n\n"))
      .catch((err: Error) =>
        log.warn({ session_id: session.id, err: err.message }, "could not queue the task for the agent"),
      );
  return { task: specTaskView(task), session_id: session.id };
}

/** The sandbox's screen, kept for after the stop; false when the sandbox does not answer in time. */
async function takeFinalScreenshot(
  ctx: ApiContext,
  session: Session,
  log: FastifyBaseLogger,
): Promise<boolean> {
  if (!ctx.dialer.isConnected(sandboxRunnerId(session.id))) return false;
  const deadline = Date.now() + FINAL_SCREENSHOT_TIMEOUT_MS;
  try {
    const res = await ctx.dialer.request(sandboxRunnerId(session.id), {
      target: "desktop",
      method: "GET",
      path: "/screenshot",
      timeoutMs: FINAL_SCREENSHOT_TIMEOUT_MS,
    });
    if (res.status !== 200) {
      res.body.resume();
      throw new Error(`sandbox answered ${res.status}`);
    }
    const bytes = await readBounded(res.body, ctx.config.screenshotLimit, Math.max(1, deadline - Date.now()));
    const type = sniffImageType(bytes) ?? String(res.headers["content-type"] ?? "application/octet-stream");
    const dropped = await ctx.store.sessions.setFinalScreenshot(
      session.id,
      { bytes, contentType: type },
      ctx.config.storedScreenshotsPerUser,
    );
    log.info({ session_id: session.id, bytes: bytes.length, dropped }, "final screenshot stored");
    return true;
  } catch (err) {
    log.warn({ session_id: session.id, err: (err as Error).message }, "no final screenshot");
    return false;
  }
}

export interface StopAnswer {
  message: string;
  session_id: string;
  /** `stopped`: done; `stopping`: recorded, the host stops the sandbox when it is reachable again. */
  status: "stopped" | "stopping";
}

/**
 * Stops a session: `stopping` recorded first, the final screenshot taken while the sandbox still
 * answers, then the sandbox cut off (keys revoked, tunnel evicted) and its task given back, then
 * the host asked to stop the lobby. When the host cannot be asked, the session stays `stopping`
 * and the sweeper finishes the stop when the host's tunnel returns.
 */
export async function stopSession(
  ctx: ApiContext,
  scheduler: Scheduler,
  session: Session,
  log: FastifyBaseLogger,
): Promise<StopAnswer> {
  const answer = (status: StopAnswer["status"], message: string) => ({
    message,
    session_id: session.id,
    status,
  });
  if (session.status === "stopped") return answer("stopped", "External agent already stopped");
  const marked = await ctx.store.sessions.setStatus(session.id, "stopping", [
    "pending",
    "starting",
    "running",
    "stopping",
    "failed",
  ]);
  if (!marked) return answer("stopped", "External agent already stopped");
  const shot = ACTIVE_SESSION_STATUSES.includes(session.status)
    ? await takeFinalScreenshot(ctx, session, log)
    : false;
  await scheduler.cutSandbox(session.id, "session stopped");
  if (session.specTaskId) await ctx.store.specTasks.releasePlanning({ taskId: session.specTaskId });
  const fields = { session_id: session.id, wolf_id: session.wolfInstanceId, lobby_id: session.lobbyId };
  if (session.wolfInstanceId) {
    let confirmed = false;
    try {
      confirmed = await scheduler.stopSessionLobbies(session.wolfInstanceId, session);
    } catch (err) {
      log.warn({ ...fields, err: (err as Error).message }, "could not stop the Wolf lobby");
    }
    if (!confirmed) {
      log.warn({ ...fields, final_screenshot: shot }, "host unreachable: stop recorded for when it returns");
      return answer(
        "stopping",
        `Stop requested: host ${session.wolfInstanceId} is unreachable; its sandbox is stopped when it returns`,
      );
    }
    log.info(fields, "Wolf lobby stopped");
  }
  await scheduler.release(session.id, "stopped");
  log.info({ ...fields, final_screenshot: shot }, "External agent stopped");
  return answer("stopped", "External agent stopped");
}

/**
 * Stops every session placed on one host, in parallel (each bounded by the final screenshot's and
 * the host call's deadlines): what a server shutting down with its in-process host does, so no
 * session is left running and no task in planning. Returns how many were stopped.
 */
export async function stopHostSessions(
  ctx: ApiContext,
  hostId: string,
  log: FastifyBaseLogger,
): Promise<number> {
  const scheduler = new Scheduler(ctx);
  const sessions = await ctx.store.sessions.list({
    wolfInstanceId: hostId,
    statuses: ACTIVE_SESSION_STATUSES,
  });
  const results = await Promise.allSettled(sessions.map((s) => stopSession(ctx, scheduler, s, log)));
  for (const [i, r] of results.entries())
    if (r.status === "rejected")
      log.warn({ session_id: sessions[i].id, err: (r.reason as Error).message }, "stop at shutdown failed");
  log.info(
    { wolf_id: hostId, sessions: sessions.length, connected: ctx.dialer.isConnected(wolfRunnerId(hostId)) },
    "sessions of the host stopped",
  );
  return results.filter((r) => r.status === "fulfilled").length;
}

export async function lifecycleRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  const scheduler = new Scheduler(ctx);

  app.post<{ Params: { id: string } }>(
    "/api/v1/spec-tasks/:id/start-planning",
    { preHandler: ctx.auth.preHandler, schema: { params: idParams } },
    async (request) => {
      const principal = principalOf(request);
      const userId = requireUser(principal);
      requireWrite(principal);
      const task = await loadVisibleTask(ctx, principal, request.params.id);
      await ctx.quotas.checkStart(userId);
      return startPlanning(ctx, scheduler, request.log, userId, task.id);
    },
  );

  app.delete<{ Params: { sessionID: string } }>(
    "/api/v1/external-agents/:sessionID",
    { preHandler: ctx.auth.preHandler, schema: { params: sessionIdParams } },
    async (request, reply) => {
      const principal = principalOf(request);
      requireUser(principal);
      const session = await ctx.auth.loadOwnedSession(principal, request.params.sessionID);
      requireWrite(principal);
      const answer = await stopSession(ctx, scheduler, session, request.log);
      return reply.code(answer.status === "stopping" ? 202 : 200).send(answer);
    },
  );
}
