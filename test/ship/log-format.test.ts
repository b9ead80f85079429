// Logs a person can read: pretty and coloured on a terminal, JSON lines when the output is a pipe
// (as here, and for every supervisor or test reading them), and --log-format / REVDIAL_LOG_FORMAT
// to choose. The agent is the program under test (the server and wolf run share the logger).

import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import net, { type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { prettyLine } from "../../src/common/log-pretty.ts";
import { ROOT } from "./ship-harness.ts";

const MAIN = join(ROOT, "src/cli/main.ts");
const ESC = "\x1b";
const AGENT = ["agent", "--server", "http://127.0.0.1:1", "--runner-id", "log-check"];

/** The agent's first log line (it logs "agent starting" at once, then fails to connect). */
async function firstLine(args: string[], env: NodeJS.ProcessEnv = {}): Promise<string> {
  const child = spawn(process.execPath, [MAIN, ...args], {
    env: { ...process.env, REVDIAL_LOG_FORMAT: "", ...env, REVDIAL_TOKEN: "rd-not-a-real-key" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let text = "";
  for await (const chunk of child.stderr!) {
    text += chunk;
    if (text.includes("\n")) break;
  }
  child.kill("SIGKILL");
  return text.split("\n")[0];
}

describe("log formats", () => {
  it("JSON when standard error is a pipe, and with --log-format json", async () => {
    for (const args of [AGENT, [...AGENT, "--log-format", "json"]]) {
      const entry = JSON.parse(await firstLine(args));
      assert.equal(entry.level, 30);
      assert.equal(entry.name, "revdial-agent");
      assert.equal(entry.runner_id, "log-check");
      assert.equal(entry.msg, "agent starting");
    }
  });

  it("pretty with --log-format pretty or REVDIAL_LOG_FORMAT=pretty, even into a pipe", async () => {
    const pattern =
      /^\d\d:\d\d:\d\d\.\d{3} INFO {2}revdial-agent: agent starting {2}runner_id=log-check {2}server=/;
    assert.match(await firstLine([...AGENT, "--log-format", "pretty"]), pattern);
    assert.match(await firstLine(AGENT, { REVDIAL_LOG_FORMAT: "pretty" }), pattern);
    // The flag wins over the variable.
    const json = await firstLine([...AGENT, "--log-format", "json"], { REVDIAL_LOG_FORMAT: "pretty" });
    assert.equal(JSON.parse(json).msg, "agent starting");
  });

  it("an unknown format is a usage error", () => {
    const res = spawnSync(process.execPath, [MAIN, ...AGENT, "--log-format", "xml"], {
      env: { ...process.env, REVDIAL_TOKEN: "rd-x" },
      encoding: "utf8",
    });
    assert.equal(res.status, 2);
    assert.match(res.stderr, /--log-format must be one of json, pretty/);
  });

  it("on a terminal (a pty from script(1)), pretty and coloured without being asked", {
    skip: !hasScript() && "no script(1)",
  }, async () => {
    // A server whose port is taken logs its start-up, then exits 1 on its own.
    const taken = net.createServer().listen(0, "127.0.0.1");
    await once(taken, "listening");
    const dir = await mkdtemp(join(tmpdir(), "revdial-logs-"));
    try {
      const { port } = taken.address() as AddressInfo;
      const command = [
        process.execPath,
        MAIN,
        "server",
        "--listen",
        `127.0.0.1:${port}`,
        "--data-dir",
        join(dir, "d"),
      ];
      const res = spawnSync("script", ["-qefc", command.join(" "), "/dev/null"], {
        env: { ...process.env, REVDIAL_LOG_FORMAT: "", NO_COLOR: "" },
        stdio: ["ignore", "pipe", "pipe"],
        encoding: "utf8",
        timeout: 60_000,
      });
      const green = `${ESC}[32mINFO ${ESC}[0m ${ESC}[2mrevdial-server: ${ESC}[0mstore migration applied`;
      assert.ok(res.stdout.includes(green), res.stdout);
      assert.ok(!res.stdout.includes('"msg":'), "no JSON on a terminal");
    } finally {
      taken.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("prettyLine: level, name, message, fields as key=value, an error's message and stack", () => {
    const line = JSON.stringify({
      level: 50,
      time: "2026-01-02T03:04:05.678Z",
      name: "revdial-server",
      msg: "call failed",
      session_id: "ses_1",
      reason: "no connection",
      err: { type: "Error", message: "boom", stack: "Error: boom\n    at f (x.ts:1:1)" },
    });
    assert.equal(
      prettyLine(line, false),
      '03:04:05.678 ERROR revdial-server: call failed  session_id=ses_1  reason="no connection"  err=boom\n    at f (x.ts:1:1)\n',
    );
    assert.ok(prettyLine(line, true).includes(`${ESC}[31mERROR${ESC}[0m`));
    assert.equal(prettyLine("not json", true), "not json\n");
  });
});

function hasScript(): boolean {
  return spawnSync("script", ["--version"]).status === 0;
}
