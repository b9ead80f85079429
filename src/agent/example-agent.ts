// The example agent program: what `npm start`'s local host runs in each sandbox, so that a newcomer
// sees a conversation work before plugging in a real agent. It speaks the agent program's protocol
// (docs/agent-sync.md): one JSON message per line on stdin (`{type, data}` as the API sent it), one
// JSON event per line on stdout (`{event_type, data}`; the bridge adds session_id and timestamp).
//
// It announces itself (agent_ready), then answers each chat_message by echoing it, streamed as a few
// message_added updates of one message_id (each carrying the whole text so far), then
// message_completed. Turns are answered one at a time, in order; cancel_current_turn stops the
// turn being streamed. It exits when its stdin ends.
//
//   node src/agent/example-agent.ts [--part-delay-ms N]   (default 150 ms between streamed parts)

import { createInterface } from "node:readline";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";

/** How many parts an answer is streamed in (at most; short answers take fewer). */
const PARTS = 4;

function emit(event_type: string, data: Record<string, unknown> = {}): void {
  process.stdout.write(`${JSON.stringify({ event_type, data })}\n`);
}

/** The answer's text, cut at word boundaries into growing prefixes. */
export function streamedParts(answer: string, parts = PARTS): string[] {
  const words = answer.split(" ");
  const out: string[] = [];
  for (let i = 1; i <= parts; i++) {
    const prefix = words.slice(0, Math.ceil((words.length * i) / parts)).join(" ");
    if (prefix && prefix !== out.at(-1)) out.push(prefix);
  }
  return out;
}

interface Turn {
  interactionId: string | null;
  content: string;
}

async function main(partDelayMs: number): Promise<void> {
  const turns: Turn[] = [];
  let cancelled: string | null | undefined;
  let wake: (() => void) | null = null;
  let ended = false;
  emit("agent_ready", { agent: "revdial example agent" });
  emit("thread_created", { thread_id: `example-${process.pid}` });

  const lines = createInterface({ input: process.stdin });
  lines.on("line", (line) => {
    let message: { type?: string; data?: { content?: unknown; interaction_id?: unknown } };
    try {
      message = JSON.parse(line);
    } catch {
      process.stderr.write(`example agent: not JSON: ${line.slice(0, 200)}\n`);
      return;
    }
    const id = typeof message.data?.interaction_id === "string" ? message.data.interaction_id : null;
    if (message.type === "chat_message") {
      turns.push({ interactionId: id, content: String(message.data?.content ?? "") });
    } else if (message.type === "cancel_current_turn") {
      cancelled = id;
    }
    wake?.();
  });
  lines.once("close", () => {
    ended = true;
    wake?.();
  });

  for (;;) {
    const turn = turns.shift();
    if (!turn) {
      if (ended) return;
      await new Promise<void>((resolve) => {
        wake = resolve;
      });
      wake = null;
      continue;
    }
    cancelled = undefined;
    const messageId = `reply-${turn.interactionId ?? Date.now()}`;
    const base = { message_id: messageId, role: "assistant", interaction_id: turn.interactionId };
    for (const part of streamedParts(`You said: ${turn.content}`)) {
      if (cancelled !== undefined && (cancelled === null || cancelled === turn.interactionId)) break;
      emit("message_added", { ...base, content: part });
      await delay(partDelayMs);
    }
    emit("message_completed", { message_id: messageId, interaction_id: turn.interactionId });
  }
}

if (import.meta.main) {
  const at = process.argv.indexOf("--part-delay-ms");
  const partDelayMs = at > 0 ? Number(process.argv[at + 1]) : 150;
  if (!Number.isFinite(partDelayMs) || partDelayMs < 0) {
    process.stderr.write("--part-delay-ms must be a non-negative number\n");
    process.exit(2);
  }
  main(partDelayMs).then(
    () => process.exit(0),
    (err: Error) => {
      process.stderr.write(`example agent failed: ${err.message}\n`);
      process.exit(1);
    },
  );
}

/** The command line that runs this example agent with the current Node (for `--agent-command`). */
export function exampleAgentCommand(): string {
  const path = fileURLToPath(import.meta.url);
  return `${shellQuote(process.execPath)} ${shellQuote(path)}`;
}

function shellQuote(text: string): string {
  return /^[A-Za-z0-9_./:=-]+$/.test(text) ? text : `'${text.replaceAll("'", `'\\''`)}'`;
}
