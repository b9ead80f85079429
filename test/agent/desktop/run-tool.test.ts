// run-tool.ts: output, exit codes, deadlines, output caps, and the detaching tool whose forked child
// keeps stdout and stderr open (the xclip -i fault: the request hung until the selection changed).

import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { ConcurrencyLimit } from "../../../src/agent/desktop/concurrency-limit.ts";
import { runTool } from "../../../src/agent/desktop/run-tool.ts";

const base = { env: process.env, timeoutMs: 5000, maxOutputBytes: 1024 };

test("captures stdout, stderr and the exit code; stdin is written and closed", async () => {
  const result = await runTool({
    ...base,
    command: "sh",
    args: ["-c", "cat; echo oops >&2; exit 3"],
    input: Buffer.from("in"),
  });
  assert.deepEqual([result.code, result.stdout.toString(), result.stderr], [3, "in", "oops"]);
});

test("a missing tool is RD_ERR_DESKTOP_TOOL_FAILED saying it is not installed", async () => {
  await assert.rejects(runTool({ ...base, command: "no-such-tool-revdial", args: [] }), {
    code: "RD_ERR_DESKTOP_TOOL_FAILED",
    message: /not installed/,
  });
});

test("a tool past its deadline is killed", async () => {
  const started = performance.now();
  await assert.rejects(
    runTool({ ...base, command: "sleep", args: ["30"], timeoutMs: 100 }),
    /did not finish in 100 ms/,
  );
  assert.ok(performance.now() - started < 2000);
});

test("output past the cap fails the run", async () => {
  await assert.rejects(
    runTool({ ...base, command: "head", args: ["-c", "4096", "/dev/zero"] }),
    /more than 1024 bytes/,
  );
});

test("regression: a detaching tool finishes at its exit though its child holds stdout and stderr", async () => {
  const dir = await mkdtemp(join(tmpdir(), "revdial-run-tool-"));
  const pidFile = join(dir, "child.pid");
  const script = `cat >/dev/null; sleep 30 & echo "$!" > "${pidFile}"; exit 0`;
  try {
    const started = performance.now();
    const result = await runTool({
      ...base,
      command: "sh",
      args: ["-c", script],
      input: Buffer.from("x"),
      detaches: true,
    });
    assert.equal(result.code, 0);
    assert.ok(performance.now() - started < 2000, "did not wait for the child");
  } finally {
    const pid = Number(await readFile(pidFile, "utf8").catch(() => ""));
    if (pid > 0) process.kill(pid, "SIGKILL");
    await rm(dir, { recursive: true, force: true });
  }
});

test("a detaching tool that fails still reports its stderr", async () => {
  const result = await runTool({
    ...base,
    command: "sh",
    args: ["-c", "echo bad >&2; exit 1"],
    detaches: true,
  });
  assert.deepEqual([result.code, result.stderr], [1, "bad"]);
});

test("ConcurrencyLimit runs at most maxActive, queues up to maxQueued, refuses the rest", async () => {
  const limit = new ConcurrencyLimit({ what: "test", maxActive: 1, maxQueued: 1 });
  let release!: () => void;
  const first = limit.run(() => new Promise<string>((resolve) => (release = () => resolve("first"))));
  const second = limit.run(async () => "second");
  await assert.rejects(
    limit.run(async () => "third"),
    { code: "RD_ERR_DESKTOP_BUSY" },
  );
  release();
  assert.deepEqual(await Promise.all([first, second]), ["first", "second"]);
  assert.equal(await limit.run(async () => "again"), "again");
});
