// An agent program that answers one message and exits 1 (so the bridge must start it again):
// appends the line it read to $SYNC_TEST_LOG, answers with the interaction_id, says goodbye on stderr.

import { appendFileSync } from "node:fs";
import { createInterface } from "node:readline";

const lines = createInterface({ input: process.stdin });
lines.once("line", (line) => {
  appendFileSync(process.env.SYNC_TEST_LOG as string, `${line}\n`);
  const id = (JSON.parse(line) as { data: { interaction_id: string } }).data.interaction_id;
  const out = (event_type: string, data: object) =>
    process.stdout.write(`${JSON.stringify({ event_type, data })}\n`);
  out("message_added", { role: "assistant", content: `answered by pid ${process.pid}`, interaction_id: id });
  out("message_completed", { interaction_id: id });
  process.stderr.write("one-turn agent exiting\n");
  process.stdout.end(() => process.exit(1));
});
