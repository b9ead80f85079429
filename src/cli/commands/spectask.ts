// `revdial spectask list [--project ID]`, `spectask create`, and the sandbox of a session:
// `spectask screenshot SESSION_ID [-o FILE] [--format png|jpeg]` and
// `spectask clipboard SESSION_ID [--set TEXT]`. The lifecycle (start, stop, cleanup) is in
// spectask-lifecycle.ts and registered here.

import { createWriteStream } from "node:fs";
import { rename, rm, writeFile } from "node:fs/promises";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as WebReadableStream } from "node:stream/web";
import type { Command } from "commander";
import type { specTaskView } from "../../api/routes/route-views.ts";
import { ApiRequestError, createApiClient } from "../api-client.ts";
import { CliUsageError } from "../env.ts";
import { formatJson, print, printList } from "../output.ts";
import { TASK_COLUMNS } from "./project.ts";
import { registerLifecycle } from "./spectask-lifecycle.ts";

type SpecTaskView = ReturnType<typeof specTaskView>;

interface Clipboard {
  type: "text" | "image";
  data: string;
}

/** A command failure printed as `Error: {message}`, exit status 1. */
class CommandFailed extends Error {
  readonly exitCode = 1;
}

const FORMATS = ["png", "jpeg"] as const;

function pad(n: number): string {
  return String(n).padStart(2, "0");
}

/** `screenshot-YYYYMMDD-HHMMSS.{ext}` in local time. */
export function defaultScreenshotName(now: Date, extension: string): string {
  const date = `${now.getFullYear()}${pad(now.getMonth() + 1)}${pad(now.getDate())}`;
  const time = `${pad(now.getHours())}${pad(now.getMinutes())}${pad(now.getSeconds())}`;
  return `screenshot-${date}-${time}.${extension}`;
}

function extensionFor(contentType: string | null, format: string | undefined): string {
  if (contentType?.includes("jpeg")) return "jpg";
  if (contentType?.includes("png")) return "png";
  return format === "jpeg" ? "jpg" : "png";
}

function screenshotPath(sessionId: string, flags: { format?: string; quality?: string }): string {
  const params = new URLSearchParams();
  if (flags.format) {
    if (!(FORMATS as readonly string[]).includes(flags.format))
      throw new CliUsageError("--format must be png or jpeg");
    params.set("format", flags.format);
  }
  if (flags.quality) {
    const q = Number(flags.quality);
    if (!Number.isInteger(q) || q < 1 || q > 100)
      throw new CliUsageError("--quality must be an integer from 1 to 100");
    params.set("quality", String(q));
  }
  const qs = params.toString();
  return `/api/v1/external-agents/${encodeURIComponent(sessionId)}/screenshot${qs ? `?${qs}` : ""}`;
}

/** Streams the body to `file` through a temporary name, so a failure leaves no partial image. */
async function saveStream(body: WebReadableStream<Uint8Array>, file: string): Promise<void> {
  const temp = `${file}.part`;
  try {
    await pipeline(Readable.fromWeb(body), createWriteStream(temp));
    await rename(temp, file);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
}

async function screenshot(sessionId: string, flags: { output?: string; format?: string; quality?: string }) {
  const path = screenshotPath(sessionId, flags);
  let answer: Awaited<ReturnType<ReturnType<typeof createApiClient>["raw"]>>;
  try {
    answer = await createApiClient().raw(path, { accept: "image/*" });
  } catch (err) {
    if (!(err instanceof ApiRequestError)) throw err;
    throw new CommandFailed(`screenshot request failed: ${err.status} - ${err.serverMessage}`);
  }
  const file =
    flags.output ??
    defaultScreenshotName(new Date(), extensionFor(answer.headers.get("content-type"), flags.format));
  if (!answer.body) throw new CommandFailed("screenshot request failed: empty answer");
  await saveStream(answer.body as WebReadableStream<Uint8Array>, file);
  const paused =
    answer.headers.get("x-paused-screenshot") === "true" ? " (final screenshot of a stopped session)" : "";
  print(`Screenshot saved to ${file}${paused}\n`);
}

async function clipboard(sessionId: string, flags: { set?: string; output?: string; json?: boolean }) {
  const client = createApiClient();
  const path = `/api/v1/external-agents/${encodeURIComponent(sessionId)}/clipboard`;
  if (flags.set !== undefined) {
    await client.post(path, { type: "text", data: flags.set });
    if (!flags.json) print("Clipboard set\n");
    return;
  }
  const clip = await client.get<Clipboard>(path);
  if (flags.json) return print(formatJson(clip));
  if (clip.type === "text") return print(clip.data.endsWith("\n") ? clip.data : `${clip.data}\n`);
  const bytes = Buffer.from(clip.data, "base64");
  if (!flags.output)
    return print(`(image on the clipboard, ${bytes.length} bytes; use -o FILE to save it)\n`);
  await writeFile(flags.output, bytes);
  print(`Clipboard image saved to ${flags.output}\n`);
}

export function register(program: Command): void {
  const spectask = program.command("spectask").description("spec tasks, and the sandbox of a session");

  spectask
    .command("list")
    .description("list spec tasks")
    .option("--project <id>", "only this project's tasks")
    .option("--json", "print JSON")
    .action(async (flags: { project?: string; json?: boolean }) => {
      const qs = flags.project ? `?project_id=${encodeURIComponent(flags.project)}` : "";
      printList(
        await createApiClient().get<SpecTaskView[]>(`/api/v1/spec-tasks${qs}`),
        TASK_COLUMNS,
        flags.json,
      );
    });

  spectask
    .command("create")
    .description("create a spec task in a project")
    .argument("<name>", "task name")
    .requiredOption("--project <id>", "the project")
    .option("--description <text>", "what the task is about")
    .option("--json", "print JSON")
    .action(async (name: string, flags: { project: string; description?: string; json?: boolean }) => {
      const body = { project_id: flags.project, name, description: flags.description };
      const task = await createApiClient().post<SpecTaskView>("/api/v1/spec-tasks", body);
      print(flags.json ? formatJson(task) : `Spec task created: ${task.id}\n`);
    });

  spectask
    .command("screenshot")
    .description("save a screenshot of the session's sandbox")
    .argument("<session-id>", "session id (ses_…)")
    .option("-o, --output <file>", "where to save it (default screenshot-YYYYMMDD-HHMMSS.png)")
    .option("--format <format>", "png or jpeg")
    .option("--quality <n>", "JPEG quality, 1-100")
    .action(screenshot);

  spectask
    .command("clipboard")
    .description("print the sandbox's clipboard, or set it with --set")
    .argument("<session-id>", "session id (ses_…)")
    .option("--set <text>", "set the clipboard to this text")
    .option("-o, --output <file>", "save an image clipboard to this file")
    .option("--json", "print JSON")
    .action(clipboard);

  registerLifecycle(spectask);
}
