// `revdial session create [--name N]`, `revdial session list`, `revdial session show ID`, and the
// conversation with its agent: `session send ID TEXT [--follow]`, `session history ID` (session-chat.ts).

import type { Command } from "commander";
import type { SessionView } from "../../api/routes/route-views.ts";
import { createApiClient } from "../api-client.ts";
import { type Column, formatJson, formatRecord, print, printList } from "../output.ts";
import { registerChatCommands } from "./session-chat.ts";

const SESSION_COLUMNS: readonly Column<SessionView>[] = [
  { header: "id", value: (s) => s.id },
  { header: "name", value: (s) => s.name },
  { header: "status", value: (s) => s.status },
  { header: "sandbox", value: (s) => (s.sandbox_connected ? "connected" : "no") },
  { header: "wolf", value: (s) => s.wolf_instance_id },
  { header: "created", value: (s) => s.created_at },
];

interface ListFlags {
  status?: string;
  olderThan?: string;
  mine?: boolean;
  json?: boolean;
}

function listQuery(flags: ListFlags): string {
  const params = new URLSearchParams();
  if (flags.status) params.set("status", flags.status);
  if (flags.olderThan) params.set("older_than", flags.olderThan);
  if (flags.mine) params.set("owner", "me");
  const qs = params.toString();
  return qs ? `?${qs}` : "";
}

export function register(program: Command): void {
  const session = program.command("session").description("sessions (one sandbox each)");

  session
    .command("create")
    .description("create a session")
    .option("--name <name>", "session name")
    .option("--spec-task <id>", "the spec task the session works on")
    .option("--json", "print JSON")
    .action(async (flags: { name?: string; specTask?: string; json?: boolean }) => {
      const created = await createApiClient().post<SessionView>("/api/v1/sessions", {
        name: flags.name,
        spec_task_id: flags.specTask,
      });
      if (flags.json) return print(formatJson(created));
      print(`Session created: ${created.id}\n`);
    });

  session
    .command("list")
    .description("list your sessions (an admin sees everyone's)")
    .option("--status <status>", "only sessions in this status")
    .option("--older-than <duration>", "only sessions created longer ago than this, e.g. 1h")
    .option("--mine", "an admin's own sessions only")
    .option("--json", "print JSON")
    .action(async (flags: ListFlags) => {
      const sessions = await createApiClient().get<SessionView[]>(`/api/v1/sessions${listQuery(flags)}`);
      printList(sessions, SESSION_COLUMNS, flags.json);
    });

  session
    .command("show")
    .description("show one session")
    .argument("<id>", "session id (ses_…)")
    .option("--json", "print JSON")
    .action(async (id: string, flags: { json?: boolean }) => {
      const view = await createApiClient().get<SessionView>(`/api/v1/sessions/${encodeURIComponent(id)}`);
      print(flags.json ? formatJson(view) : formatRecord({ ...view }));
    });

  registerChatCommands(session);
}
