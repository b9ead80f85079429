// No orphans, ever (host side): `revdial wolf run` as a real child process against a real server,
// with a real sandbox (users isolation: a uid of its own, bwrap, Xvfb, agent). `kill -9` of the host
// leaves no process of the sandbox within seconds (and, before that, none of the sandbox's processes
// had the host's runner token in its environment) (parent-death signals and the PID namespace, not
// the host's goodbye). A host started again on the same state dir finds the lobby the dead one left
// and reports it as exited, so the API does not keep the session running. And the recovery itself,
// on stray processes: a recorded group and a process of the host's uids are killed; a recorded
// group id now used by a process that started earlier (a reused pid) is left alone.

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, it } from "node:test";
import { HostState, procInfo } from "../../src/host/host-state.ts";
import { World } from "./host-harness.ts";
import { needsRoot, pidsOfGroup, pidsOfUids, pidsWithCommand, until } from "./isolation-harness.ts";

const MAIN = new URL("../../src/cli/main.ts", import.meta.url).pathname;
/** A uid range for this file alone (hosts claim windows in it; see host-state.ts). */
const UIDS = { first: 320_000, last: 329_999 };

interface WolfProcess {
  child: ChildProcess;
  output: string[];
}

async function startWolf(w: World, id: string, stateDir: string): Promise<WolfProcess> {
  const child = spawn(
    process.execPath,
    [MAIN, "wolf", "run", "--server", w.url, "--id", id, "--state-dir", stateDir]
      .concat(["--sandbox-uids", `${UIDS.first}-${UIDS.last}`, "--max-sandboxes", "2", "--heartbeat", "1s"])
      .concat(["--log-level", "debug"]),
    {
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", REVDIAL_TOKEN: await w.hostKey(id, 2) },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const output: string[] = [];
  createInterface({ input: child.stderr! }).on("line", (l) => output.push(l));
  const lines = createInterface({ input: child.stdout! });
  lines.on("line", (l) => output.push(l));
  await until(
    () => output.some((l) => l.startsWith(`Wolf instance ${id} running`)),
    `wolf ${id} running`,
    30_000,
  );
  assert.match(output.find((l) => l.startsWith("Wolf instance"))!, /isolation: users \(uid \d+-\d+\)/);
  return { child, output };
}

async function kill9(p: WolfProcess): Promise<void> {
  if (p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill("SIGKILL");
  await once(p.child, "exit");
}

describe("kill -9 of a host leaves no sandbox; a restarted host reports what it left", {
  skip: needsRoot(),
}, () => {
  let w: World;
  let stateDir: string;
  let wolf: WolfProcess | null = null;

  before(async () => {
    w = await new World().start();
    stateDir = mkdtempSync(join(tmpdir(), "revdial-orphans-"));
  });
  after(async () => {
    if (wolf) {
      wolf.child.kill("SIGTERM");
      if (wolf.child.exitCode === null) await once(wolf.child, "exit");
    }
    await w?.close();
    rmSync(stateDir, { recursive: true, force: true });
  });

  it("kill -9 of `wolf run`: every sandbox process is gone within seconds; restart reports the lobby", async () => {
    wolf = await startWolf(w, "k9", stateDir);
    const user = await w.user("alice", 1);
    const res = await w.startPlanning(user.key, user.taskIds[0]);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const sessionId = res.body.session_id;
    await w.until(() => w.server.registry.isConnected(`sandbox-${sessionId}`), "sandbox connected", 30_000);
    const recorded = new HostState(stateDir).read().lobbies;
    assert.equal(recorded.length, 1, "the live lobby is on disk");
    const uid = recorded[0].uid as number;
    const pgid = recorded[0].pgid;
    const ofSandbox = () => [...new Set([...pidsOfUids(uid, uid), ...pidsOfGroup(pgid)])];
    const sandbox = ofSandbox();
    assert.ok(pidsOfUids(uid, uid).length >= 2, `Xvfb and the agent run as ${uid}`);
    assert.ok(sandbox.length >= 4, `bwrap, launcher, Xvfb and agent: ${sandbox}`);
    // The host ran with its key (REVDIAL_TOKEN) in its environment; no sandbox process has it.
    const hostKey = await w.hostKey("k9");
    for (const pid of sandbox) {
      const env = readFileSync(`/proc/${pid}/environ`, "latin1").split("\0");
      assert.ok(!env.some((v) => v.includes(hostKey)), `process ${pid} has no host key`);
      assert.ok(!env.some((v) => v.startsWith("REVDIAL_RUNNER_TOKEN=")));
    }
    const [agent] = pidsWithCommand(`sandbox-${sessionId}`, " agent ");
    assert.ok(
      readFileSync(`/proc/${agent}/environ`, "latin1").includes("REVDIAL_TOKEN=rds-"),
      "the agent has its key",
    );

    await kill9(wolf);
    await until(
      () => ofSandbox().length === 0 && sandbox.every((pid) => procInfo(pid) === null),
      "no process of the sandbox left after kill -9 of its host",
      10_000,
    );

    wolf = await startWolf(w, "k9", stateDir);
    const lobbyId = recorded[0].lobbyId;
    await until(
      () => wolf!.output.some((l) => l.includes(lobbyId) && l.includes("sandbox exit reported")),
      "the restarted host reported the lobby the dead one left",
    );
    assert.ok(
      wolf.output.some((l) => l.includes(lobbyId) && l.includes("killed a sandbox left by a previous host")),
    );
    const session = await w.call<{ status: string }>("GET", `/api/v1/sessions/${sessionId}`, user.key);
    assert.notEqual(session.body.status, "running");
    assert.deepEqual(new HostState(stateDir).read().lobbies, []);
  });
});

describe("recovery kills what a dead host left, and nothing else", { skip: needsRoot() }, () => {
  let dir: string;
  const strays: ChildProcess[] = [];
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "revdial-recover-"));
  });
  after(() => {
    for (const c of strays) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });

  const stray = (command: string, args: string[]) => {
    const child = spawn(command, args, { detached: true, stdio: "ignore" });
    strays.push(child);
    return child;
  };

  it("kills a recorded group and the host's uids; spares a reused group id", async () => {
    const group = stray("sleep", ["1000"]);
    const asSandbox = stray("setpriv", [
      "--reuid=330005",
      "--regid=330005",
      "--clear-groups",
      "sleep",
      "1000",
    ]);
    const innocent = stray("sleep", ["1000"]);
    const gone = (c: ChildProcess) => c.exitCode !== null || c.signalCode !== null;
    await until(() => procInfo(asSandbox.pid!)?.uid === 330_005, "the stray runs as the sandbox uid");
    const ticks = (c: ChildProcess) => procInfo(c.pid!)!.startTicks;
    const state = new HostState(join(dir, "state"));
    state.write([
      {
        lobbyId: "l-group",
        sessionId: "s1",
        pgid: group.pid!,
        startTicks: ticks(group),
        uid: null,
        workDir: join(dir, "w1"),
      },
      // Recorded as started after the process now holding that id: a reused pid, not ours.
      {
        lobbyId: "l-reused",
        sessionId: "s2",
        pgid: innocent.pid!,
        startTicks: ticks(innocent) + 1_000,
        uid: null,
        workDir: join(dir, "w2"),
      },
    ]);
    // The owner recorded is this process: recovery by the same process is allowed (a restart is another).
    const found = await state.recoverLeftovers({ first: 330_000, last: 330_009 });
    assert.deepEqual(found.map((l) => l.lobbyId).sort(), ["l-group", "l-reused"]);
    await until(() => gone(group) && gone(asSandbox), "the recorded group and the uid's process are killed");
    assert.equal(gone(innocent), false, "a process that merely reuses a recorded group id is spared");
    assert.deepEqual(state.read().lobbies, []);
  });

  it("a state dir held by a running host is refused", async () => {
    const holder = stray(process.execPath, [
      "--input-type=module",
      "-e",
      `import { HostState } from ${JSON.stringify(new URL("../../src/host/host-state.ts", import.meta.url).href)};
       new HostState(${JSON.stringify(join(dir, "held"))}).write([]); process.stdout.write("ok\\n"); setInterval(() => {}, 1000);`,
    ]);
    void holder;
    await until(
      () => new HostState(join(dir, "held")).read().owner?.pid === holder.pid,
      "the holder wrote its state",
    );
    await assert.rejects(new HostState(join(dir, "held")).recoverLeftovers(null), {
      code: "RD_ERR_HOST_STATE_IN_USE",
    });
  });
});
