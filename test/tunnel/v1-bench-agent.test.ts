// The bench's v1 load client (bench/fixtures/v1-agent.ts) as the bench runs it: a child process
// given --server, --runner-id, --token-file and --local (and --hijack), which prints `ready` once
// registered, carries calls, and exits on SIGTERM.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import { readAll, startTarget, startTunnelServer, TOKEN, waitConnected } from "../helpers/tunnel-harness.ts";

const AGENT = new URL("../../bench/fixtures/v1-agent.ts", import.meta.url).pathname;
let dir: string;
let target: Awaited<ReturnType<typeof startTarget>>;
let server: Awaited<ReturnType<typeof startTunnelServer>>;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "revdial-v1-agent-"));
  writeFileSync(join(dir, "token"), `${TOKEN}\n`, { mode: 0o600 });
  target = await startTarget();
  server = await startTunnelServer();
});

after(async () => {
  await server.close();
  await target.close();
  rmSync(dir, { recursive: true, force: true });
});

for (const hijack of [false, true]) {
  test(`v1-agent.ts${hijack ? " --hijack" : ""}: ready once registered, carries calls, stops on SIGTERM`, async () => {
    const id = `wolf-bench-agent-${hijack ? "hijack" : "ws"}`;
    const args = [AGENT, "--server", server.url, "--runner-id", id, "--token-file", join(dir, "token")];
    args.push("--local", `127.0.0.1:${target.port}`, ...(hijack ? ["--hijack"] : []));
    const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "inherit"] });
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    try {
      const first = await new Promise<string>((resolve) =>
        createInterface({ input: child.stdout }).once("line", resolve),
      );
      assert.equal(first, "ready");
      await waitConnected(server.registry, id);
      const res = await server.registry.request(id, { method: "GET", path: "/through-the-bench-agent" });
      assert.equal(res.headers["x-echo-path"], "/through-the-bench-agent");
      await readAll(res.body);
    } finally {
      child.kill("SIGTERM");
    }
    assert.equal(await exited, 0);
  });
}
