// Keys off the command line, as users run the CLI (child processes against a real server): `revdial
// agent` takes its key from --token-file, `--token -` (stdin) or REVDIAL_TOKEN without a word, and
// from --token with a warning that local users can read it; `revdial-client` keeps the seed's
// `-token` (silently) and also takes `-token-file`. `revdial wolf create` prints a host key once and
// `wolf run --token-file` runs the host with it; a second create of the same id fails. A host given
// its key (and a runner token) in the environment passes neither to the sandboxes it starts.
// `revdial server --runner-token` warns. No key ever reaches a log line.

import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type RunningServer, startServer } from "../../src/api/server.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { type Listening, pollUntil, startTarget, waitConnected } from "../helpers/tunnel-harness.ts";
import { allProcesses, type CliProcess, runCli, startCli, startClient } from "../tls/cli-process.ts";

const WARNING = /visible to every local user/;

describe("where the CLI reads keys from", () => {
  let dir: string;
  let server: RunningServer;
  let target: Listening;
  let keyFile: string;
  let hostKey = "";
  const running: CliProcess[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "revdial-tokens-"));
    server = await startServer({ listen: "127.0.0.1:0", dataDir: join(dir, "data"), logger: silentLogger() });
    target = await startTarget();
    keyFile = join(dir, "admin.key.copy");
    await writeFile(keyFile, `${server.adminKey}\n`, { mode: 0o600 });
  });
  after(async () => {
    for (const p of running) await p.stop();
    await server.close();
    await target.close();
    await rm(dir, { recursive: true, force: true });
  });

  const agentArgs = (runnerId: string) => [
    "agent",
    "--server",
    server.url,
    "--runner-id",
    runnerId,
    "--local",
    `127.0.0.1:${target.port}`,
  ];
  const connects = async (p: CliProcess, runnerId: string) => {
    running.push(p);
    await waitConnected(server.registry, runnerId, 20_000);
    await p.stop();
  };

  it("agent --token-file: connects, no warning", async () => {
    const p = startCli([...agentArgs("wolf-file"), "--token-file", keyFile]);
    await connects(p, "wolf-file");
    assert.doesNotMatch(p.stderr(), WARNING);
  });

  it("agent --token - reads the key from standard input", async () => {
    const { spawn } = await import("node:child_process");
    const { fileURLToPath } = await import("node:url");
    const main = fileURLToPath(new URL("../../src/cli/main.ts", import.meta.url));
    const child = spawn(process.execPath, [main, ...agentArgs("wolf-stdin"), "--token", "-"], {
      stdio: ["pipe", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (c: Buffer) => {
      stderr += c;
    });
    child.stdin.end(`${server.adminKey}\n`);
    try {
      await waitConnected(server.registry, "wolf-stdin", 20_000);
    } finally {
      child.kill("SIGTERM");
      await new Promise((r) => child.once("close", r));
    }
    assert.doesNotMatch(stderr, WARNING);
    assert.ok(!stderr.includes(server.adminKey!));
  });

  it("agent with REVDIAL_TOKEN: connects, no warning", async () => {
    const p = startCli(agentArgs("wolf-env"), { REVDIAL_TOKEN: server.adminKey! });
    await connects(p, "wolf-env");
    assert.doesNotMatch(p.stderr(), WARNING);
  });

  it("agent --token KEY still works, and warns", async () => {
    const p = startCli([...agentArgs("wolf-argv"), "--token", server.adminKey!]);
    await connects(p, "wolf-argv");
    assert.match(p.stderr(), WARNING);
  });

  it("agent without any key: usage error, exit 2", async () => {
    const res = await runCli(agentArgs("wolf-none"));
    assert.equal(res.code, 2);
    assert.match(res.stderr, /--token-file FILE, --token - \(stdin\) or REVDIAL_TOKEN/);
  });

  it("revdial-client keeps the seed's -token silently, and takes -token-file", async () => {
    const seed = startClient([
      "-server",
      `${server.url}/api/v1/revdial`,
      "-runner-id",
      "wolf-seed",
      "-token",
      server.adminKey!,
      "-local",
      `127.0.0.1:${target.port}`,
    ]);
    await connects(seed, "wolf-seed");
    assert.doesNotMatch(seed.stderr(), WARNING);
    const fromFile = startClient([
      "-server",
      server.url,
      "-runner-id",
      "wolf-seed-file",
      "-token-file",
      keyFile,
      "-local",
      `127.0.0.1:${target.port}`,
    ]);
    await connects(fromFile, "wolf-seed-file");
  });

  it("wolf create prints the host key once; the same id again fails with 409's message", async () => {
    const env = { REVDIAL_URL: server.url, REVDIAL_API_KEY: server.adminKey! };
    const res = await runCli(["wolf", "create", "cli-host", "--max-sandboxes", "3"], env);
    assert.equal(res.code, 0, res.stderr);
    assert.match(res.stdout, /^Wolf instance created: cli-host \(max 3\)$/m);
    hostKey = /^Host key \(shown once\): (rdh-[A-Za-z0-9_-]{40})$/m.exec(res.stdout)?.[1] ?? "";
    assert.ok(hostKey, res.stdout);
    const again = await runCli(["wolf", "create", "cli-host"], env);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /already exists/);
    const json = await runCli(["wolf", "create", "cli-json", "--json"], env);
    assert.match((JSON.parse(json.stdout) as { key: string }).key, /^rdh-/);
    const list = await runCli(["wolf", "list", "--json"], env);
    assert.ok(!list.stdout.includes(hostKey), "never shown again");
  });

  it("wolf run --token-file runs the host with its key; the key cannot run another id", async () => {
    const file = join(dir, "host.key");
    await writeFile(file, `${hostKey}\n`, { mode: 0o600 });
    const args = ["wolf", "run", "--server", server.url, "--token-file", file, "--heartbeat", "1s"];
    const host = startCli([...args, "--id", "cli-host"]);
    running.push(host);
    await host.waitFor(/Wolf instance cli-host running/, 30_000);
    await waitConnected(server.registry, "wolf-cli-host", 20_000);
    assert.equal((await server.store.wolfInstances.get("cli-host"))?.maxSandboxes, 3);
    await host.stop();
    const other = await runCli([...args, "--id", "cli-json"]);
    assert.notEqual(other.code, 0);
    assert.match(other.stderr, /403/);
    assert.equal(server.registry.isConnected("wolf-cli-json"), false);
  });

  it("wolf run with its key in the environment: the sandboxes it starts do not inherit it", async () => {
    const env = { REVDIAL_URL: server.url, REVDIAL_API_KEY: server.adminKey! };
    const created = await runCli(["wolf", "create", "env-host", "--json"], env);
    const key = (JSON.parse(created.stdout) as { key: string }).key;
    const envFile = join(dir, "sandbox.env");
    const host = startCli(
      [
        "wolf",
        "run",
        "--server",
        server.url,
        "--id",
        "env-host",
        // The weakest isolation, where the app shares the host's user and could write its
        // environment to this test's folder: even there, nothing of the host's reaches it.
        "--unsafe-shared-user",
        "--app",
        `env > ${envFile}.tmp && mv ${envFile}.tmp ${envFile}`,
      ],
      { REVDIAL_TOKEN: key, REVDIAL_RUNNER_TOKEN: "operator-secret-marker" },
    );
    running.push(host);
    await host.waitFor(/Wolf instance env-host running/, 30_000);
    await waitConnected(server.registry, "wolf-env-host", 20_000);
    const { user, apiKey } = await server.auth.createUser({ name: "enid" });
    const project = await server.store.projects.create({ ownerId: user.id, name: "p" });
    const task = await server.store.specTasks.create({ projectId: project.id, name: "t" });
    const start = await fetch(`${server.url}/api/v1/spec-tasks/${task.id}/start-planning`, {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}` },
    });
    assert.equal(start.status, 200, await start.clone().text());
    const { session_id } = (await start.json()) as { session_id: string };
    await pollUntil(
      () =>
        readFile(envFile, "utf8").then(
          (text) => text.length > 0,
          () => false,
        ),
      "the sandbox's app wrote its environment",
      40_000,
      100,
    );
    const sandboxEnv = await readFile(envFile, "utf8");
    assert.ok(!sandboxEnv.includes(key), "the host key is in a sandbox's environment");
    assert.ok(
      !sandboxEnv.includes("operator-secret-marker"),
      "the runner token is in a sandbox's environment",
    );
    const stop = await fetch(`${server.url}/api/v1/external-agents/${session_id}`, {
      method: "DELETE",
      headers: { authorization: `Bearer ${apiKey}` },
    });
    assert.equal(stop.status, 200);
    await host.stop();
  });

  it("server --runner-token warns that local users can read it", async () => {
    const p = startCli([
      "server",
      "--listen",
      "127.0.0.1:0",
      "--data-dir",
      join(dir, "data-argv"),
      "--runner-token",
      "legacy-token-on-argv",
    ]);
    running.push(p);
    await p.waitFor(/listening on/, 60_000);
    assert.match(p.stderr(), WARNING);
    await p.stop();
  });

  it("no key reaches a log line", () => {
    const logs = allProcesses.map((p) => p.stderr()).join("\n");
    for (const key of [server.adminKey!, hostKey]) assert.ok(!logs.includes(key.slice(4)));
  });
});
