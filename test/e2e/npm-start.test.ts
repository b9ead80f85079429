// The main job on a fresh machine: `revdial server --with-local-host` (what `npm start` runs) and,
// with nothing else started, the CLI forks the sample project, starts a planning session (--wait),
// takes a screenshot, lists the host, and stops the session. No secret is on the command line of
// the server or of anything it launched (the local host's key is minted in process, sandboxes get
// theirs in the environment), and no runner token is generated. Then SIGTERM leaves no sandbox
// behind.

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, it } from "node:test";
import { groupAlive } from "../../src/host/process-driver.ts";
import { missingTools } from "../agent/desktop/xvfb.ts";
import { MAIN, revdial } from "./cli-harness.ts";

describe("npm start: server with a local host, then fork, start, screenshot", {
  skip: missingTools("Xvfb"),
}, () => {
  let dir: string;
  let server: ChildProcess;
  let env: Record<string, string>;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "revdial-e2e-"));
    server = spawn(
      process.execPath,
      [MAIN, "server", "--with-local-host", "--listen", "127.0.0.1:0", "--data-dir", join(dir, "data")],
      { cwd: dir, stdio: ["ignore", "pipe", "ignore"] },
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

  it("fork, spectask start --wait, screenshot, wolf list, stop; SIGTERM leaves no sandbox", async () => {
    const fork = await revdial(
      ["project", "fork", "modern-todo-app", "--name", "RevDial Routing Test"],
      env,
      dir,
    );
    assert.equal(fork.code, 0, fork.stderr);
    const list = await revdial(["spectask", "list", "--json"], env, dir);
    const task = (JSON.parse(list.stdout) as { id: string; name: string }[]).find(
      (t) => t.name === "Fix delete bug",
    )!;
    const start = await revdial(["spectask", "start", task.id, "--wait", "--timeout", "60s"], env, dir);
    assert.equal(start.code, 0, start.stderr);
    assert.match(start.stdout, new RegExp(`^Planning session started: ${task.id}$`, "m"));
    const sessionId = /^Session ID: (ses_[0-9a-z]{26})$/m.exec(start.stdout)?.[1];
    assert.ok(sessionId, start.stdout);
    assert.match(start.stdout, /Sandbox connected \(host local/);

    const shot = await revdial(["spectask", "screenshot", sessionId, "-o", "shot.png"], env, dir);
    assert.equal(shot.code, 0, shot.stderr);
    const bytes = await readFile(join(dir, "shot.png"));
    assert.deepEqual(bytes.subarray(0, 4), Buffer.from([0x89, 0x50, 0x4e, 0x47]));

    const wolves = await revdial(["wolf", "list"], env, dir);
    assert.match(wolves.stdout, /^local\s+local\s+online\s+1\/10\s+up\s+\S+$/m);

    const second = await revdial(
      ["spectask", "start", (JSON.parse(list.stdout) as { id: string }[])[1].id, "--wait"],
      env,
      dir,
    );
    assert.equal(second.code, 0, second.stderr);
    const stop = await revdial(["spectask", "stop", sessionId], env, dir);
    assert.equal(stop.code, 0, stop.stderr);
    assert.match(stop.stdout, new RegExp(`Session stopped: ${sessionId}`));
    const paused = await revdial(["spectask", "screenshot", sessionId, "-o", "final.png"], env, dir);
    assert.match(paused.stdout, /final screenshot of a stopped session/);

    // With a sandbox running: no key of any kind on a command line the server started.
    const lines = await commandLinesUnder(server.pid!);
    assert.ok(lines.length >= 3, `the server, a launcher and its agent at least: ${lines.length}`);
    assert.ok(lines.some((l) => l.includes("lobby-launcher")));
    for (const line of lines) assert.doesNotMatch(line, /\brd[hs]?-[A-Za-z0-9_-]{40}\b/, line);
    const adminKey = (await readFile(join(dir, "data", "admin.key"), "utf8")).trim();
    assert.ok(!lines.some((l) => l.includes(adminKey)));
    await assert.rejects(readFile(join(dir, "data", "runner.token")), { code: "ENOENT" });

    // The second sandbox is still running: SIGTERM to the server stops it with the host.
    const pgids = (await pgidsOf(server.pid!, "lobby-launcher.ts")).filter(groupAlive);
    assert.ok(pgids.length >= 1);
    server.kill("SIGTERM");
    await once(server, "exit");
    for (const pgid of pgids) assert.equal(groupAlive(pgid), false, `group ${pgid} gone`);
  });
});

/** `root` and every process below it, with its command line (NUL turned to space). */
async function processesUnder(root: number): Promise<{ pid: number; cmdline: string }[]> {
  const { readdir } = await import("node:fs/promises");
  const parentOf = new Map<number, number>();
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = await readFile(`/proc/${entry}/stat`, "utf8");
      // pid (comm) state ppid ...: comm may hold spaces and parentheses; ppid follows the last ")".
      parentOf.set(Number(entry), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch {}
  }
  const below = new Set([root]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const [pid, ppid] of parentOf) {
      if (below.has(ppid) && !below.has(pid)) {
        below.add(pid);
        grew = true;
      }
    }
  }
  const out: { pid: number; cmdline: string }[] = [];
  for (const pid of below) {
    try {
      out.push({
        pid,
        cmdline: (await readFile(`/proc/${pid}/cmdline`, "utf8")).replaceAll("\0", " ").trim(),
      });
    } catch {}
  }
  return out;
}

async function commandLinesUnder(root: number): Promise<string[]> {
  return (await processesUnder(root)).map((p) => p.cmdline);
}

/**
 * The sandbox launchers the server started (each leads its sandbox's process group): only its own
 * descendants, never another test's processes on the same machine.
 */
async function pgidsOf(root: number, needle: string): Promise<number[]> {
  return (await processesUnder(root)).filter((p) => p.cmdline.includes(needle)).map((p) => p.pid);
}
