// What a newcomer sees after `npm start` (`revdial server --with-local-host`), with no agent of
// their own: the local host gives every sandbox the example agent, so starting a task gets it
// answered, and `revdial session send --follow` gets a streamed reply, all through the CLI.

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, it } from "node:test";
import { missingTools } from "../agent/desktop/xvfb.ts";
import { MAIN, revdial } from "./cli-harness.ts";

describe("npm start: the example agent answers out of the box", { skip: missingTools("Xvfb") }, () => {
  let dir: string;
  let server: ChildProcess;
  let env: Record<string, string>;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "revdial-e2e-sync-"));
    const serverEnv = { ...process.env };
    delete serverEnv.REVDIAL_AGENT_COMMAND;
    server = spawn(
      process.execPath,
      [MAIN, "server", "--with-local-host", "--listen", "127.0.0.1:0", "--data-dir", join(dir, "data")],
      { cwd: dir, stdio: ["ignore", "pipe", "ignore"], env: serverEnv },
    );
    const lines = createInterface({ input: server.stdout! });
    let url = "";
    for await (const line of lines) {
      const m = /^listening on (\S+)/.exec(line);
      if (m) url = m[1];
      if (line.startsWith("local sandbox host running")) break;
    }
    assert.ok(url, "the server printed its URL");
    env = { REVDIAL_URL: url, REVDIAL_DATA_DIR: join(dir, "data") };
  });
  after(async () => {
    if (server.exitCode === null) {
      server.kill("SIGTERM");
      await once(server, "exit");
    }
    await rm(dir, { recursive: true, force: true });
  });

  it("a started task is answered, and session send --follow streams a reply", async () => {
    assert.equal((await revdial(["project", "fork", "modern-todo-app"], env, dir)).code, 0);
    const list = await revdial(["spectask", "list", "--json"], env, dir);
    const task = (JSON.parse(list.stdout) as { id: string; name: string }[])[0];
    const start = await revdial(["spectask", "start", task.id, "--wait", "--timeout", "60s"], env, dir);
    assert.equal(start.code, 0, start.stderr);
    const sessionId = /^Session ID: (ses_[0-9a-z]{26})$/m.exec(start.stdout)?.[1];
    assert.ok(sessionId, start.stdout);

    const reply = await revdial(
      ["session", "send", sessionId, "hi there", "--follow", "--timeout", "60s"],
      env,
      dir,
    );
    assert.equal(reply.code, 0, reply.stderr);
    assert.equal(reply.stdout.trim(), "You said: hi there");

    // The task went first (queued at start-planning, delivered once the agent connected).
    const history = await revdial(["session", "history", sessionId, "--json"], env, dir);
    const turns = JSON.parse(history.stdout) as { content: string; response: string; state: string }[];
    assert.equal(turns.length, 2);
    assert.ok(turns[0].content.startsWith(task.name));
    assert.equal(turns[0].state, "complete");
    assert.equal(turns[0].response, `You said: ${turns[0].content}`);
    assert.equal(turns[1].state, "complete");
  });
});
