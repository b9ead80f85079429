// The conversation end to end, as a user has it: a real server, a real host (process driver: Xvfb
// and `revdial agent --agent-command` per sandbox) running the example agent, and the revdial CLI.
// Starting a spec task sends the task to the agent, which answers by itself; `revdial session send
// --follow` prints the agent's reply as it streams, which also reaches the SSE stream in several
// parts and ends `complete` in the interactions; `revdial session history` shows both turns. Stopping
// the session leaves no process of the sandbox, agent program included.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { exampleAgentCommand } from "../../src/agent/example-agent.ts";
import { groupAlive } from "../../src/host/process-driver.ts";
import { missingTools } from "../agent/desktop/xvfb.ts";
import { interactionEvents, SseReader } from "../api/agent-sync-harness.ts";
import { World } from "../host/host-harness.ts";
import { revdial } from "./cli-harness.ts";

interface Turn {
  id: string;
  content: string;
  response: string;
  state: string;
}

describe("agent sync end to end", { skip: missingTools("Xvfb") }, () => {
  let w: World;
  let alice: { key: string; userId: string; taskIds: string[] };
  let sessionId: string;

  before(async () => {
    w = await new World().start();
    await w.startHost("chat", {
      maxSandboxes: 2,
      stopTimeoutMs: 3_000,
      agentCommand: `${exampleAgentCommand()} --part-delay-ms 40`,
    });
    alice = await w.user("alice", 1);
  });
  after(async () => {
    await w.close();
  });

  const turns = async () =>
    (await w.call<Turn[]>("GET", `/api/v1/sessions/${sessionId}/interactions`, alice.key)).body;
  const cli = (args: string[]) => revdial(args, { REVDIAL_URL: w.url, REVDIAL_API_KEY: alice.key });

  it("start-planning sends the task to the agent, which answers it by itself", async () => {
    const started = await w.startPlanning(alice.key, alice.taskIds[0]);
    assert.equal(started.status, 200, JSON.stringify(started.body));
    sessionId = started.body.session_id;
    await w.until(async () => (await turns())[0]?.state === "complete", "the task answered", 60_000);
    const [first] = await turns();
    assert.equal(first.content, "task 0");
    assert.equal(first.response, "You said: task 0");
  });

  it("session send --follow prints the streamed reply; the SSE stream has it in parts; complete", async () => {
    const sse = await SseReader.open(`${w.url}/api/v1/sessions/${sessionId}/events`, alice.key);
    const run = await cli(["session", "send", sessionId, "hello from the command line", "--follow"]);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout.trim(), "You said: hello from the command line");

    const [, second] = await turns();
    assert.equal(second.content, "hello from the command line");
    assert.equal(second.state, "complete");
    assert.equal(second.response, "You said: hello from the command line");
    await sse.until(
      (e) => interactionEvents(e, second.id).some((d) => d.state === "complete"),
      "the completion on the stream",
    );
    const parts = new Set(
      interactionEvents(sse.events, second.id)
        .map((d) => d.response)
        .filter(Boolean),
    );
    assert.ok(parts.size >= 3, `the reply arrived in ${parts.size} parts`);
    sse.close();
  });

  it("session history prints the conversation", async () => {
    const run = await cli(["session", "history", sessionId]);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /you: task 0\nagent: You said: task 0\n\(complete\)/);
    assert.match(
      run.stdout,
      /you: hello from the command line\nagent: You said: hello from the command line/,
    );
    const json = await cli(["session", "history", sessionId, "--json"]);
    assert.equal((JSON.parse(json.stdout) as Turn[]).length, 2);
  });

  it("session send without --follow says where the message is; another user's session is not found", async () => {
    const run = await cli(["session", "send", sessionId, "third"]);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /^Message int_[0-9a-z]{26} sent to the agent$/m);
    await w.until(async () => (await turns())[2]?.state === "complete", "the third answered", 30_000);
    const bob = await w.user("bob");
    const other = await revdial(["session", "send", sessionId, "let me in"], {
      REVDIAL_URL: w.url,
      REVDIAL_API_KEY: bob.key,
    });
    assert.equal(other.code, 1);
    assert.match(other.stderr, /not found \(HTTP 404\)/);
    assert.equal((await turns()).length, 3);
  });

  it("stopping the session leaves no process of the sandbox, agent program included", async () => {
    const pgid = w.hosts
      .get("chat")!
      .driver.list()
      .find((l) => l.sessionId === sessionId)?.pid;
    assert.ok(pgid && groupAlive(pgid));
    const res = await w.call("DELETE", `/api/v1/external-agents/${sessionId}`, alice.key);
    assert.equal(res.status, 200);
    assert.equal(groupAlive(pgid), false);
  });
});
