// The namespaces isolation as it is meant to run: a host that is NOT root (`revdial wolf run` as
// `nobody`, --isolation namespaces) against a real server, two tenants' sandboxes in user, PID,
// IPC and mount namespaces of that same uid. Everything of the host's is then owned by the uid the
// sandboxes run as (its state dir, its lobby API socket, the other sandbox's work dir and agent), so
// only the namespaces stand between them: the attacker app in one sandbox tries each, and the other
// tenant's key, and each attempt is refused.

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, it } from "node:test";
import { procInfo } from "../../src/host/host-state.ts";
import { World } from "./host-harness.ts";
import {
  ATTACK_COMMAND,
  assertNoXListener,
  assertRefused,
  descendantsOf,
  needsUserns,
  pidsWithCommand,
  runAttack,
  until,
  xListeners,
} from "./isolation-harness.ts";

const MAIN = new URL("../../src/cli/main.ts", import.meta.url).pathname;
const NOBODY = 65_534;
const HOST_MARKER = `nobody-host-secret-${process.pid}`;

describe("namespaces isolation on a host run as an ordinary user", { skip: needsUserns() }, () => {
  let w: World;
  let wolf: ChildProcess | null = null;
  const output: string[] = [];
  /** The host's own key: in its environment, never in a sandbox's. */
  let hostKey = "";
  const stateDir = join(tmpdir(), `revdial-nobody-host-${process.pid}-${Date.now()}`);

  before(async () => {
    w = await new World().start();
    hostKey = await w.hostKey("nobody", 2);
    writeFileSync(join(w.dataDir, "secret.txt"), "the server's secret", { mode: 0o600 });
    wolf = spawn(
      "setpriv",
      [
        `--reuid=${NOBODY}`,
        `--regid=${NOBODY}`,
        "--clear-groups",
        process.execPath,
        MAIN,
        "wolf",
        "run",
      ].concat(
        ["--server", w.url, "--id", "nobody", "--isolation", "namespaces", "--state-dir", stateDir],
        ["--max-sandboxes", "2", "--app", ATTACK_COMMAND],
      ),
      {
        env: {
          PATH: process.env.PATH ?? "/usr/bin:/bin",
          REVDIAL_TOKEN: hostKey,
          REVDIAL_TEST_HOST_MARKER: HOST_MARKER,
        },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    createInterface({ input: wolf.stdout! }).on("line", (l) => output.push(l));
    createInterface({ input: wolf.stderr! }).on("line", (l) => output.push(l));
    await until(
      () => output.some((l) => l.startsWith("Wolf instance nobody running")),
      "the host runs",
      30_000,
    );
  });
  after(async () => {
    if (wolf && wolf.exitCode === null) {
      wolf.kill("SIGTERM");
      await once(wolf, "exit");
    }
    await w?.close();
    rmSync(stateDir, { recursive: true, force: true });
  });

  async function startSession(name: string): Promise<string> {
    const user = await w.user(name, 1);
    const res = await w.startPlanning(user.key, user.taskIds[0]);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const id = res.body.session_id;
    await w.until(() => w.server.registry.isConnected(`sandbox-${id}`), `sandbox-${id} connected`, 30_000);
    return id;
  }

  it("the banner says namespaces; an app in one sandbox reaches nothing of the other's or the host's", async () => {
    assert.match(output.find((l) => l.startsWith("Wolf instance"))!, /isolation: namespaces/);
    const alice = await startSession("alice");
    const bob = await startSession("bob");
    const [bobAgent] = pidsWithCommand(`sandbox-${bob}`, " agent ");
    const [aliceAgent] = pidsWithCommand(`sandbox-${alice}`, " agent ");
    assert.equal(procInfo(bobAgent)?.uid, NOBODY, "the sandbox runs as the host's own uid");
    assert.equal(procInfo(aliceAgent)?.uid, NOBODY);
    const bobKey = /REVDIAL_TOKEN=([^\0]+)/.exec(readFileSync(`/proc/${bobAgent}/environ`, "latin1"))?.[1];
    assert.ok(bobKey?.startsWith("rds-"));
    const aliceKey = /REVDIAL_TOKEN=([^\0]+)/.exec(
      readFileSync(`/proc/${aliceAgent}/environ`, "latin1"),
    )?.[1];
    const xBefore = xListeners();
    const results = await runAttack(join(stateDir, "sandboxes", "s0"), {
      ownToken: aliceKey as string,
      ownDesktopSocket: "/home/sandbox/run/desktop.sock",
      otherToken: bobKey as string,
      runnerToken: hostKey,
      hostMarker: HOST_MARKER,
      otherAgentPid: bobAgent,
      dataDir: w.dataDir,
      stateDir,
      otherWorkDir: join(stateDir, "sandboxes", "s1"),
      lobbySocket: join(stateDir, "api", "lobby.sock"),
    });
    const foreign = assertNoXListener(descendantsOf([wolf!.pid!]), [xBefore, xListeners()]);
    assertRefused(results, false, foreign);
  });
});
