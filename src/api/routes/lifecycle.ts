// The session lifecycle: start planning a spec task (a session, a place on a host, a sandbox) and
// stop an external agent (final screenshot kept, lobby stopped, keys revoked). The API reaches the
// host only through `wolf-{id}` and the sandbox only through `sandbox-{sessionID}`.
//
//   POST   /api/v1/spec-tasks/{id}/start-planning -> 200 {task, session_id}; 400 when the task is
//          not in backlog; 503 when no host has room. Returns once the host has the lobby, without
//          waiting for the sandbox to dial in (status `starting`; `running` once it does).
//   DELETE /api/v1/external-agents/{sessionID}    -> 200 {message, session_id} (owner or admin).

import type { FastifyBaseLogger, FastifyInstance } from "fastify";
import type { Session } from "../../store/index.ts";
import { principalOf, requireUser, requireWrite } from "../auth.ts";
import type { ApiContext } from "../context.ts";
import { ApiError } from "../http-errors.ts";
import { Scheduler } from "../scheduler.ts";
import { MAX_BUFFERED_SCREENSHOT_BYTES } from "./external-agents.ts";
import { sniffImageType } from "./image-type.ts";
import { idParams, sessionIdParams } from "./route-schemas.ts";
import { specTaskView } from "./route-views.ts";
import { readBounded, sandboxRunnerId } from "./sandbox-call.ts";
import { loadVisibleTask } from "./spec-tasks.ts";

/** Longest a stop waits for the final screenshot (it is best effort). */
export const FINAL_SCREENSHOT_TIMEOUT_MS = 5_000;

async function startPlanning(
  ctx: ApiContext,
  scheduler: Scheduler,
  log: FastifyBaseLogger,
  ownerId: string,
  taskId: string,
) {
  const store = ctx.store;
  if (!(await store.specTasks.setStatus(taskId, "planning", ["backlog"]))) {
    const task = await store.specTasks.get(taskId);
    throw new ApiError(
      400,
      "RD_ERR_SPEC_TASK_NOT_BACKLOG",
      `spec task ${taskId} is not in backlog (status: ${task?.status})`,
    );
  }
  const task = (await store.specTasks.get(taskId))!;
  const session = await store.sessions.create({ ownerId, name: task.name, specTaskId: task.id });
  try {
    const claim = await scheduler.claim(session);
    const { apiKey } = await ctx.auth.createSessionKey(session);
    const lobbyId = await scheduler.createLobby(claim.host.id, session, apiKey);
    await store.sessions.setLobby(session.id, lobbyId);
    log.info(
      { wolf_id: claim.host.id, lobby_id: lobbyId, session_id: session.id },
      "Wolf lobby created successfully",
    );
    log.info(
      { wolf_id: claim.host.id, new_count: claim.host.connectedSandboxes },
      "Incremented Wolf sandbox count",
    );
  } catch (err) {
    await scheduler.release(session.id, "failed");
    await store.specTasks.setStatus(task.id, "backlog", ["planning"]);
    log.warn({ session_id: session.id, err: (err as Error).message }, "planning session could not start");
    throw err;
  }
  log.info({ session_id: session.id, spec_task_id: task.id }, "Planning session started");
  // The task is the agent's first message, so it starts planning by itself (queued until it connects).
  await ctx.sync
    ?.send(session.id, [task.name, task.description].filter(Boolean).join("\n\n"))
    .catch((err: Error) =>
      log.warn({ session_id: session.id, err: err.message }, "could not queue the task for the agent"),
    );
  return { task: specTaskView(task), session_id: session.id };
}

/** The sandbox's screen, kept for after the stop; null when the sandbox does not answer in time. */
async function takeFinalScreenshot(
  ctx: ApiContext,
  session: Session,
  log: FastifyBaseLogger,
): Promise<boolean> {
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
    const bytes = await readBounded(
      res.body,
      MAX_BUFFERED_SCREENSHOT_BYTES,
      Math.max(1, deadline - Date.now()),
    );
    const type = sniffImageType(bytes) ?? String(res.headers["content-type"] ?? "application/octet-stream");
    await ctx.store.sessions.setFinalScreenshot(session.id, { bytes, contentType: type });
    log.info({ session_id: session.id, bytes: bytes.length }, "final screenshot stored");
    return true;
  } catch (err) {
    log.warn({ session_id: session.id, err: (err as Error).message }, "no final screenshot");
    return false;
  }
}

export async function stopSession(
  ctx: ApiContext,
  scheduler: Scheduler,
  session: Session,
  log: FastifyBaseLogger,
) {
  if (session.status === "stopped")
    return { message: "External agent already stopped", session_id: session.id };
  await ctx.store.sessions.setStatus(session.id, "stopping", ["pending", "starting", "running", "stopping"]);
  const shot = session.status === "pending" ? false : await takeFinalScreenshot(ctx, session, log);
  const fields = { session_id: session.id, wolf_id: session.wolfInstanceId, lobby_id: session.lobbyId };
  if (session.wolfInstanceId && session.lobbyId) {
    try {
      await scheduler.stopLobby(session.wolfInstanceId, session.lobbyId);
      log.info(fields, "Wolf lobby stopped");
    } catch (err) {
      log.warn({ ...fields, err: (err as Error).message }, "could not stop the Wolf lobby");
    }
  }
  await scheduler.release(session.id, "stopped");
  await ctx.store.sessions.setStatus(session.id, "stopped", ["failed"]);
  log.info({ ...fields, final_screenshot: shot }, "External agent stopped");
  return { message: "External agent stopped", session_id: session.id };
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
      return startPlanning(ctx, scheduler, request.log, userId, task.id);
    },
  );

  app.delete<{ Params: { sessionID: string } }>(
    "/api/v1/external-agents/:sessionID",
    { preHandler: ctx.auth.preHandler, schema: { params: sessionIdParams } },
    async (request) => {
      const principal = principalOf(request);
      requireUser(principal);
      const session = await ctx.auth.loadOwnedSession(principal, request.params.sessionID);
      requireWrite(principal);
      return stopSession(ctx, scheduler, session, request.log);
    },
  );
}
