// The docker driver with a real engine (podman's Docker-compatible service, test/container/engine.ts)
// and the real sandbox image: a real server, a real host with `--driver docker`, sandboxes that are
// containers. Through the CLI and the API as a user sees them: `spectask start --wait` gets a
// container that dials in; its screenshot is the container's own display; the clipboard
// round-trips; from inside a sandbox, the API's data dir, the host's files, the host's key and the
// other sandbox are out of reach; a fork bomb stops at the pids limit while the host serves the
// other sandbox; a container that dies marks its session; stop serves the final screenshot and
// leaves no container; `spectask cleanup` removes what it stops. The after() hook removes every
// container carrying this run's label, and the last test checks none was left to remove.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import sharp from "sharp";
import { type DockerDriver, LABELS } from "../../src/host/docker-driver.ts";
import type { DockerEngine } from "../../src/host/docker-engine.ts";
import { revdial } from "../e2e/cli-harness.ts";
import { World } from "../host/host-harness.ts";
import { removeContainers, TEST_IMAGE, TEST_LABEL, testEngine } from "./engine.ts";

const env = await testEngine();
const RUN = randomUUID().slice(0, 8);
const HOST = `dock-${RUN}`;
const PIDS_LIMIT = 96;
const SCREEN = { width: 1024, height: 640 };

describe("docker driver: sandboxes in containers", { skip: env.skip }, () => {
  let w: World;
  let engine: DockerEngine;
  let driver: DockerDriver;
  let user: { key: string; taskIds: string[] };
  const as = () => ({ REVDIAL_URL: w.url, REVDIAL_API_KEY: user.key });
  const sessions: string[] = [];

  const containerOf = async (sessionId: string) => {
    const found = await engine.listContainers({ [LABELS.session]: sessionId, [TEST_LABEL]: RUN });
    return found;
  };
  const startWait = async (taskId: string): Promise<string> => {
    const run = await revdial(["spectask", "start", taskId, "--wait", "--timeout", "60s", "--json"], as());
    assert.equal(run.code, 0, run.stderr);
    const answer = JSON.parse(run.stdout) as { session_id: string; session: { status: string } };
    assert.equal(answer.session.status, "running");
    sessions.push(answer.session_id);
    return answer.session_id;
  };
  const api = (method: string, path: string, body?: unknown) => w.call(method, path, user.key, body);
  const screenshot = async (sessionId: string) => {
    const res = await api("GET", `/api/v1/external-agents/${sessionId}/screenshot?format=png`);
    assert.equal(res.status, 200, res.bytes.toString().slice(0, 300));
    const img = sharp(res.bytes);
    const meta = await img.metadata();
    const stats = await img.stats();
    return { meta, stats, bytes: res.bytes };
  };
  const sh = async (sessionId: string, script: string, timeoutMs = 60_000) => {
    const [c] = await containerOf(sessionId);
    assert.ok(c, `a container for ${sessionId}`);
    return engine.exec(c.Id, ["/bin/sh", "-c", script], { timeoutMs });
  };

  before(async () => {
    engine = env.engine as DockerEngine;
    w = await new World().start();
    const host = await w.startHost(HOST, {
      driver: "docker",
      maxSandboxes: 4,
      docker: {
        endpoint: env.endpoint,
        image: TEST_IMAGE,
        labels: { [TEST_LABEL]: RUN },
        pidsLimit: PIDS_LIMIT,
        memoryBytes: 512 * 1024 ** 2,
        screen: `${SCREEN.width}x${SCREEN.height}x24`,
        stopTimeoutMs: 3_000,
      },
    });
    driver = host.driver as DockerDriver;
    user = await w.user("dora", 5);
  });
  after(async () => {
    await w?.close();
    if (engine) await removeContainers(engine, { [TEST_LABEL]: RUN });
  });

  it("spectask start --wait: a container dials in; its screenshot is its own display; the clipboard round-trips", async () => {
    const sid = await startWait(user.taskIds[0]);
    const [c] = await containerOf(sid);
    assert.equal(c.State, "running");
    assert.equal(c.Labels?.[LABELS.host], HOST);
    const shot = await screenshot(sid);
    assert.equal(shot.meta.format, "png");
    assert.deepEqual([shot.meta.width, shot.meta.height], [SCREEN.width, SCREEN.height]);
    assert.ok(
      shot.stats.channels.some((ch) => ch.min !== ch.max),
      "the screen is not one colour: the desktop program (xterm) is drawn",
    );
    const text = `from the API ${RUN} ✓`;
    const set = await api("POST", `/api/v1/external-agents/${sid}/clipboard`, { type: "text", data: text });
    assert.equal(set.status, 204, set.bytes.toString());
    const display = driver.list().find((l) => l.sessionId === sid)?.display;
    assert.match(display ?? "", /^:\d+$/);
    const x = `DISPLAY=${display} XAUTHORITY=$HOME/.Xauthority`;
    const inside = await sh(sid, `${x} xclip -o -selection clipboard`);
    assert.equal(inside.stdout, text, inside.stderr);
    const back = `set inside ${RUN}`;
    const copied = await sh(
      sid,
      `printf '%s' '${back}' | ${x} xclip -i -selection clipboard >/dev/null 2>&1; echo ok`,
    );
    assert.equal(copied.stdout, "ok\n", copied.stderr);
    const got = await api("GET", `/api/v1/external-agents/${sid}/clipboard`);
    assert.equal((got.body as { data: string }).data, back);
    // The host lists it, and wolf list shows the driver and the engine.
    const list = await revdial(["wolf", "list", "--json"], {
      REVDIAL_URL: w.url,
      REVDIAL_API_KEY: w.adminKey,
    });
    const mine = (JSON.parse(list.stdout) as { id: string; labels: Record<string, string> }[]).find(
      (h) => h.id === HOST,
    );
    assert.equal(mine?.labels["revdial.driver"], "docker");
    assert.match(mine?.labels["revdial.engine"] ?? "", /^Podman Engine \d+\.\d+\.\d+ \(API 1\.\d+\)$/);
    const table = await revdial(["wolf", "list"], { REVDIAL_URL: w.url, REVDIAL_API_KEY: w.adminKey });
    assert.match(table.stdout, new RegExp(`${HOST}.*docker.*Podman Engine`));
  });

  it("each container: init, limits, no privileges, read-only root, no published port", async () => {
    const [c] = await containerOf(sessions[0]);
    const full = await engine.call<{
      HostConfig: Record<string, unknown>;
      Config: { User: string };
      NetworkSettings: { Ports: Record<string, unknown> | null };
    }>(`/containers/${c.Id}/json`);
    const hc = full.HostConfig;
    assert.equal(hc.PidsLimit, PIDS_LIMIT);
    assert.equal(hc.Memory, 512 * 1024 ** 2);
    assert.equal(hc.NanoCpus, 1e9);
    assert.equal(hc.ReadonlyRootfs, true);
    assert.equal(hc.Privileged, false);
    assert.equal(hc.Init, true);
    assert.ok((hc.SecurityOpt as string[]).some((o) => /no-new-privileges/.test(o)));
    assert.equal(full.Config.User, "65532:65532");
    // From inside: not root, no capabilities, no new privileges, a read-only root.
    const r = await sh(
      sessions[0],
      "id -u; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; touch /usr/x 2>&1; touch $HOME/ok && echo workspace-writable",
    );
    assert.match(r.stdout, /^65532\n/);
    assert.match(r.stdout, /CapEff:\s+0+\n/);
    assert.match(r.stdout, /CapBnd:\s+0+\n/);
    assert.match(r.stdout, /NoNewPrivs:\s+1\n/);
    assert.match(r.stdout, /Read-only file system/);
    assert.match(r.stdout, /workspace-writable/);
  });

  it("from inside a sandbox: the API's data dir, the host's files and key, and the other sandbox are unreachable", async () => {
    const a = sessions[0];
    const b = await startWait(user.taskIds[1]);
    const hostKey = await w.hostKey(HOST);
    const hostFile = fileURLToPath(import.meta.url);
    const paths = [w.dataDir, hostFile, join(w.dataDir, `host-${HOST}`), "/work", "/run/revdial/launch.json"];
    const seen = await sh(a, `for p in ${paths.join(" ")}; do test -e "$p" && echo "VISIBLE $p"; done; true`);
    assert.equal(
      seen.stdout,
      "",
      "none of the host's paths is visible, nor the launch file (read and removed)",
    );
    // Every process's command line and environment, read inside, searched here (so that this
    // script's own command line holds no key to find).
    const procs = await sh(
      a,
      "for d in /proc/[0-9]*; do echo \"== $d\"; tr '\\0' ' ' < $d/cmdline; echo; tr '\\0' '\\n' < $d/environ; done 2>/dev/null",
    );
    const blocks = procs.stdout.split(/^== /m).filter(Boolean);
    assert.ok(blocks.length >= 4, `init, entry, launcher, Xvfb, agent, xterm: ${blocks.length} processes`);
    assert.ok(blocks.length < 20, `only this sandbox's processes: ${blocks.length}`);
    for (const block of blocks) {
      const [, cmdline] = block.split("\n");
      assert.ok(!cmdline.includes("rds-"), `no command line holds an rds- key: ${cmdline}`);
      assert.ok(!block.includes(hostKey), "no process has the host's key");
      assert.ok(!block.includes(`sandbox-${b}`), "no process of the other sandbox is visible");
    }
    assert.ok(
      blocks.some((bl) => /^REVDIAL_TOKEN=rds-/m.test(bl)),
      "the agent has its own key, in its environment",
    );
    // No file holds the host's key (the pattern's brackets keep the key itself off this command line).
    const files = await sh(
      a,
      `grep -rlsE '[${hostKey[0]}]${hostKey.slice(1)}' / --exclude-dir=proc --exclude-dir=sys | head -3; echo done`,
    );
    assert.equal(files.stdout, "done\n", `files with the host's key: ${files.stdout}`);
    // A file written in one workspace is not in the other's.
    await sh(a, `echo secret-${RUN} > $HOME/mine.txt`);
    const other = await sh(b, "cat $HOME/mine.txt 2>&1; ls /home/sandbox");
    assert.doesNotMatch(other.stdout, new RegExp(`secret-${RUN}`));
  });

  it("a fork bomb stops at the pids limit; the host keeps serving the other sandbox", async () => {
    const [victim] = await containerOf(sessions[1]);
    const bomb = await sh(
      sessions[1],
      // Forks until fork fails, detached from the exec; its processes stay until the container stops.
      "nohup sh -c 'while :; do sleep 600 & done' >/dev/null 2>&1 & sleep 3; echo pids $(ls -d /proc/[0-9]* 2>/dev/null | wc -l)",
    );
    const stats = await engine.call<{ pids_stats?: { current?: number; limit?: number } }>(
      `/containers/${victim.Id}/stats`,
      { query: { stream: false } },
    );
    const current = stats.pids_stats?.current ?? Number(/pids (\d+)/.exec(bomb.stdout)?.[1]);
    assert.ok(current <= PIDS_LIMIT, `${current} processes, limit ${PIDS_LIMIT}`);
    assert.ok(current >= PIDS_LIMIT - 10, `the bomb did reach the limit (${current})`);
    // The neighbour's desktop still answers, and the host still starts sandboxes.
    const shot = await screenshot(sessions[0]);
    assert.equal(shot.meta.width, SCREEN.width);
    const c = await startWait(user.taskIds[2]);
    assert.equal((await containerOf(c))[0]?.State, "running");
    const stop = await api("DELETE", `/api/v1/external-agents/${sessions[1]}`);
    assert.equal(stop.status, 200, stop.bytes.toString());
    assert.deepEqual(await containerOf(sessions[1]), [], "the bombed container is removed");
  });

  it("stop: the final screenshot is served and the container is gone", async () => {
    const sid = sessions[0];
    const before = await screenshot(sid);
    const [c] = await containerOf(sid);
    const dir = join(w.dataDir, `host-${HOST}`, "containers", c.Labels?.[LABELS.lobby] ?? "-");
    assert.ok(existsSync(dir), "the workspace is on the host while the sandbox runs");
    const stop = await api("DELETE", `/api/v1/external-agents/${sid}`);
    assert.equal(stop.status, 200, stop.bytes.toString());
    assert.deepEqual(await containerOf(sid), []);
    assert.equal(existsSync(dir), false, "the workspace is removed with the container");
    const after = await screenshot(sid);
    assert.deepEqual([after.meta.width, after.meta.height], [before.meta.width, before.meta.height]);
    assert.ok(after.stats.channels.some((ch) => ch.min !== ch.max));
  });

  it("a container that dies is reported: its session is marked, the container removed", async () => {
    const sid = sessions[2];
    const [c] = await containerOf(sid);
    await engine.killContainer(c.Id, "SIGKILL");
    await w.until(
      async () => (await api("GET", `/api/v1/sessions/${sid}`)).body.status !== "running",
      "the session no longer running",
      20_000,
    );
    const session = await api("GET", `/api/v1/sessions/${sid}`);
    assert.notEqual(session.body.status, "running");
    await w.until(async () => (await containerOf(sid)).length === 0, "the dead container removed");
  });

  it("spectask cleanup removes the containers it stops; nothing is left behind", async () => {
    const sid = await startWait(user.taskIds[3]);
    assert.equal((await containerOf(sid)).length, 1);
    const run = await revdial(["spectask", "cleanup", "--all"], as());
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /Stopped \d+ session/);
    assert.deepEqual(await containerOf(sid), []);
    assert.deepEqual(driver.list(), []);
    assert.deepEqual(
      await engine.listContainers({ [TEST_LABEL]: RUN }),
      [],
      "no container of this run is left",
    );
  });
});
