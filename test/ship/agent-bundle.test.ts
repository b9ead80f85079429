// The one-file agent: `npm run build:agent`'s dist/revdial-agent.mjs and the revdial-agent
// executable, built into an empty folder (no node_modules anywhere above it), each dial a real
// server and serve a call, with a PATH that holds no node: the bundle runs on this Node given by
// its path, the executable on nothing at all. The executable takes revdial agent's flags and,
// started as revdial-client, the seed's. --desktop without sharp fails with an error naming it.
// About 30 s (the executable's build is most of it).

import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import {
  callThrough,
  ROOT,
  type StartedServer,
  startServer,
  startTarget,
  stopChild,
} from "./ship-harness.ts";

const run = promisify(execFile);
const SEA_OK = process.platform === "linux" && process.arch === "x64";

describe("the one-file agent (bundle and executable) on a PATH without node", () => {
  let dir: string;
  let out: string;
  let server: StartedServer;
  let target: Awaited<ReturnType<typeof startTarget>>;
  let tokenFile: string;
  let noNode: NodeJS.ProcessEnv;
  const agents: ChildProcess[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "revdial-agent-bundle-"));
    out = join(dir, "out");
    const args = [join(ROOT, "scripts", "build-agent.ts"), "--out-dir", out];
    if (!SEA_OK) args.push("--no-executable");
    const built = await run(process.execPath, args, { cwd: ROOT });
    assert.match(built.stdout, /revdial-agent\.mjs: [\d.]+ MiB/, "the build prints the sizes");
    // An empty bin dir is the whole PATH: no node, no shell tools.
    const bin = join(dir, "bin");
    await mkdir(bin);
    noNode = { PATH: bin, LANG: "C.UTF-8" };
    for (const entry of noNode.PATH!.split(":")) assert.equal(existsSync(join(entry, "node")), false);
    const data = join(dir, "data");
    server = await startServer(
      [
        process.execPath,
        join(ROOT, "src/cli/main.ts"),
        "server",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
      ],
      data,
      { ...process.env, REVDIAL_LOG_FORMAT: "json" },
      dir,
    );
    tokenFile = join(dir, "token");
    await writeFile(tokenFile, server.adminKey, { mode: 0o600 });
    target = await startTarget();
  });
  after(async () => {
    for (const agent of agents) await stopChild(agent);
    await server?.stop();
    await target?.close();
    await rm(dir, { recursive: true, force: true });
  });

  function agent(argv: string[]): ChildProcess {
    const child = spawn(argv[0], argv.slice(1), {
      cwd: dir,
      env: noNode,
      stdio: ["ignore", "ignore", "pipe"],
    });
    child.stderr!.resume();
    agents.push(child);
    return child;
  }

  it("dist/revdial-agent.mjs needs no node_modules to tunnel", async () => {
    const mjs = join(out, "revdial-agent.mjs");
    assert.ok((await stat(mjs)).size < 5 * 1024 * 1024, "one small file");
    const child = agent([
      process.execPath,
      mjs,
      "--server",
      server.url,
      "--runner-id",
      "bundle-check",
      "--token-file",
      tokenFile,
      "--local",
      `127.0.0.1:${target.port}`,
    ]);
    const res = await callThrough(server, "bundle-check", "/via/bundle", child);
    assert.equal(res.status, 200, res.body);
    assert.equal(res.body, "served GET /via/bundle");
  });

  it("--desktop without sharp beside the bundle: exit 1, naming the package", async () => {
    const child = spawn(
      process.execPath,
      [join(out, "revdial-agent.mjs"), "--desktop", "--server", server.url, "--runner-id", "no-sharp"],
      { cwd: dir, env: { ...noNode, REVDIAL_TOKEN: server.adminKey }, stdio: ["ignore", "ignore", "pipe"] },
    );
    let stderr = "";
    child.stderr!.on("data", (c: Buffer) => {
      stderr += c.toString();
    });
    const [code] = await once(child, "exit");
    assert.equal(code, 1, stderr);
    assert.match(stderr, /the desktop service needs the npm package sharp \(PNG and JPEG encoding\)/);
    assert.match(stderr, /npm install sharp@\d/);
  });

  it("the revdial-agent executable runs without Node, with revdial agent's flags", {
    skip: !SEA_OK && "Linux x64 only",
  }, async () => {
    const exe = join(out, "revdial-agent");
    const version = await run(exe, ["--help"], { env: noNode, cwd: dir });
    assert.match(version.stdout, /^Usage: revdial-agent agent \[options\]/);
    const child = agent([
      exe,
      "--server",
      server.url,
      "--runner-id",
      "exe-check",
      "--token-file",
      tokenFile,
      "--local",
      `127.0.0.1:${target.port}`,
    ]);
    const res = await callThrough(server, "exe-check", "/via/executable?q=1", child);
    assert.equal(res.status, 200, res.body);
    assert.equal(res.body, "served GET /via/executable?q=1");
  });

  it("started as revdial-client, the executable takes the seed's flags", {
    skip: !SEA_OK && "Linux x64 only",
  }, async () => {
    const client = join(dir, "bin", "revdial-client");
    await symlink(join(out, "revdial-agent"), client);
    const usage = await run(client, ["-help"], { env: noNode, cwd: dir }).catch((e) => e);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /usage: revdial-client -server URL -runner-id ID/);
    const child = agent([
      client,
      "-server",
      `${server.url}/api/v1/revdial`,
      "-runner-id",
      "seed-flags-check",
      "-token-file",
      tokenFile,
      "-local",
      `127.0.0.1:${target.port}`,
    ]);
    const res = await callThrough(server, "seed-flags-check", "/via/seed/flags", child);
    assert.equal(res.status, 200, res.body);
    assert.equal(res.body, "served GET /via/seed/flags");
    // The first argument picks the style too.
    const word = await run(join(out, "revdial-agent"), ["client", "-help"], { env: noNode }).catch((e) => e);
    assert.match(word.stderr, /usage: revdial-client -server URL/);
  });
});
