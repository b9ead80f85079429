// The data dir is private (issue 9 §3): the dir and every dir in it 0700, every file 0600, PGlite's
// own files included (it unpacks its template 0666), on the first start and on every start after.
// A dir an older version left 0755 with 0644/0666 files is fixed by the next start. Checked on a
// real `revdial server` process, while it runs (after writes) and after it stops.

import assert from "node:assert/strict";
import { chmod, lstat, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type CliProcess, startCli } from "../tls/cli-process.ts";

const START_BOUND_MS = 90_000;

/** Every path under `root` (root included) whose mode is not 0700 (dirs) or 0600 (files). */
async function wrongModes(root: string): Promise<string[]> {
  const wrong: string[] = [];
  const stack = [root];
  for (let path = stack.pop(); path !== undefined; path = stack.pop()) {
    const info = await lstat(path).catch(() => null);
    if (!info || info.isSymbolicLink()) continue;
    const mode = info.mode & 0o7777;
    if (mode !== (info.isDirectory() ? 0o700 : 0o600)) wrong.push(`${mode.toString(8)} ${path}`);
    if (info.isDirectory()) for (const name of await readdir(path)) stack.push(join(path, name));
  }
  return wrong;
}

async function countPaths(root: string): Promise<number> {
  let n = 0;
  const stack = [root];
  for (let path = stack.pop(); path !== undefined; path = stack.pop()) {
    n++;
    const info = await lstat(path);
    if (info.isDirectory()) for (const name of await readdir(path)) stack.push(join(path, name));
  }
  return n;
}

/** What an older version left: dirs 0755, files 0644 (and PGlite's 0666). */
async function loosen(root: string): Promise<void> {
  const stack = [root];
  let i = 0;
  for (let path = stack.pop(); path !== undefined; path = stack.pop()) {
    const info = await lstat(path);
    if (info.isDirectory()) {
      await chmod(path, 0o755);
      for (const name of await readdir(path)) stack.push(join(path, name));
    } else await chmod(path, i++ % 2 ? 0o644 : 0o666);
  }
}

async function start(dataDir: string): Promise<{ proc: CliProcess; url: string; key: string | null }> {
  const proc = startCli(["server", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--log-level", "warn"]);
  const url = (await proc.waitFor(/listening on (\S+)/, START_BOUND_MS))[1];
  return { proc, url, key: /admin API key[^:]*: (\S+)/.exec(proc.stdout())?.[1] ?? null };
}

async function writeSome(url: string, key: string, prefix: string): Promise<void> {
  for (let i = 0; i < 20; i++) {
    const res = await fetch(`${url}/api/v1/users`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ name: `${prefix}-${i}` }),
    });
    assert.equal(res.status, 201);
    await res.arrayBuffer();
  }
}

describe("data dir modes: 0700 dirs, 0600 files, on every start", () => {
  let dir: string;
  let dataDir: string;
  const procs: CliProcess[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "revdial-modes-"));
    dataDir = join(dir, "data");
  });
  after(async () => {
    for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) await p.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("first start: private while running and after stop", async () => {
    const first = await start(dataDir);
    procs.push(first.proc);
    assert.ok(first.key);
    await writeSome(first.url, first.key as string, "first");
    assert.ok((await countPaths(dataDir)) > 100, "PGlite's files are there to check");
    assert.deepEqual(await wrongModes(dataDir), [], "while running");
    await first.proc.stop();
    assert.deepEqual(await wrongModes(dataDir), [], "after stop");
  });

  it("a dir left 0755 with 0644/0666 files is fixed by the next start", async () => {
    await loosen(dataDir);
    assert.ok((await wrongModes(dataDir)).length > 100, "loosened");
    const key = (await readFile(join(dataDir, "admin.key"), "utf8")).trim();
    const second = await start(dataDir);
    procs.push(second.proc);
    assert.deepEqual(await wrongModes(dataDir), [], "fixed at start");
    await writeSome(second.url, key, "second");
    assert.deepEqual(await wrongModes(dataDir), [], "still private after writes");
    await second.proc.stop();
    assert.deepEqual(await wrongModes(dataDir), [], "after stop");
  });
});
