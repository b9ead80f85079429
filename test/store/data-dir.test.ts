// The data dir's guards, in process (the server-process versions are test/api/startup-*.test.ts):
// - ensureDir() creates missing levels 0700 and fails at once, with RD_ERR_DATA_DIR_UNUSABLE, where
//   a level cannot be made (under /proc Node's recursive mkdir spins forever) or is a file;
// - lockDataDir() is exclusive: a second lock on the same dir (even from this process: flock locks
//   belong to the open file, not the process) fails with RD_ERR_DATA_DIR_LOCKED naming the
//   holder's pid; release() lets the next one in; without a flock program, a live pid in the
//   lock file holds the dir;
// - secureTree() makes every dir 0700 and every file 0600;
// - a PGlite dir that cannot open says why: the PANIC text, not just "Aborted()".

import assert from "node:assert/strict";
import { chmod, mkdir, mkdtemp, readFile, rm, stat, symlink, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { silentLogger } from "../../src/common/logger.ts";
import { ensureDir, LOCK_FILE_NAME, lockDataDir, openStore, secureTree } from "../../src/store/index.ts";

describe("data dir guards", () => {
  let dir: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "revdial-datadir-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("ensureDir creates every missing level 0700", async () => {
    const deep = join(dir, "a", "b", "c");
    await ensureDir(deep, 0o700);
    for (const level of [join(dir, "a"), join(dir, "a", "b"), deep]) {
      assert.equal((await stat(level)).mode & 0o777, 0o700, level);
    }
    await ensureDir(deep, 0o700); // an existing dir is fine
  });

  it("ensureDir fails at once under /proc and on a file", async () => {
    await assert.rejects(ensureDir("/proc/revdial-test/data", 0o700), {
      code: "RD_ERR_DATA_DIR_UNUSABLE",
      message: /data dir \/proc\/revdial-test\/data is not usable: cannot create \/proc\/revdial-test/,
    });
    const file = join(dir, "a-file");
    await writeFile(file, "x");
    await assert.rejects(ensureDir(join(file, "data"), 0o700), {
      code: "RD_ERR_DATA_DIR_UNUSABLE",
      message: /not a directory/i,
    });
    await assert.rejects(ensureDir(file, 0o700), {
      code: "RD_ERR_DATA_DIR_UNUSABLE",
      message: new RegExp(`${file} is not a directory`),
    });
  });

  it("the lock is exclusive, names its holder, and is released", async () => {
    const data = join(dir, "locked");
    await ensureDir(data, 0o700);
    const first = await lockDataDir(data);
    assert.equal((await stat(first.path)).mode & 0o777, 0o600);
    assert.equal((await readFile(first.path, "utf8")).trim(), String(process.pid));
    await assert.rejects(lockDataDir(data), {
      code: "RD_ERR_DATA_DIR_LOCKED",
      message: `data dir ${data} is in use by pid ${process.pid}`,
    });
    first.release();
    first.release();
    const second = await lockDataDir(data);
    second.release();
  });

  it("a lock file left by a dead holder does not block (the kernel lock died with it)", async () => {
    const data = join(dir, "stale");
    await ensureDir(data, 0o700);
    await writeFile(join(data, LOCK_FILE_NAME), "999999999\n", { mode: 0o600 });
    const lock = await lockDataDir(data);
    assert.equal((await readFile(lock.path, "utf8")).trim(), String(process.pid));
    lock.release();
  });

  it("without a flock program, the pid in the lock file holds the dir while that process lives", async () => {
    const data = join(dir, "noflock");
    await ensureDir(data, 0o700);
    const path = join(data, LOCK_FILE_NAME);
    const program = "revdial-no-such-flock";
    // A live process other than this one (our parent, the test runner) holds it.
    await writeFile(path, `${process.ppid}\n`, { mode: 0o600 });
    await assert.rejects(lockDataDir(data, { program }), {
      code: "RD_ERR_DATA_DIR_LOCKED",
      message: `data dir ${data} is in use by pid ${process.ppid}`,
    });
    // A dead holder's pid does not.
    await writeFile(path, "999999999\n");
    const lock = await lockDataDir(data, { program });
    assert.equal((await readFile(path, "utf8")).trim(), String(process.pid));
    lock.release();
    assert.equal(await readFile(path, "utf8"), "", "a released lock names no holder");
  });

  it("secureTree makes dirs 0700 and files 0600, all the way down", async () => {
    const root = join(dir, "tree");
    await mkdir(join(root, "x", "y"), { recursive: true, mode: 0o755 });
    await writeFile(join(root, "top"), "1", { mode: 0o666 });
    await writeFile(join(root, "x", "y", "deep"), "2", { mode: 0o644 });
    await chmod(root, 0o755);
    await secureTree(root);
    // Through a symlink to the root, as with `--data-dir` pointing at a link.
    await chmod(root, 0o755);
    await chmod(join(root, "x", "y", "deep"), 0o644);
    await symlink(root, join(dir, "tree-link"));
    await secureTree(join(dir, "tree-link"));
    for (const [path, mode] of [
      [root, 0o700],
      [join(root, "x"), 0o700],
      [join(root, "x", "y"), 0o700],
      [join(root, "top"), 0o600],
      [join(root, "x", "y", "deep"), 0o600],
    ] as const) {
      assert.equal((await stat(path)).mode & 0o777, mode, path);
    }
  });

  it("a PGlite dir that cannot open says why (the PANIC), not just that", async () => {
    const data = join(dir, "broken");
    const store = await openStore({ dataDir: data, logger: silentLogger() });
    await store.close();
    await unlink(join(data, "pg", "global", "pg_control"));
    await assert.rejects(openStore({ dataDir: data, logger: silentLogger() }), (err: Error) => {
      assert.equal((err as { code?: string }).code, "RD_ERR_STORE_OPEN");
      assert.match(err.message, /cannot open the embedded database in .*PANIC.*pg_control/);
      return true;
    });
  });
});
