// The host's drivers and lobby API on their own: docker fails at start with a clear message where
// no engine answers; the lobby API checks its input exactly; the process driver refuses past its
// capacity and stops a sandbox's whole process group.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { silentLogger } from "../../src/common/logger.ts";
import { DockerDriver } from "../../src/host/docker-driver.ts";
import { parseLobbySpec } from "../../src/host/lobby-server.ts";
import { groupAlive, ProcessDriver } from "../../src/host/process-driver.ts";
import { WolfHost } from "../../src/host/wolf-host.ts";
import { missingTools } from "../agent/desktop/xvfb.ts";

const SESSION = "ses_01jz3k8m5q6r7s8t9v0w1x2y3z";

describe("docker driver", () => {
  it("fails at start with a clear message when no engine is reachable", async () => {
    const driver = new DockerDriver({ logger: silentLogger(), endpoint: "unix:///nonexistent/docker.sock" });
    await assert.rejects(driver.start(), (err: Error & { code: string }) => {
      assert.equal(err.code, "RD_ERR_HOST_DOCKER_UNAVAILABLE");
      assert.match(err.message, /no Docker engine reachable at unix:\/\/\/nonexistent\/docker.sock/);
      assert.match(err.message, /--driver process/);
      return true;
    });
  });

  it("a host with the docker driver does not start (nor register) without an engine", async () => {
    const host = new WolfHost({
      serverUrl: "http://127.0.0.1:9",
      token: "runner-token-x",
      id: "dock",
      driver: new DockerDriver({ logger: silentLogger(), endpoint: "unix:///nonexistent/docker.sock" }),
      logger: silentLogger(),
    });
    await assert.rejects(host.start(), /no Docker engine reachable/);
    await host.close();
  });
});

describe("lobby API input", () => {
  const good = { session_id: SESSION, sandbox_token: "rds-x", server_url: "http://127.0.0.1:8080", env: {} };
  it("accepts the exact shape and rejects others", () => {
    assert.equal(parseLobbySpec(good).sessionId, SESSION);
    for (const bad of [
      { ...good, session_id: "sandbox-1" },
      { ...good, sandbox_token: "" },
      { ...good, server_url: "file:///etc/passwd" },
      { ...good, env: { A: 1 } },
      null,
    ])
      assert.throws(() => parseLobbySpec(bad), { code: "RD_ERR_HOST_BAD_REQUEST" });
  });
});

describe("process driver", { skip: missingTools("Xvfb") }, () => {
  const stateDir = mkdtempSync(join(tmpdir(), "revdial-driver-"));
  // The strongest isolation this machine allows; the isolation tests pin each mode.
  const driver = new ProcessDriver({
    logger: silentLogger(),
    stateDir,
    maxSandboxes: 1,
    stopTimeoutMs: 3_000,
    isolation: "auto",
    allowSharedFallback: true,
  });
  before(() => driver.start());
  after(async () => {
    await driver.close();
    rmSync(stateDir, { recursive: true, force: true });
  });

  it("starts a sandbox in its own group, refuses past capacity, and stop leaves nothing", async () => {
    const spec = {
      sessionId: SESSION,
      sandboxToken: "rds-not-a-real-key",
      serverUrl: "http://127.0.0.1:9",
      env: {},
    };
    const lobby = await driver.create(spec);
    assert.ok(lobby.pid && groupAlive(lobby.pid));
    assert.match(lobby.display ?? "", /^:\d+$/);
    assert.equal((await driver.create(spec)).lobbyId, lobby.lobbyId, "same session: same lobby");
    await assert.rejects(driver.create({ ...spec, sessionId: "ses_01jz3k8m5q6r7s8t9v0w1x2y30" }), {
      code: "RD_ERR_HOST_AT_CAPACITY",
    });
    await driver.stop(lobby.lobbyId);
    assert.equal(groupAlive(lobby.pid), false);
    assert.deepEqual(driver.list(), []);
    await assert.rejects(driver.stop(lobby.lobbyId), { code: "RD_ERR_HOST_LOBBY_NOT_FOUND" });
  });
});
