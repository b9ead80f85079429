// The main job on a fresh machine: `revdial server --with-local-host` (what `npm start` runs) and,
// with nothing else started, the CLI forks the sample project, starts a planning session (--wait),
// takes a screenshot, lists the host, and stops the session. No secret is on the command line of
// the server or of anything it launched (the local host's key is minted in process, sandboxes get
// theirs in the environment), and no runner token is generated. Then SIGTERM leaves no sandbox
// behind: no process that descended from this server (other revdial instances on the machine are
// not ours). And `kill -9` of the server: every process of its running sandbox is gone within seconds.

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { readdirSync, readFileSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, it } from "node:test";
import sharp from "sharp";
import { DEFAULT_APP_PROGRAM } from "../../src/host/default-app.ts";
import { localHostStateDir, procInfo } from "../../src/host/host-state.ts";
import { which } from "../../src/host/isolation.ts";
import { groupAlive } from "../../src/host/process-driver.ts";
import { missingTools } from "../agent/desktop/xvfb.ts";
import { MAIN, revdial } from "./cli-harness.ts";

describe("npm start: server with a local host, then fork, start, screenshot", {
  skip: missingTools("Xvfb"),
}, () => {
  let dir: string;
  let server: ChildProcess;
  let env: Record<string, string>;
  let banner = "";

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
      if (line.startsWith("local sandbox host running")) {
        banner = line;
        break;
      }
    }
    assert.ok(url, "the server printed its URL");
    // The banner says which isolation the sandboxes get (users as root, else namespaces or shared).
    assert.match(
      banner,
      /^local sandbox host running \(wolf-local, process driver, isolation: (users \(uid \d+-\d+\)|namespaces|unsafe-shared-user), max 10\)$/,
    );
    env = { REVDIAL_URL: url, REVDIAL_DATA_DIR: join(dir, "data") };
  });
  after(async () => {
    if (server.exitCode === null) {
      server.kill("SIGTERM");
      await once(server, "exit");
    }
    await rm(dir, { recursive: true, force: true });
  });

  it("fork, spectask start --wait, screenshot, wolf list, stop; SIGTERM leaves no sandbox", async (t) => {
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
    // By default a sandbox's display runs a terminal showing its session (src/host/default-app.ts):
    // once the terminal is drawn, the screenshot is not one flat colour.
    if (which(DEFAULT_APP_PROGRAM, "/usr/local/bin:/usr/bin:/bin")) {
      const key = (await readFile(join(dir, "data", "admin.key"), "utf8")).trim();
      const spread = await screenshotSpread(env.REVDIAL_URL, key, sessionId);
      assert.ok(spread > 8, `the fresh sandbox's screenshot varies (pixel standard deviation ${spread})`);
      assert.ok(
        descendants(server.pid!).some((p) => p.cmd.startsWith(`${DEFAULT_APP_PROGRAM} `)),
        "the default terminal runs in the sandbox",
      );
    } else
      t.diagnostic(`${DEFAULT_APP_PROGRAM} is not installed: the default app's screenshot is not checked`);

    const wolves = await revdial(["wolf", "list"], env, dir);
    assert.match(wolves.stdout, /^local\s+local\s+online\s+1\/10\s+up\s+\S+\s+process\s+-$/m);

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
    const ours = descendants(server.pid!);
    const pgids = [...new Set(ours.filter((p) => p.cmd.includes("lobby-launcher.ts")).map((p) => p.pgrp))];
    assert.ok(pgids.length >= 1 && pgids.every(groupAlive), "the server's own sandbox runs");
    server.kill("SIGTERM");
    await once(server, "exit");
    for (const pgid of pgids) assert.equal(groupAlive(pgid), false, `group ${pgid} gone`);
    for (const p of ours) assert.equal(procInfo(p.pid)?.startTicks === p.startTicks, false, `${p.cmd} gone`);
  });
});

describe("kill -9 of npm start leaves no sandbox", { skip: missingTools("Xvfb") }, () => {
  let dir: string;
  let server: ChildProcess;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "revdial-e2e-k9-"));
  });
  after(async () => {
    if (server && server.exitCode === null && server.signalCode === null) {
      server.kill("SIGKILL");
      await once(server, "exit");
    }
    // The host died without its goodbye: its state dir stays (for the next start); remove it here.
    await rm(localHostStateDir(join(dir, "data")), { recursive: true, force: true });
    await rm(dir, { recursive: true, force: true });
  });

  it("every process of a running sandbox is gone within seconds of the server's kill -9", async () => {
    server = spawn(
      process.execPath,
      [MAIN, "server", "--with-local-host", "--listen", "127.0.0.1:0", "--data-dir", join(dir, "data")],
      { cwd: dir, stdio: ["ignore", "pipe", "ignore"] },
    );
    let url = "";
    for await (const line of createInterface({ input: server.stdout! })) {
      url = /^listening on (\S+)/.exec(line)?.[1] ?? url;
      if (line.startsWith("local sandbox host running")) break;
    }
    const env = { REVDIAL_URL: url, REVDIAL_DATA_DIR: join(dir, "data") };
    assert.equal((await revdial(["project", "fork", "modern-todo-app", "--name", "k9"], env, dir)).code, 0);
    const tasks = JSON.parse((await revdial(["spectask", "list", "--json"], env, dir)).stdout) as {
      id: string;
    }[];
    const start = await revdial(["spectask", "start", tasks[0].id, "--wait", "--timeout", "60s"], env, dir);
    assert.equal(start.code, 0, start.stderr);
    const sandbox = descendants(server.pid!).filter((p) => !/ server --with-local-host /.test(` ${p.cmd} `));
    assert.ok(
      sandbox.some((p) => p.cmd.includes("lobby-launcher.ts")),
      "a sandbox runs",
    );
    assert.ok(
      sandbox.some((p) => p.cmd.includes(" agent ")),
      "its agent runs",
    );

    server.kill("SIGKILL");
    await once(server, "exit");
    const alive = () => sandbox.filter((p) => procInfo(p.pid)?.startTicks === p.startTicks);
    const deadline = Date.now() + 10_000;
    for (let wait = 10; alive().length > 0 && Date.now() < deadline; wait = Math.min(wait * 2, 250))
      await new Promise((r) => setTimeout(r, wait));
    assert.deepEqual(
      alive().map((p) => p.cmd),
      [],
      "no orphan 10 s after kill -9",
    );
  });
});

/**
 * Every process descended from `root` (by parent pid), with its group and command line: this test's
 * own sandboxes only, never those of other revdial instances running beside it on the machine.
 */
function descendants(root: number): { pid: number; pgrp: number; startTicks: number; cmd: string }[] {
  const all = readdirSync("/proc")
    .filter((e) => /^\d+$/.test(e))
    .map((e) => {
      try {
        const stat = readFileSync(`/proc/${e}/stat`, "utf8");
        const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        const cmd = readFileSync(`/proc/${e}/cmdline`, "utf8").replaceAll("\0", " ");
        return {
          pid: Number(e),
          ppid: Number(rest[1]),
          pgrp: Number(rest[2]),
          startTicks: Number(rest[19]),
          cmd,
        };
      } catch {
        return null;
      }
    })
    .filter((p) => p !== null);
  const out: typeof all = [];
  const parents = new Set([root]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const p of all)
      if (parents.has(p.ppid) && !parents.has(p.pid)) {
        parents.add(p.pid);
        out.push(p);
        grew = true;
      }
  }
  return out;
}

/**
 * The largest per-channel standard deviation of the session's screenshot, taken again until it
 * exceeds a flat screen's (the terminal may still be mapping) or 20 s have passed.
 */
async function screenshotSpread(url: string, key: string, sessionId: string): Promise<number> {
  const deadline = Date.now() + 20_000;
  let spread = 0;
  for (let wait = 100; Date.now() < deadline; wait = Math.min(wait * 2, 1000)) {
    const res = await fetch(`${url}/api/v1/external-agents/${sessionId}/screenshot`, {
      headers: { authorization: `Bearer ${key}` },
    });
    assert.equal(res.status, 200);
    const stats = await sharp(Buffer.from(await res.arrayBuffer())).stats();
    spread = Math.max(...stats.channels.map((c) => c.stdev));
    if (spread > 8) return spread;
    await new Promise((r) => setTimeout(r, wait));
  }
  return spread;
}

/** The command lines of `root` and of every process below it. */
async function commandLinesUnder(root: number): Promise<string[]> {
  const self = readFileSync(`/proc/${root}/cmdline`, "utf8").replaceAll("\0", " ");
  return [self, ...descendants(root).map((p) => p.cmd)];
}
