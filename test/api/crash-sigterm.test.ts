// SIGTERM of `revdial server --with-local-host` (what `npm start` runs) with a running session:
// the local host's sessions end `stopped` WITH their final screenshot (the sandbox answered), and
// their task is back in `backlog`, not left in `planning`. Real server process, real local host,
// real Xvfb sandbox, the CLI as a user runs it; the store is read afterwards by a server on the
// same data dir.

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, it } from "node:test";
import { startServer } from "../../src/api/server.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { missingTools } from "../agent/desktop/xvfb.ts";
import { MAIN, revdial } from "../e2e/cli-harness.ts";

describe("SIGTERM of the server with its local host", { skip: missingTools("Xvfb") }, () => {
  let dir: string;
  let server: ChildProcess;
  let env: Record<string, string>;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "revdial-sigterm-"));
    server = spawn(
      process.execPath,
      [MAIN, "server", "--with-local-host", "--listen", "127.0.0.1:0", "--data-dir", join(dir, "data")],
      { cwd: dir, stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, REVDIAL_LOG_LEVEL: "warn" } },
    );
    let url = "";
    for await (const line of createInterface({ input: server.stdout! })) {
      url ||= /^listening on (\S+)/.exec(line)?.[1] ?? "";
      if (line.startsWith("local sandbox host running")) break;
    }
    assert.ok(url, "the server printed its URL");
    env = { REVDIAL_URL: url, REVDIAL_DATA_DIR: join(dir, "data") };
  });
  after(async () => {
    if (server.exitCode === null && server.signalCode === null) {
      server.kill("SIGKILL");
      await once(server, "exit");
    }
    await rm(dir, { recursive: true, force: true });
  });

  it("the session ends stopped with its final screenshot; the task is back in backlog", async () => {
    assert.equal((await revdial(["project", "fork", "modern-todo-app"], env, dir)).code, 0);
    const list = await revdial(["spectask", "list", "--json"], env, dir);
    const taskId = (JSON.parse(list.stdout) as { id: string }[])[0].id;
    const start = await revdial(["spectask", "start", taskId, "--wait", "--timeout", "60s"], env, dir);
    assert.equal(start.code, 0, start.stderr);
    const sessionId = /^Session ID: (ses_[0-9a-z]{26})$/m.exec(start.stdout)![1];

    server.kill("SIGTERM");
    const [code] = await once(server, "exit");
    assert.equal(code, 0);

    const reader = await startServer({
      listen: "127.0.0.1:0",
      dataDir: join(dir, "data"),
      logger: silentLogger(),
    });
    try {
      const session = await reader.store.sessions.get(sessionId);
      assert.equal(session?.status, "stopped");
      assert.equal(
        session?.hasFinalScreenshot,
        true,
        "the final screenshot was taken before the sandbox ended",
      );
      assert.equal(
        (await reader.store.specTasks.get(taskId))?.status,
        "backlog",
        "the task is not left in planning",
      );
      const local = (await reader.store.wolfInstances.list()).find((h) => h.id === "local");
      assert.equal(local?.connectedSandboxes, 0);
    } finally {
      await reader.close();
    }
  });
});
