// A full disk under the embedded store (issue 10, item 9): writes answer 507 RD_ERR_STORE_FULL (or
// 503 RD_ERR_STORE_UNAVAILABLE when PGlite gave up altogether) with Retry-After, and the body
// names no file (before: 500s with internal file paths). The data dir is on a small tmpfs the test
// mounts (root only; skipped with a message elsewhere), filled to the last byte by a filler file.
// The server then closes and its descriptors return to the baseline.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type RunningServer, startServer } from "../../src/api/server.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { pollUntil } from "../helpers/tunnel-harness.ts";

const fdCount = (): number => readdirSync("/proc/self/fd").length;

/** Most writes tried before the disk must have refused one. */
const MAX_WRITES = 3000;

function tryMount(dir: string): string | null {
  if (process.getuid?.() !== 0) return "SKIPPED: mounting a tmpfs needs root";
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=96m,mode=0700", "tmpfs", dir], { stdio: "pipe" });
    return null;
  } catch (err) {
    return `SKIPPED: cannot mount a tmpfs here (${(err as Error).message.split("\n")[0]})`;
  }
}

/** Writes zeros into `path` until the filesystem refuses a single byte more. */
async function fillDisk(path: string): Promise<void> {
  const file = await open(path, "w");
  try {
    for (const size of [1 << 20, 1 << 16, 1 << 12, 1 << 8, 1]) {
      const chunk = Buffer.alloc(size);
      for (;;) {
        try {
          await file.write(chunk);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === "ENOSPC") break;
          throw err;
        }
      }
    }
  } finally {
    await file.close().catch(() => {});
  }
}

describe("disk full under the embedded store", () => {
  let dir: string;
  let mounted = false;
  let skip: string | null = null;
  let server: RunningServer | undefined;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "revdial-diskfull-"));
    skip = tryMount(dir);
    if (skip) console.log(`# ${skip}`);
    else mounted = true;
  });
  after(async () => {
    await server?.close().catch(() => {});
    if (mounted) execFileSync("umount", ["-l", dir]);
    await rm(dir, { recursive: true, force: true });
  });

  it("writes answer 507/503 with a stable code, Retry-After and no file paths", async (t) => {
    if (skip) return t.skip(skip);
    const dataDir = join(dir, "data");
    const baseline = fdCount();
    server = await startServer({ listen: "127.0.0.1:0", dataDir, logger: silentLogger() });
    const key = server.adminKey as string;
    await fillDisk(join(dir, "filler"));
    let refused: { status: number; raw: string; retryAfter: string | null } | null = null;
    for (let i = 0; i < MAX_WRITES && !refused; i++) {
      const res = await fetch(`${server.url}/api/v1/users`, {
        method: "POST",
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        body: JSON.stringify({ name: `user-${i}-${"x".repeat(50)}` }),
      });
      const raw = await res.text();
      if (res.status !== 201)
        refused = { status: res.status, raw, retryAfter: res.headers.get("retry-after") };
    }
    assert.ok(refused, `the full disk refused one of ${MAX_WRITES} writes`);
    const body = JSON.parse(refused.raw) as { error: { code: string; message: string } };
    assert.ok([507, 503].includes(refused.status), refused.raw);
    assert.equal(
      body.error.code,
      refused.status === 507 ? "RD_ERR_STORE_FULL" : "RD_ERR_STORE_UNAVAILABLE",
      refused.raw,
    );
    assert.ok(Number(refused.retryAfter) > 0, "Retry-After");
    for (const word of [dir, "/pglite", "base/", "pg_wal", "No space", "could not"]) {
      assert.ok(!refused.raw.includes(word), `the body shows "${word}": ${refused.raw}`);
    }
    // The server closes cleanly on a full disk, and gives back every descriptor it opened.
    await server.close();
    await pollUntil(() => fdCount() <= baseline, `descriptors back to ${baseline}`, 20_000, 50);
  });
});
