// The agent program's supervisor (src/agent/agent-program.ts) with real `sh -c` programs:
// - stdout is cut into lines; a line over the bound is dropped (and logged), the next line still
//   arrives; lines split across writes are put back together;
// - lines written before the program runs (or while it restarts) wait and arrive in order;
// - the program does not get the agent's token in its environment;
// - close() stops it (stdin ended, then signals) and it is not started again.

import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { describe, it } from "node:test";
import { AgentProgram, LineSplitter, programEnv } from "../../src/agent/agent-program.ts";
import { createLogger, silentLogger } from "../../src/common/logger.ts";

function until(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const poll = (wait: number) => {
      if (check()) return resolve();
      if (Date.now() > deadline) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(() => poll(Math.min(wait * 2, 100)), wait);
    };
    poll(5);
  });
}

describe("agent program", () => {
  it("cuts lines, drops one over the bound, and joins a line split across writes", () => {
    const lines: string[] = [];
    const tooLong: number[] = [];
    const split = new LineSplitter(
      10,
      (l) => lines.push(l),
      (n) => tooLong.push(n),
    );
    split.push(Buffer.from('{"a":1}\n{"b"'));
    split.push(Buffer.from(":2}\nxxxxxxxxxxxxxxxxxxxxxxxx"));
    split.push(Buffer.from('xxxx\n{"c":3}\n'));
    assert.deepEqual(lines, ['{"a":1}', '{"b":2}', '{"c":3}']);
    assert.deepEqual(tooLong, [28]);
  });

  it("passes lines to a program started later, in order, without the agent's token", async () => {
    const out: string[] = [];
    const program = new AgentProgram({
      // Print whether REVDIAL_TOKEN reached the environment, then echo each line back.
      command: `echo "token=\${REVDIAL_TOKEN:-none}"; while read -r line; do echo "$line"; done`,
      logger: silentLogger(),
      onLine: (l) => out.push(l),
      env: programEnv({ ...process.env, REVDIAL_TOKEN: "rds-secret" }),
    });
    program.write('{"n":1}');
    program.write('{"n":2}');
    program.start();
    program.write('{"n":3}');
    await until(() => out.length >= 4, "three lines back");
    assert.deepEqual(out, ["token=none", '{"n":1}', '{"n":2}', '{"n":3}']);
    await program.close();
    assert.equal(program.starts, 1, "a closed program is not started again");
  });

  it("logs a line over the bound and goes on with the next", async () => {
    const out: string[] = [];
    const log = new PassThrough();
    let logged = "";
    log.on("data", (c: Buffer) => {
      logged += c.toString();
    });
    const program = new AgentProgram({
      command: `head -c 5000 /dev/zero | tr '\\0' x; echo; echo '{"ok":true}'; sleep 30`,
      logger: createLogger({ level: "info", destination: log }),
      onLine: (l) => out.push(l),
      maxLineBytes: 1000,
    });
    program.start();
    await until(() => out.length === 1, "the line after the long one");
    assert.deepEqual(out, ['{"ok":true}']);
    assert.match(logged, /line too long: dropped/);
    await program.close();
  });
});
