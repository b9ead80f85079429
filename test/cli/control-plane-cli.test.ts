// The CLI as a user runs it (a child process, real HTTP): fork a sample project, create and list
// sessions, save a screenshot of a session's sandbox, read and set its clipboard, and the failure
// lines and exit codes. The server is the control-plane harness (stand-in tunnel and desktop).

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import {
  type FakeDesktop,
  type Harness,
  startFakeDesktop,
  startHarness,
} from "../api/control-plane-harness.ts";

const CLI = fileURLToPath(new URL("./fixtures/revdial-cli.ts", import.meta.url));
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(args: string[], options: { env?: Record<string, string>; cwd?: string } = {}): Promise<Run> {
  const env = { ...process.env, REVDIAL_API_KEY: "", REVDIAL_DATA_DIR: "", ...options.env };
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env, cwd: options.cwd }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

describe("revdial CLI against a server", () => {
  let h: Harness;
  let desktop: FakeDesktop;
  let workDir: string;
  let userKey: string;
  const as = (key: string, cwd?: string) => ({ env: { REVDIAL_URL: h.url, REVDIAL_API_KEY: key }, cwd });

  before(async () => {
    h = await startHarness();
    desktop = await startFakeDesktop();
    workDir = await mkdtemp(join(tmpdir(), "revdial-cli-"));
  });
  after(async () => {
    await desktop.close();
    await h.close();
    await rm(workDir, { recursive: true, force: true });
  });

  it("user create NAME prints the new key; the key works", async () => {
    const res = await run(["user", "create", "dana"], as(h.adminKey));
    assert.equal(res.code, 0, res.stderr);
    assert.match(res.stdout, /^User created: usr_[0-9a-z]{26} \(dana\)$/m);
    userKey = /^API key: (rd-[A-Za-z0-9_-]{40})$/m.exec(res.stdout)?.[1] ?? "";
    assert.ok(userKey, res.stdout);
    const me = await run(["user", "me", "--json"], as(userKey));
    assert.equal(JSON.parse(me.stdout).name, "dana");
  });

  it("without REVDIAL_API_KEY it uses ./data/admin.key", async () => {
    const cwd = join(workDir, "with-admin-key");
    await mkdir(join(cwd, "data"), { recursive: true });
    await writeFile(join(cwd, "data", "admin.key"), `${h.adminKey}\n`);
    const res = await run(["user", "create", "erik", "--admin", "--json"], {
      env: { REVDIAL_URL: h.url },
      cwd,
    });
    assert.equal(res.code, 0, res.stderr);
    assert.equal(JSON.parse(res.stdout).admin, true);
  });

  it("project fork prints the project and its tasks; project list and spectask list show them", async () => {
    const res = await run(
      ["project", "fork", "modern-todo-app", "--name", "RevDial Routing Test"],
      as(userKey),
    );
    assert.equal(res.code, 0, res.stderr);
    const projectId = /^Project created: (prj_[0-9a-z]{26})$/m.exec(res.stdout)?.[1];
    assert.ok(projectId, res.stdout);
    assert.match(res.stdout, /Fix delete bug/);
    const list = await run(["project", "list"], as(userKey));
    assert.match(list.stdout, /^ID\s+NAME\s+SAMPLE\s+CREATED$/m);
    assert.match(list.stdout, new RegExp(`^${projectId}\\s+RevDial Routing Test\\s+modern-todo-app`, "m"));
    const json = JSON.parse((await run(["project", "list", "--json"], as(userKey))).stdout);
    assert.deepEqual(
      json.map((p: { id: string }) => p.id),
      [projectId],
    );
    const tasks = await run(["spectask", "list", "--project", projectId, "--json"], as(userKey));
    assert.ok(
      JSON.parse(tasks.stdout).some(
        (t: { name: string; status: string }) => t.name === "Fix delete bug" && t.status === "backlog",
      ),
    );
    const table = await run(["spectask", "list"], as(userKey));
    // Aligned: every row's STATUS column starts where the header's does.
    const lines = table.stdout.trimEnd().split("\n");
    const at = lines[0].indexOf("STATUS");
    assert.ok(
      lines.slice(1).every((l) => /^(backlog)/.test(l.slice(at))),
      table.stdout,
    );
  });

  it("session create, list and show", async () => {
    const created = await run(["session", "create", "--name", "cli session"], as(userKey));
    assert.equal(created.code, 0, created.stderr);
    const id = /^Session created: (ses_[0-9a-z]{26})$/m.exec(created.stdout)?.[1];
    assert.ok(id);
    const list = JSON.parse((await run(["session", "list", "--json"], as(userKey))).stdout);
    assert.deepEqual(
      list.map((s: { id: string }) => s.id),
      [id],
    );
    const show = await run(["session", "show", id], as(userKey));
    assert.match(show.stdout, new RegExp(`^id:\\s+${id}$`, "m"));
    assert.match(show.stdout, /^sandbox_connected:\s+false$/m);
    const missing = await run(["session", "show", `ses_${"0".repeat(26)}`], as(userKey));
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /^Error: session ses_0+ not found \(HTTP 404\)$/m);
  });

  describe("the sandbox of a session", () => {
    let sessionId: string;

    before(async () => {
      const out = await run(["session", "create", "--json"], as(userKey));
      sessionId = JSON.parse(out.stdout).id;
      h.dialer.connect(`sandbox-${sessionId}`, desktop.url);
    });

    it("spectask screenshot saves screenshot-YYYYMMDD-HHMMSS.png and prints the path", async () => {
      const cwd = join(workDir, "shots");
      await mkdir(cwd, { recursive: true });
      const res = await run(["spectask", "screenshot", sessionId], as(userKey, cwd));
      assert.equal(res.code, 0, res.stderr);
      const files = await readdir(cwd);
      assert.equal(files.length, 1);
      assert.match(files[0], /^screenshot-\d{8}-\d{6}\.png$/);
      assert.match(res.stdout, new RegExp(files[0].replace(".", "\\.")));
      assert.deepEqual((await readFile(join(cwd, files[0]))).subarray(0, 8), PNG_SIGNATURE);
    });

    it("-o FILE saves there", async () => {
      const file = join(workDir, "named.png");
      const res = await run(
        ["spectask", "screenshot", sessionId, "-o", file, "--format", "png"],
        as(userKey),
      );
      assert.equal(res.code, 0, res.stderr);
      assert.deepEqual((await readFile(file)).subarray(0, 8), PNG_SIGNATURE);
    });

    it("on failure prints `Error: screenshot request failed: {status} - {message}` and exits 1", async () => {
      h.dialer.disconnect(`sandbox-${sessionId}`);
      try {
        const cwd = join(workDir, "no-shot");
        await mkdir(cwd, { recursive: true });
        const res = await run(["spectask", "screenshot", sessionId], as(userKey, cwd));
        assert.equal(res.code, 1);
        assert.equal(
          res.stderr.trim(),
          "Error: screenshot request failed: 503 - Sandbox not connected: no connection",
        );
        assert.deepEqual(await readdir(cwd), []);
      } finally {
        h.dialer.connect(`sandbox-${sessionId}`, desktop.url);
      }
      // The admin key with its last character changed (to one it is not: a fixed "x" is the key itself
      // whenever the key happens to end in "x").
      const wrongKey = h.adminKey.slice(0, -1) + (h.adminKey.endsWith("x") ? "y" : "x");
      const other = await run(["spectask", "screenshot", sessionId], as(wrongKey));
      assert.equal(other.code, 1);
      assert.match(other.stderr, /^Error: screenshot request failed: 401 - /);
    });

    it("spectask clipboard prints the text; --set sets it", async () => {
      const set = await run(["spectask", "clipboard", sessionId, "--set", "copied via the CLI"], as(userKey));
      assert.equal(set.code, 0, set.stderr);
      const got = await run(["spectask", "clipboard", sessionId], as(userKey));
      assert.equal(got.stdout, "copied via the CLI\n");
      const json = await run(["spectask", "clipboard", sessionId, "--json"], as(userKey));
      assert.deepEqual(JSON.parse(json.stdout), { type: "text", data: "copied via the CLI" });
    });

    it("another user cannot take the screenshot: 404", async () => {
      const other = await run(["user", "create", "eve", "--json"], as(h.adminKey));
      const eveKey = JSON.parse(other.stdout).api_key;
      const res = await run(["spectask", "screenshot", sessionId], as(eveKey, workDir));
      assert.equal(res.code, 1);
      assert.match(res.stderr, /^Error: screenshot request failed: 404 - session ses_[0-9a-z]+ not found$/m);
    });
  });

  it("an unreachable server is a clear error", async () => {
    const res = await run(["project", "list"], {
      env: { REVDIAL_URL: "http://127.0.0.1:1", REVDIAL_API_KEY: "x" },
    });
    assert.equal(res.code, 1);
    assert.match(res.stderr, /^Error: cannot reach http:\/\/127\.0\.0\.1:1: /);
  });
});
