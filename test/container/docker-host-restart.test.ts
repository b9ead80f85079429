// `revdial wolf run --driver docker` as an operator runs it, a real child process against a real
// server and engine. Without an engine it fails at once, naming the fix. `kill -9` of the host
// leaves its containers running (they are not its children); the host started again adopts the
// running one by its labels (the sandbox stays connected and is still served, then stopped and
// removed through the new host) and removes the one that died meanwhile, reporting it so its
// session is marked. No container of this test is left at the end (the after() hook removes any
// carrying its host's label, and the last test checks there were none).

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, it } from "node:test";
import { silentLogger } from "../../src/common/logger.ts";
import { DockerDriver, LABELS } from "../../src/host/docker-driver.ts";
import type { DockerEngine } from "../../src/host/docker-engine.ts";
import { MAIN, revdial } from "../e2e/cli-harness.ts";
import { World } from "../host/host-harness.ts";
import { removeContainers, TEST_IMAGE, testEngine } from "./engine.ts";

const env = await testEngine();
const HOST = `k9-${randomUUID().slice(0, 8)}`;

interface WolfProcess {
  child: ChildProcess;
  output: string[];
}

describe("wolf run --driver docker without an engine", () => {
  it("fails at once, naming the fix", async () => {
    const run = await revdial(
      ["wolf", "run", "--server", "http://127.0.0.1:9", "--id", "nodock", "--driver", "docker"].concat([
        "--docker-host",
        "unix:///nonexistent/docker.sock",
      ]),
      { REVDIAL_TOKEN: "rdh-not-a-real-key" },
    );
    assert.notEqual(run.code, 0);
    assert.match(run.stderr, /no Docker engine reachable at unix:\/\/\/nonexistent\/docker\.sock/);
    assert.match(
      run.stderr,
      /start Docker, or podman's service \(podman system service unix:\/\/\/PATH, then --docker-host unix:\/\/\/PATH\), or use --driver process/,
    );
  });
});

describe("docker driver: the image", { skip: env.skip }, () => {
  it("a host whose engine lacks the image fails at start, naming the command that builds it", async () => {
    const stateDir = mkdtempSync(join(tmpdir(), "revdial-dock-noimage-"));
    after(() => rmSync(stateDir, { recursive: true, force: true }));
    const driver = new DockerDriver({
      logger: silentLogger(),
      endpoint: env.endpoint,
      image: "revdial-no-such-image",
      stateDir,
    });
    await assert.rejects(driver.start(), (err: Error & { code: string }) => {
      assert.equal(err.code, "RD_ERR_HOST_DOCKER_UNAVAILABLE");
      assert.match(err.message, /has no image revdial-no-such-image:latest/);
      assert.match(err.message, /revdial image build --tag revdial-no-such-image:latest/);
      return true;
    });
  });
});

describe("kill -9 of a docker host: its containers are adopted or removed on restart", {
  skip: env.skip,
}, () => {
  let w: World;
  let engine: DockerEngine;
  let stateDir: string;
  let wolf: WolfProcess | null = null;
  let user: { key: string; taskIds: string[] };
  const containers = () => engine.listContainers({ [LABELS.host]: HOST });
  const ofSession = async (sid: string) =>
    (await containers()).filter((c) => c.Labels?.[LABELS.session] === sid);
  const status = async (sid: string) =>
    (await w.call<{ status: string }>("GET", `/api/v1/sessions/${sid}`, user.key)).body.status;

  async function startWolf(): Promise<WolfProcess> {
    const child = spawn(
      process.execPath,
      [MAIN, "wolf", "run", "--server", w.url, "--id", HOST, "--state-dir", stateDir, "--driver", "docker"]
        .concat(["--docker-host", env.endpoint, "--image", TEST_IMAGE, "--max-sandboxes", "3"])
        .concat(["--heartbeat", "1s", "--log-level", "debug"]),
      {
        env: { PATH: process.env.PATH ?? "/usr/bin:/bin", REVDIAL_TOKEN: await w.hostKey(HOST, 3) },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    const output: string[] = [];
    createInterface({ input: child.stderr! }).on("line", (l) => output.push(l));
    createInterface({ input: child.stdout! }).on("line", (l) => output.push(l));
    await w.until(
      () => output.some((l) => l.startsWith(`Wolf instance ${HOST} running`)) || child.exitCode !== null,
      `wolf ${HOST} running`,
      30_000,
    );
    const banner = output.find((l) => l.startsWith("Wolf instance"));
    assert.match(banner ?? output.join("\n"), /driver docker, engine: Podman Engine \d/);
    return { child, output };
  }

  async function kill9(p: WolfProcess): Promise<void> {
    if (p.child.exitCode !== null || p.child.signalCode !== null) return;
    p.child.kill("SIGKILL");
    await once(p.child, "exit");
  }

  before(async () => {
    engine = env.engine as DockerEngine;
    w = await new World().start();
    stateDir = mkdtempSync(join(tmpdir(), "revdial-dock-k9-"));
    user = await w.user("kim", 2);
  });
  after(async () => {
    if (wolf && wolf.child.exitCode === null && wolf.child.signalCode === null) {
      wolf.child.kill("SIGTERM");
      await once(wolf.child, "exit");
    }
    await w?.close();
    if (engine) await removeContainers(engine, { [LABELS.host]: HOST });
    rmSync(stateDir, { recursive: true, force: true });
  });

  it("restart adopts the running container and removes the dead one; stopping removes the rest", async () => {
    wolf = await startWolf();
    const sids: string[] = [];
    for (const task of user.taskIds) {
      const res = await w.startPlanning(user.key, task);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      sids.push(res.body.session_id);
    }
    for (const sid of sids)
      await w.until(() => w.server.registry.isConnected(`sandbox-${sid}`), "sandbox connected", 60_000);
    const [kept, dying] = sids;
    assert.equal((await containers()).length, 2);

    await kill9(wolf);
    // The containers are not the host's children: both still run; one dies while no host watches.
    const [dead] = await ofSession(dying);
    assert.equal(dead.State, "running");
    await engine.killContainer(dead.Id, "SIGKILL");

    wolf = await startWolf();
    const log = () => wolf!.output.join("\n");
    assert.match(log(), /adopted a sandbox container left by a previous host/);
    assert.match(log(), /removed a sandbox container left by a previous host/);
    assert.equal((await ofSession(kept))[0]?.State, "running", "the running container is adopted");
    assert.deepEqual(await ofSession(dying), [], "the dead one is removed");
    await w.until(async () => (await status(dying)) !== "running", "the dead sandbox's session marked");
    assert.equal(await status(kept), "running");
    // The adopted sandbox is the new host's: still served, and stopped and removed through it.
    const shot = await w.call("GET", `/api/v1/external-agents/${kept}/screenshot?format=png`, user.key);
    assert.equal(shot.status, 200);
    const stop = await w.call("DELETE", `/api/v1/external-agents/${kept}`, user.key);
    assert.equal(stop.status, 200, stop.bytes.toString());
    assert.deepEqual(await ofSession(kept), []);

    wolf.child.kill("SIGTERM");
    const [code] = await once(wolf.child, "exit");
    assert.equal(code, 0);
    assert.deepEqual(await containers(), [], "no container of this host is left");
  });
});
