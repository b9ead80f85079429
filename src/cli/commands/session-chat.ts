// `revdial session send ID "text" [--follow]` and `revdial session history ID`: talk with a
// session's agent. `send` queues the message (delivered at once when the agent is connected); with
// --follow it opens the session's event stream FIRST, then sends, and prints the agent's answer as
// it streams, returning when the turn ends: exit 0 when complete, 1 when cancelled or failed, or
// when --timeout (default 10m) passes first. `history` prints every turn, oldest first.

import type { Command } from "commander";
import type { InteractionView } from "../../api/sync-hub.ts";
import { ApiClient, clientOptionsFromEnv, createApiClient } from "../api-client.ts";
import { durationOption } from "../env.ts";
import { formatJson, print } from "../output.ts";

/** What POST /messages answers: the interaction, and whether an agent is connected to take it. */
type SentView = InteractionView & { agent_connected: boolean };

interface SendFlags {
  follow?: boolean;
  timeout: string;
  json?: boolean;
}

export function registerChatCommands(session: Command): void {
  session
    .command("send")
    .description("send a message to the session's agent")
    .argument("<id>", "session id (ses_…)")
    .argument("<text>", "the message")
    .option("--follow", "print the agent's answer as it streams, until the turn ends")
    .option("--timeout <duration>", "with --follow: give up after this long", "10m")
    .option("--json", "print the interaction as JSON")
    .action(async (id: string, text: string, flags: SendFlags) => {
      if (flags.follow) {
        process.exitCode = await sendAndFollow(id, text, durationOption("--timeout", flags.timeout));
        return;
      }
      const turn = await createApiClient().post<SentView>(messagesPath(id), { content: text });
      if (flags.json) return print(formatJson(turn));
      const where = turn.agent_connected ? "sent to the agent" : "queued until the agent connects";
      print(`Message ${turn.id} ${where}\n`);
    });

  session
    .command("history")
    .description("print the session's conversation with its agent")
    .argument("<id>", "session id (ses_…)")
    .option("--json", "print JSON")
    .action(async (id: string, flags: { json?: boolean }) => {
      const turns = await createApiClient().get<InteractionView[]>(
        `/api/v1/sessions/${encodeURIComponent(id)}/interactions`,
      );
      if (flags.json) return print(formatJson(turns));
      print(turns.map(formatTurn).join(""));
    });
}

function messagesPath(id: string): string {
  return `/api/v1/sessions/${encodeURIComponent(id)}/messages`;
}

export function formatTurn(turn: InteractionView): string {
  const answer = turn.response ? `agent: ${turn.response}` : "agent: -";
  return `[${turn.created_at}] you: ${turn.content}\n${answer}\n(${turn.state})\n\n`;
}

/** Sends, then prints the answer's new text as each update arrives; the exit code. */
async function sendAndFollow(id: string, text: string, timeoutMs: number): Promise<number> {
  const client = new ApiClient({ ...clientOptionsFromEnv(), timeoutMs });
  const stream = await client.raw(`/api/v1/sessions/${encodeURIComponent(id)}/events`, {
    accept: "text/event-stream",
  });
  if (!stream.body) throw new Error("the server sent no event stream");
  const turn = await client.post<SentView>(messagesPath(id), { content: text });
  if (!turn.agent_connected) process.stderr.write("(the agent is not connected: the message waits for it)\n");
  let printed = "";
  try {
    for await (const event of readEvents(stream.body)) {
      if (event.event !== "interaction") continue;
      const update = event.data as InteractionView;
      if (update.id !== turn.id) continue;
      printed = printDelta(printed, update.response);
      if (update.state === "waiting") continue;
      process.stdout.write(printed.endsWith("\n") ? "" : "\n");
      if (update.state === "complete") return 0;
      process.stderr.write(`the turn ended ${update.state}\n`);
      return 1;
    }
  } catch (err) {
    if ((err as Error).name === "TimeoutError" || (err as Error).name === "AbortError") {
      process.stderr.write(`\nno end of the turn within ${timeoutMs} ms\n`);
      return 1;
    }
    throw err;
  }
  process.stderr.write("\nthe event stream ended before the turn did\n");
  return 1;
}

/** Writes what `next` adds to what was printed (or all of it, on a new line, when it was rewritten). */
function printDelta(printed: string, next: string): string {
  if (next === printed) return printed;
  if (next.startsWith(printed)) process.stdout.write(next.slice(printed.length));
  else process.stdout.write(`\n${next}`);
  return next;
}

interface StreamEvent {
  event: string;
  data: unknown;
}

/** Server-Sent Events from a response body (comments and id-only blocks are skipped). */
async function* readEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<StreamEvent> {
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true });
    for (let cut = buffer.indexOf("\n\n"); cut >= 0; cut = buffer.indexOf("\n\n")) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data: string[] = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length > 0) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}
