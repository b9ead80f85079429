// The session lifecycle from the command line:
//   spectask start TASK_ID [--wait] [--timeout 60s]   start planning: a session on a sandbox host
//   spectask stop SESSION_ID                          final screenshot kept, sandbox stopped (or, when
//                                                     its host is offline, the stop recorded for its return)
//   spectask cleanup (--all | --older-than D | SESSION_ID) [--dry-run] [--all-users]
// `--wait` polls the session (with backoff, bounded by --timeout) until its sandbox is connected,
// with a spinner on a terminal and one line per change otherwise.

import type { Command } from "commander";
import type { SessionView, specTaskView } from "../../api/routes/route-views.ts";
import { ApiRequestError, createApiClient } from "../api-client.ts";
import { CliUsageError, durationOption } from "../env.ts";
import { formatJson, print } from "../output.ts";

interface StartAnswer {
  task: ReturnType<typeof specTaskView>;
  session_id: string;
}

/** A command failure printed as `Error: {message}`, exit status 1. */
class CommandFailed extends Error {
  readonly exitCode = 1;
}

const ACTIVE = new Set(["starting", "running"]);
const ENDED = new Set(["stopped", "failed"]);
const SPINNER = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
/** Longest pause between two polls of the session. */
const MAX_POLL_MS = 1_000;

function sessionPath(id: string): string {
  return `/api/v1/sessions/${encodeURIComponent(id)}`;
}

async function start(taskId: string, flags: { wait?: boolean; timeout: string; json?: boolean }) {
  const timeoutMs = durationOption("--timeout", flags.timeout);
  const client = createApiClient();
  const answer = await client.post<StartAnswer>(
    `/api/v1/spec-tasks/${encodeURIComponent(taskId)}/start-planning`,
    {},
  );
  if (flags.json && !flags.wait) return print(formatJson(answer));
  if (!flags.json) print(`Planning session started: ${taskId}\nSession ID: ${answer.session_id}\n`);
  if (!flags.wait) return;
  const session = await waitConnected(answer.session_id, timeoutMs);
  if (flags.json) return print(formatJson({ ...answer, session }));
  print(`Sandbox connected (host ${session.wolf_instance_id ?? "-"}, lobby ${session.lobby_id ?? "-"})\n`);
}

/** Polls until the sandbox is connected; fails on a session that ended or at the deadline. */
async function waitConnected(sessionId: string, timeoutMs: number): Promise<SessionView> {
  const client = createApiClient();
  const tty = process.stderr.isTTY === true;
  const started = Date.now();
  let frame = 0;
  let lastStatus = "";
  const spin = tty ? setInterval(() => draw(), 100) : null;
  function draw() {
    const seconds = Math.floor((Date.now() - started) / 1000);
    process.stderr.write(
      `\r${SPINNER[frame++ % SPINNER.length]} Waiting for the sandbox (${lastStatus}, ${seconds}s)`,
    );
  }
  try {
    for (let pause = 100; ; pause = Math.min(pause * 2, MAX_POLL_MS)) {
      const session = await client.get<SessionView>(sessionPath(sessionId));
      if (session.status !== lastStatus && !tty) process.stderr.write(`waiting: session ${session.status}\n`);
      lastStatus = session.status;
      if (session.sandbox_connected) return session;
      if (ENDED.has(session.status))
        throw new CommandFailed(`session ${sessionId} ${session.status} before its sandbox connected`);
      if (Date.now() - started + pause > timeoutMs)
        throw new CommandFailed(
          `sandbox not connected within ${flags(timeoutMs)} (status ${session.status})`,
        );
      await new Promise((resolve) => setTimeout(resolve, pause));
    }
  } finally {
    if (spin) {
      clearInterval(spin);
      process.stderr.write("\r\x1b[K");
    }
  }
}

function flags(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

interface StopAnswer {
  message: string;
  session_id: string;
  /** `stopping` (HTTP 202): the host is unreachable; it stops the sandbox when it returns. */
  status?: "stopped" | "stopping";
}

function stopLine(answer: StopAnswer): string {
  return answer.status === "stopping"
    ? `Session stopping: ${answer.session_id}\n${answer.message}\n`
    : `Session stopped: ${answer.session_id}\n`;
}

async function stop(sessionId: string, opts: { json?: boolean }) {
  const answer = await createApiClient().delete<StopAnswer>(
    `/api/v1/external-agents/${encodeURIComponent(sessionId)}`,
  );
  print(opts.json ? formatJson(answer) : stopLine(answer));
}

interface CleanupFlags {
  all?: boolean;
  olderThan?: string;
  dryRun?: boolean;
  allUsers?: boolean;
}

async function cleanupTargets(sessionId: string | undefined, f: CleanupFlags): Promise<SessionView[]> {
  const chosen = [f.all, f.olderThan !== undefined, sessionId !== undefined].filter(Boolean).length;
  if (chosen !== 1) throw new CliUsageError("give exactly one of --all, --older-than DURATION or SESSION_ID");
  const client = createApiClient();
  if (sessionId) {
    const session = await client.get<SessionView>(sessionPath(sessionId));
    return ACTIVE.has(session.status) ? [session] : [];
  }
  const params = new URLSearchParams();
  if (f.olderThan !== undefined) {
    durationOption("--older-than", f.olderThan);
    params.set("older_than", f.olderThan);
  }
  if (!f.allUsers) params.set("owner", "me");
  const sessions = await client.get<SessionView[]>(`/api/v1/sessions?${params}`);
  return sessions.filter((s) => ACTIVE.has(s.status));
}

async function cleanup(sessionId: string | undefined, f: CleanupFlags) {
  const targets = await cleanupTargets(sessionId, f);
  const client = createApiClient();
  let stopped = 0;
  let failed = 0;
  for (const s of targets) {
    const what = `${s.id} (${s.status}, created ${s.created_at}${s.name ? `, ${s.name}` : ""})`;
    if (f.dryRun) {
      print(`Would stop ${what}\n`);
      continue;
    }
    try {
      const answer = await client.delete<StopAnswer>(`/api/v1/external-agents/${encodeURIComponent(s.id)}`);
      stopped++;
      print(
        answer.status === "stopping" ? `Stop requested ${what}: host unreachable\n` : `Stopped ${what}\n`,
      );
    } catch (err) {
      if (!(err instanceof ApiRequestError)) throw err;
      failed++;
      print(`Failed ${s.id}: ${err.message}\n`);
    }
  }
  if (f.dryRun) print(`Dry run: ${targets.length} session(s) would be stopped\n`);
  else print(`Stopped ${stopped} session(s)${failed ? `, ${failed} failed` : ""}\n`);
  if (failed) throw new CommandFailed(`${failed} session(s) could not be stopped`);
}

export function registerLifecycle(spectask: Command): void {
  spectask
    .command("start")
    .description("start planning a spec task: a session whose sandbox runs on a host")
    .argument("<task-id>", "spec task id (tsk_…)")
    .option("--wait", "wait until the sandbox is connected")
    .option("--timeout <duration>", "how long --wait waits", "60s")
    .option("--json", "print JSON")
    .action(start);

  spectask
    .command("stop")
    .description("stop a session's sandbox (its final screenshot is kept)")
    .argument("<session-id>", "session id (ses_…)")
    .option("--json", "print JSON")
    .action(stop);

  spectask
    .command("cleanup")
    .description("stop running sessions: all, those older than a duration (at most 100 years), or one")
    .argument("[session-id]", "one session id (ses_…)")
    .option("--all", "every running session of yours")
    .option("--older-than <duration>", "running sessions created longer ago than this (e.g. 2h)")
    .option("--dry-run", "print what would be stopped, change nothing")
    .option("--all-users", "admin: every user's sessions, not only yours")
    .action(cleanup);
}
