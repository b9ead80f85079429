// The data dir is locked, and a server that cannot start exits. With real `revdial server`
// processes (issue 10, items 1, 2 and 9):
// - a second server on the same --data-dir (another port, or the same port) fails at once with
//   RD_ERR_DATA_DIR_LOCKED naming the holder's pid and exits non-zero; the first keeps serving, and
//   a write acknowledged by it survives a kill -9 (before, B shared the PGlite dir and A's kill -9
//   left "PANIC: could not locate a valid checkpoint record" and every row lost);
// - after kill -9 of the holder, a restart takes the (stale) lock and finds the data;
// - a start on a port in use, or with a runner token refused after the store opened, prints the
//   error once, exits non-zero soon after (before: it stayed up holding the store), and releases
//   the lock: the next start on the same dir works;
// - a --data-dir under /proc fails with RD_ERR_DATA_DIR_UNUSABLE instead of spinning at 100% CPU.

import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { postgresBackend, postgresSkipReason } from "../store/store-backends.ts";
import { type CliProcess, startCli } from "../tls/cli-process.ts";

/** Generous bound for a failed start to exit, counted from its error line (the contract is 2 s). */
const EXIT_BOUND_MS = 5000;
/** A server start on a loaded machine (PGlite's first open unpacks a whole cluster). */
const START_BOUND_MS = 90_000;

interface Started {
  proc: CliProcess;
  url: string;
  adminKey: string | null;
}

async function startServer(dataDir: string, listen = "127.0.0.1:0"): Promise<Started> {
  const proc = startCli(["server", "--listen", listen, "--data-dir", dataDir, "--log-level", "warn"]);
  const url = (await proc.waitFor(/listening on (\S+)/, START_BOUND_MS))[1];
  const adminKey = /admin API key[^:]*: (\S+)/.exec(proc.stdout())?.[1] ?? null;
  return { proc, url, adminKey };
}

/** Exit code of a process that must exit within `boundMs` (it is killed and the test fails if not). */
async function exitWithin(proc: CliProcess, boundMs: number): Promise<number | null> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<"late">((resolve) => {
    timer = setTimeout(() => resolve("late"), boundMs);
  });
  const result = await Promise.race([proc.exited(), late]);
  clearTimeout(timer);
  if (result === "late") {
    proc.child.kill("SIGKILL");
    await proc.exited();
    assert.fail(`still running ${boundMs} ms after its error:\n${proc.stderr()}`);
  }
  return result;
}

async function createUser(server: Started, name: string, key: string): Promise<number> {
  const res = await fetch(`${server.url}/api/v1/users`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ name }),
  });
  await res.arrayBuffer();
  return res.status;
}

describe("data dir lock and start-up failures, with real server processes", () => {
  let dir: string;
  let dataDir: string;
  const running: CliProcess[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "revdial-startup-"));
    dataDir = join(dir, "data");
  });
  after(async () => {
    for (const p of running) {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill("SIGKILL");
      await p.exited();
    }
    await rm(dir, { recursive: true, force: true });
  });

  it("a second server on the same dir fails with the holder's pid; kill -9 of the holder, then a restart keeps the data", async () => {
    const a = await startServer(dataDir);
    running.push(a.proc);
    assert.ok(a.adminKey, "the first start prints the admin key");
    const key = a.adminKey as string;
    assert.equal(await createUser(a, "before-b", key), 201);

    // B on another port, then B on A's own port: both stop at the lock.
    const port = new URL(a.url).port;
    for (const listen of ["127.0.0.1:0", `127.0.0.1:${port}`]) {
      const b = startCli(["server", "--listen", listen, "--data-dir", dataDir]);
      running.push(b);
      await b.waitFor(/Error: /, START_BOUND_MS);
      const code = await exitWithin(b, EXIT_BOUND_MS);
      assert.notEqual(code, 0);
      assert.match(
        b.stderr(),
        new RegExp(`RD_ERR_DATA_DIR_LOCKED: data dir ${dataDir} is in use by pid ${a.proc.child.pid}`),
      );
      assert.doesNotMatch(b.stdout(), /listening on/);
    }

    // A still serves, and a write acknowledged after B's attempts survives A's kill -9.
    assert.equal(await createUser(a, "after-b", key), 201);
    a.proc.child.kill("SIGKILL");
    await a.proc.exited();

    const c = await startServer(dataDir);
    running.push(c.proc);
    assert.equal(c.adminKey, null, "the admin key is not made again: the store kept it");
    // Both users are still there (a taken name is refused), and the store takes new writes.
    assert.equal(await createUser(c, "before-b", key), 409);
    assert.equal(await createUser(c, "after-b", key), 409);
    assert.equal(await createUser(c, "after-restart", key), 201);
    await c.proc.stop();
    assert.equal(c.proc.child.exitCode, 0);
  });

  it("a port in use, a bad runner token: the error once, exit non-zero soon after, the lock released", async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
    const taken = (blocker.address() as net.AddressInfo).port;
    // [flags, environment, the error]; the token goes through the environment, never argv.
    const failures: [string[], Record<string, string>, RegExp][] = [
      [["--listen", `127.0.0.1:${taken}`], {}, /EADDRINUSE/g],
      // Rejected after the store is open: the store must be closed before the exit.
      [
        ["--listen", "127.0.0.1:0"],
        { REVDIAL_RUNNER_TOKEN: "short" },
        /RD_ERR_INVALID_OPTION: invalid option runnerToken/g,
      ],
    ];
    try {
      for (const [flags, env, error] of failures) {
        const d = startCli(["server", ...flags, "--data-dir", dataDir], env);
        running.push(d);
        await d.waitFor(/Error: /, START_BOUND_MS);
        const code = await exitWithin(d, EXIT_BOUND_MS);
        assert.notEqual(code, 0);
        assert.equal(d.stderr().match(error)?.length, 1, d.stderr());
        assert.doesNotMatch(d.stdout(), /listening on/);
      }
    } finally {
      blocker.close();
    }
    const e = await startServer(dataDir);
    running.push(e.proc);
    await e.proc.stop();
    assert.equal(e.proc.child.exitCode, 0, `${e.proc.child.signalCode} ${e.proc.stderr()}`);
  });

  it("with DATABASE_URL the data dir is locked too (it holds admin.key and runner.token)", async (t) => {
    const skip = await postgresSkipReason();
    if (skip) return t.skip(skip);
    const backend = await postgresBackend();
    const pgDataDir = join(dir, "pg-data");
    try {
      const args = [
        "server",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        pgDataDir,
        "--database-url",
        backend.databaseUrl,
      ];
      const a = startCli(args);
      running.push(a);
      await a.waitFor(/listening on/, START_BOUND_MS);
      const b = startCli(args);
      running.push(b);
      await b.waitFor(/Error: /, START_BOUND_MS);
      assert.notEqual(await exitWithin(b, EXIT_BOUND_MS), 0);
      assert.match(
        b.stderr(),
        new RegExp(`RD_ERR_DATA_DIR_LOCKED: data dir ${pgDataDir} is in use by pid ${a.child.pid}`),
      );
      await a.stop();
      assert.equal(a.child.exitCode, 0);
    } finally {
      await backend.dispose();
    }
  });

  it("a data dir under /proc fails at once with RD_ERR_DATA_DIR_UNUSABLE", async () => {
    for (const bad of ["/proc/revdial-data", "/proc"]) {
      const p = startCli(["server", "--listen", "127.0.0.1:0", "--data-dir", bad]);
      running.push(p);
      await p.waitFor(/Error: /, START_BOUND_MS);
      assert.notEqual(await exitWithin(p, EXIT_BOUND_MS), 0);
      assert.match(p.stderr(), new RegExp(`RD_ERR_DATA_DIR_UNUSABLE: data dir ${bad} is not usable`));
    }
  });
});
