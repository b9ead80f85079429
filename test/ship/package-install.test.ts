// The package installs and runs like any npm package: `npm pack` (which builds dist/ through
// prepack), then `npm install` of the tarball into an empty folder from the local npm cache, on the
// Node first on PATH. From that folder: `revdial --help`, `revdial server`, a `revdial agent`
// dialing in, and one call through its tunnel. The tarball carries what runs, no tests, no sources.
// About 40 s (the build is most of it).

import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
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

describe("npm pack, npm install of the tarball, then revdial from node_modules/.bin", () => {
  let dir: string;
  let app: string;
  let tarball: string;
  // The user's Node first (this test's, Node 24 in CI); nothing else from the checkout. What the
  // machine's npm needs to reach the registry goes through: its proxy and its CAs (npm's `cafile`
  // alone is not enough for npm on Node 24 behind a TLS-inspecting proxy; NODE_EXTRA_CA_CERTS is).
  const env: NodeJS.ProcessEnv = {
    PATH: `${dirname(process.execPath)}:/usr/local/bin:/usr/bin:/bin`,
    HOME: process.env.HOME,
    LANG: "C.UTF-8",
    ...networkEnv(process.env),
  };
  const bin = (name: string) => join(app, "node_modules", ".bin", name);
  let server: StartedServer | null = null;
  let agent: ChildProcess | null = null;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "revdial-pack-"));
    app = join(dir, "app");
    await mkdir(app);
    const packed = await run("npm", ["pack", "--json", "--pack-destination", dir], {
      cwd: ROOT,
      env: { ...env, npm_config_loglevel: "error" },
      maxBuffer: 16 * 1024 * 1024,
      // A hung npm (an unreachable registry) is killed, not left to outlive the test.
      timeout: 100_000,
    });
    const [info] = JSON.parse(packed.stdout) as {
      filename: string;
      size: number;
      files: { path: string }[];
    }[];
    tarball = join(dir, info.filename);
    const paths = info.files.map((f) => f.path);
    assert.ok(paths.includes("dist/cli/main.js"), "the build is in the package");
    assert.ok(paths.includes("dist/cli/main.js.map"), "with its source map");
    assert.ok(paths.includes("bin/revdial.js") && paths.includes("bin/revdial-client.js"));
    assert.ok(paths.includes("dist/web/index.html"), "the dashboard's built files are in the package");
    const extra = paths.filter((p) => /^(src|test|bench|scripts|data|\.ci)\//.test(p) || p.endsWith(".ts"));
    assert.deepEqual(extra, [], "no sources, tests or benchmarks in the package");
    const manifest = JSON.parse(await readFile(join(ROOT, "package.json"), "utf8"));
    assert.equal(manifest.dependencies.node, undefined, "Node is not a runtime dependency");
    await writeFile(join(app, "package.json"), '{ "name": "try-revdial", "private": true }\n');
    // From the local npm cache; whatever is missing there comes from the npm registry only.
    await run("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", tarball], {
      cwd: app,
      env: { ...env, npm_config_loglevel: "error" },
      maxBuffer: 16 * 1024 * 1024,
      // A hung npm (an unreachable registry) is killed, not left to outlive the test.
      timeout: 100_000,
    });
  });
  after(async () => {
    if (agent) await stopChild(agent);
    await server?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("installs without Node itself and without the sources", async () => {
    const installed = join(app, "node_modules", "revdial");
    assert.deepEqual((await readdir(installed)).sort(), ["README.md", "bin", "dist", "package.json"]);
    assert.equal(existsSync(join(app, "node_modules", "node")), false, "no node package installed");
  });

  it("revdial --help runs on the Node on PATH", async () => {
    const help = await run(bin("revdial"), ["--help"], { cwd: app, env });
    assert.match(help.stdout, /^Usage: revdial \[options\] \[command\]/);
    assert.match(help.stdout, /^\s+server /m);
    assert.match(help.stdout, /^\s+agent /m);
    const client = await run(bin("revdial-client"), ["-help"], { cwd: app, env }).catch((e) => e);
    assert.equal(client.code, 2);
    assert.match(client.stderr, /usage: revdial-client -server URL -runner-id ID/);
  });

  it("the installed server and agent carry a call through a tunnel", async () => {
    const data = join(dir, "data");
    server = await startServer(
      [bin("revdial"), "server", "--listen", "127.0.0.1:0", "--data-dir", data],
      data,
      env,
      app,
    );
    const target = await startTarget();
    try {
      agent = spawn(
        bin("revdial"),
        ["agent", "--server", server.url, "--runner-id", "pack-check", "--local", `127.0.0.1:${target.port}`],
        { cwd: app, env: { ...env, REVDIAL_TOKEN: server.adminKey }, stdio: "ignore" },
      );
      const res = await callThrough(server, "pack-check", "/through/the/package?x=1", agent);
      assert.equal(res.status, 200, res.body);
      assert.equal(res.body, "served GET /through/the/package?x=1");
      // The dashboard is served from the package's built files (no esbuild, no web/ sources there).
      const page = await fetch(`${server.url}/`);
      assert.equal(page.status, 200);
      assert.match(page.headers.get("content-type") ?? "", /^text\/html/);
      const script = (await page.text()).match(/src="(\/ui\/assets\/app-[^"]+\.js)"/)?.[1];
      assert.ok(script, "index.html names its bundle");
      const bundle = await fetch(`${server.url}${script}`);
      assert.equal(bundle.status, 200);
      assert.ok((await bundle.arrayBuffer()).byteLength > 1000, "the bundle is not empty");
    } finally {
      await target.close();
    }
  });
});

/**
 * The machine's network settings: proxies and CA bundles. Not npm_config_*: under `npm test` those
 * name the checkout (local_prefix and the like).
 */
function networkEnv(from: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  const names = /^(https?_proxy|no_proxy|node_extra_ca_certs|ssl_cert_file|ssl_cert_dir)$/i;
  for (const [name, value] of Object.entries(from))
    if (value !== undefined && names.test(name)) out[name] = value;
  return out;
}
