// Sandboxes isolated from each other and from the host, from the attacker's side: a real server, a
// real host with the process driver in users mode (root: a uid and namespaces per sandbox), two
// tenants' sandboxes, and an --app in one of them (fixtures/attack-app.mjs) that tries to read the
// other's environment, signal its agent, connect to its desktop socket and X display (every X
// transport, with and without a cookie), call the host's lobby API, read the server's data dir, the
// host's state and the other's files, and find the runner token or a host variable in any
// environment it can see. Each attempt is refused; its own display (with its cookie only) and
// desktop socket work. The control: in unsafe-shared-user mode the same attacker reads the other
// tenant's key and files. Also: each sandbox runs as its own uid, and the mode choice refuses to
// fall back to the shared user unless asked.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { silentLogger } from "../../src/common/logger.ts";
import { procInfo } from "../../src/host/host-state.ts";
import { chooseIsolation } from "../../src/host/isolation.ts";
import { ProcessDriver, type ProcessDriverOptions } from "../../src/host/process-driver.ts";
import type { LobbyInfo, LobbySpec } from "../../src/host/sandbox-driver.ts";
import { World } from "./host-harness.ts";
import {
  ATTACK_COMMAND,
  assertNoXListener,
  assertRefused,
  descendantsOf,
  needsRoot,
  pidsWithCommand,
  runAttack,
  xListeners,
} from "./isolation-harness.ts";

/** A process driver that remembers each session's sandbox key, so the test knows what to look for. */
class KeyRecordingDriver extends ProcessDriver {
  readonly keys = new Map<string, string>();
  override create(spec: LobbySpec): Promise<LobbyInfo> {
    this.keys.set(spec.sessionId, spec.sandboxToken);
    return super.create(spec);
  }
}

const HOST_MARKER = `host-secret-${process.pid}-${Date.now()}`;

/** Two tenants' sandboxes on one host in `mode`; the first one's app attacks the second. */
function attackSuite(mode: "users" | "namespaces" | "unsafe-shared-user", skip: string | false) {
  describe(`isolation ${mode}: an app in one sandbox attacks another, the host and the server`, {
    skip,
  }, () => {
    let w: World;
    let stateDir: string;
    let driver: KeyRecordingDriver;
    /** A host credential the host process holds: no sandbox may find it. */
    let hostSecret = "";
    const saved = { marker: process.env.REVDIAL_TEST_HOST_MARKER, token: process.env.REVDIAL_RUNNER_TOKEN };

    before(async () => {
      w = await new World().start();
      writeFileSync(join(w.dataDir, "secret.txt"), "the server's secret", { mode: 0o600 });
      stateDir = mkdtempSync(join(tmpdir(), "revdial-iso-"));
      // What a careless host leaks: its own environment, the runner token included.
      process.env.REVDIAL_TEST_HOST_MARKER = HOST_MARKER;
      hostSecret = await w.hostKey("iso-secret");
      process.env.REVDIAL_RUNNER_TOKEN = hostSecret;
      const options: ProcessDriverOptions = {
        logger: silentLogger(),
        stateDir,
        maxSandboxes: 2,
        isolation: mode,
        sandboxUids: { first: 310_000, last: 319_999 },
        app: ATTACK_COMMAND,
        stopTimeoutMs: 3_000,
      };
      driver = new KeyRecordingDriver(options);
      await w.startHost("iso", { driver, maxSandboxes: 2 });
    });
    after(async () => {
      await w?.close();
      if (stateDir) rmSync(stateDir, { recursive: true, force: true });
      for (const [k, v] of [
        ["REVDIAL_TEST_HOST_MARKER", saved.marker],
        ["REVDIAL_RUNNER_TOKEN", saved.token],
      ] as const)
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
    });

    const userKeys = new Map<string, string>();
    async function startSession(name: string): Promise<string> {
      const user = await w.user(name, 1);
      const res = await w.startPlanning(user.key, user.taskIds[0]);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      const id = res.body.session_id;
      userKeys.set(id, user.key);
      await w.until(() => w.server.registry.isConnected(`sandbox-${id}`), `sandbox-${id} connected`, 30_000);
      return id;
    }

    it("the isolated desktop works: screenshot and clipboard (xclip) through the API, with the cookie", async () => {
      const id = await startSession("carol");
      const key = userKeys.get(id) as string;
      const shot = await w.call("GET", `/api/v1/external-agents/${id}/screenshot`, key);
      assert.equal(shot.status, 200, shot.bytes.toString().slice(0, 300));
      assert.deepEqual(shot.bytes.subarray(0, 4), Buffer.from([0x89, 0x50, 0x4e, 0x47]));
      const set = await w.call("POST", `/api/v1/external-agents/${id}/clipboard`, key, {
        type: "text",
        data: "kept",
      });
      assert.equal(set.status, 204, set.bytes.toString());
      const got = await w.call("GET", `/api/v1/external-agents/${id}/clipboard`, key);
      assert.deepEqual(got.body, { type: "text", data: "kept" });
      const stop = await w.call("DELETE", `/api/v1/external-agents/${id}`, key);
      assert.ok(stop.status < 300, stop.bytes.toString());
      await w.until(() => driver.list().length === 0, "the sandbox stopped");
    });

    const title =
      mode === "unsafe-shared-user"
        ? "the control: unisolated, the same attacker reads the other tenant's key and files"
        : "every attempt is refused; each sandbox runs apart (its own uid in users mode)";
    it(title, async () => {
      const alice = await startSession("alice");
      const bob = await startSession("bob");
      const [aliceAgent] = pidsWithCommand(`sandbox-${alice}`, " agent ");
      const [bobAgent] = pidsWithCommand(`sandbox-${bob}`, " agent ");
      assert.ok(aliceAgent && bobAgent, "both agents run");
      const uids = [procInfo(aliceAgent)?.uid, procInfo(bobAgent)?.uid];
      if (mode === "users") {
        assert.ok((uids[0] ?? 0) >= 310_000 && (uids[1] ?? 0) >= 310_000, `sandbox uids ${uids}`);
        assert.notEqual(uids[0], uids[1], "each sandbox has a uid of its own");
      }
      const appApart = mode === "users";
      const xBefore = xListeners();
      const results = await runAttack(join(stateDir, "sandboxes", appApart ? "s0-app" : "s0"), {
        ownToken: driver.keys.get(alice) as string,
        ownDesktopSocket: join(
          mode === "unsafe-shared-user" ? join(stateDir, "sandboxes", "s0") : "/home/sandbox",
          "run",
          "desktop.sock",
        ),
        otherToken: driver.keys.get(bob) as string,
        runnerToken: hostSecret,
        hostMarker: HOST_MARKER,
        otherAgentPid: bobAgent,
        dataDir: w.dataDir,
        stateDir,
        otherWorkDir: join(stateDir, "sandboxes", "s1"),
        lobbySocket: join(stateDir, "api", "lobby.sock"),
      });
      if (appApart) {
        const [app] = pidsWithCommand("attack-app.mjs");
        const appUid = procInfo(app)?.uid;
        assert.ok(
          appUid !== undefined && appUid >= 310_000 && !uids.includes(appUid),
          `the app's uid ${appUid} is its own`,
        );
      }
      const lobbies = driver.list().map((l) => l.pid as number);
      const foreign = assertNoXListener(descendantsOf(lobbies), [xBefore, xListeners()]);
      if (mode !== "unsafe-shared-user") return assertRefused(results, appApart, foreign);
      // The control: without isolation the same attacker gets in, so the refusals above are real.
      assert.equal(results.otherAgentEnviron.ok, true, JSON.stringify(results.otherAgentEnviron));
      assert.ok(
        (results.secretsInAnyEnviron.found as string[]).length > 0,
        "it finds the other tenant's key",
      );
      assert.equal(results.otherWorkDir.ok, true);
      assert.equal(results.otherDesktop.ok, true);
      assert.deepEqual(results.ownEnv.found, [], "even unisolated, the app's own environment is explicit");
    });
  });
}

attackSuite("users", needsRoot());
// As root, namespaces mode still hides by mount and PID namespaces; the non-root run is in
// namespaces-as-user.test.ts.
attackSuite("namespaces", needsRoot());
attackSuite("unsafe-shared-user", needsRoot());

describe("isolation choice", () => {
  it("an explicit mode the machine cannot give is an error naming --unsafe-shared-user", async () => {
    const uid = process.getuid?.();
    if (uid === 0) {
      // Root with fewer uids than sandboxes: users mode cannot be had.
      await assert.rejects(
        chooseIsolation({ requested: "users", uids: { first: 400_000, last: 400_001 }, maxSandboxes: 3 }),
        (err: Error & { code: string }) =>
          err.code === "RD_ERR_HOST_ISOLATION_UNAVAILABLE" && /--unsafe-shared-user/.test(err.message),
      );
    } else {
      await assert.rejects(chooseIsolation({ requested: "users", maxSandboxes: 1 }), {
        code: "RD_ERR_HOST_ISOLATION_UNAVAILABLE",
      });
    }
  });

  it("users mode is refused where the sandbox's uids could not read the code", {
    skip: needsRoot(),
  }, async () => {
    const dir = mkdtempSync(join(tmpdir(), "revdial-code-"));
    try {
      writeFileSync(join(dir, "main.ts"), "", { mode: 0o600 });
      await assert.rejects(
        chooseIsolation({ requested: "users", maxSandboxes: 1, codePaths: [join(dir, "main.ts")] }),
        (err: Error) => /main\.ts is not readable by other users/.test(err.message),
      );
      // auto moves on to the next mode instead.
      const auto = await chooseIsolation({
        requested: "auto",
        maxSandboxes: 1,
        codePaths: [join(dir, "main.ts")],
      });
      assert.notEqual(auto.mode, "users");
      assert.match(auto.reason ?? "", /not readable by other users/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("`wolf run --isolation users` as an ordinary user refuses to start, naming --unsafe-shared-user", {
    skip: needsRoot(),
  }, async () => {
    const main = new URL("../../src/cli/main.ts", import.meta.url).pathname;
    const out = await new Promise<{ code: number | null; text: string }>((resolve) => {
      execFile(
        "setpriv",
        ["--reuid=65534", "--regid=65534", "--clear-groups", process.execPath, main, "wolf", "run"].concat(
          ["--server", "http://127.0.0.1:9", "--id", "nobody-host", "--isolation", "users"],
          ["--state-dir", join(tmpdir(), `revdial-nobody-${process.pid}`)],
        ),
        { env: { PATH: "/usr/bin:/bin", REVDIAL_RUNNER_TOKEN: "rt-x" }, timeout: 30_000 },
        (err, stdout, stderr) =>
          resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, text: stdout + stderr }),
      );
    });
    assert.notEqual(out.code, 0, out.text);
    assert.match(out.text, /--unsafe-shared-user/);
    assert.doesNotMatch(out.text, /Wolf instance .* running/);
  });
});
