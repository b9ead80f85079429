// The registry snapshot below the server (src/api/tunnel/registry-snapshot.ts, snapshot-file.ts):
// the file's bytes; its bounds (a corrupt, oversized or unreadable file reads as none, with a
// warning; a missing one is the normal first start); its atomic save, mode 0600; and the follower's
// promises: a change after a quiet spell is saved at once, a burst at most once per interval, an
// unchanged set never, close() the last set once. Faults pinned: ad-hoc runners (admin key, not in
// the store) got an instant 503 after a restart because nothing remembered them; a runner that
// dropped just before a crash must still be expected, so the ids in a grace period are kept too.
// The restart itself, through real processes, is in server-restart-grace.test.ts.

import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type TestContext, test } from "node:test";
import { RegistrySnapshot, type SnapshotBackend } from "../../src/api/tunnel/registry-snapshot.ts";
import {
  formatSnapshot,
  parseSnapshot,
  SnapshotFile,
  snapshotBytesFor,
} from "../../src/api/tunnel/snapshot-file.ts";
import { TunnelRegistry } from "../../src/api/tunnel/tunnel-registry.ts";
import { silentLogger } from "../../src/common/logger.ts";
import {
  captureLogger,
  pollUntil,
  startAgent,
  startTarget,
  startTunnelServer,
  waitConnected,
  waitDisconnected,
} from "../helpers/tunnel-harness.ts";

const invalidOption = { code: "RD_ERR_INVALID_OPTION" };

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "revdial-snapshot-unit-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function warnings(lines: Array<Record<string, unknown>>): Array<Record<string, unknown>> {
  return lines.filter((l) => l.level === 40);
}

test("the file's bytes: a header with the count, one runner id per line; anything else is not a snapshot", () => {
  const text = formatSnapshot(["sandbox-a", "fleet0-1"]);
  assert.equal(text, "revdial-tunnels-snapshot v1 count=2\nsandbox-a\nfleet0-1\n");
  assert.deepEqual(parseSnapshot(text, 10), { ids: ["sandbox-a", "fleet0-1"] });
  assert.deepEqual(parseSnapshot(formatSnapshot([]), 10), { ids: [] });
  assert.deepEqual(parseSnapshot("revdial-tunnels-snapshot v1 count=2\na\na\n", 10), { ids: ["a"] });
  const notOne = [
    "",
    "garbage\n",
    "revdial-tunnels-snapshot v2 count=0\n",
    // Cut short: the count does not match, or the last line has no newline.
    "revdial-tunnels-snapshot v1 count=3\na\nb\n",
    "revdial-tunnels-snapshot v1 count=2\na\nb",
    "revdial-tunnels-snapshot v1 count=1\n-not-a-runner-id\n",
    "revdial-tunnels-snapshot v1 count=1\n\n",
    `revdial-tunnels-snapshot v1 count=1\n${"x".repeat(129)}\n`,
  ];
  for (const bad of notOne) assert.ok("invalid" in parseSnapshot(bad, 10), JSON.stringify(bad));
  assert.match(
    (parseSnapshot(formatSnapshot(["a", "b", "c"]), 2) as { invalid: string }).invalid,
    /3 ids, more than the 2 kept/,
  );
});

test("SnapshotFile saves atomically, mode 0600, and reads it back; a missing file is no snapshot and no warning", async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, "tunnels.snapshot");
  const { logger, lines } = captureLogger();
  const file = new SnapshotFile({ path, logger });
  assert.deepEqual(await file.load(), []);
  // A temp file a kill -9 left behind, with a wider mode: the save does not inherit it.
  await writeFile(`${path}.tmp`, "half", { mode: 0o644 });
  await file.save(["sandbox-a", "wolf-b", "not a runner id"]);
  assert.equal((await stat(path)).mode & 0o777, 0o600);
  assert.deepEqual(await readdir(dir), ["tunnels.snapshot"], "no temp file left");
  assert.deepEqual(await file.load(), ["sandbox-a", "wolf-b"], "ids no tunnel can have are not saved");
  await file.save([]);
  assert.deepEqual(await file.load(), []);
  await assert.rejects(file.save(Array.from({ length: 50_001 }, (_, i) => `r${i}`)), RangeError);
  assert.deepEqual(warnings(lines), []);
});

test("SnapshotFile ignores a corrupt, oversized or unreadable file with a warning, never failing", async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, "tunnels.snapshot");
  const { logger, lines } = captureLogger();
  const file = new SnapshotFile({ path, logger, maxIds: 2 });
  assert.equal(file.maxBytes, snapshotBytesFor(2));

  await writeFile(path, Buffer.from([0xff, 0x00, 0x0a, 0x41]));
  assert.deepEqual(await file.load(), []);
  assert.match(String(warnings(lines).at(-1)?.reason), /no snapshot header/);

  await writeFile(path, formatSnapshot(["a", "b", "c"]));
  assert.deepEqual(await file.load(), []);
  assert.match(String(warnings(lines).at(-1)?.reason), /more than the 2 kept/);

  await writeFile(path, "x".repeat(file.maxBytes + 1));
  assert.deepEqual(await file.load(), []);
  assert.match(String(warnings(lines).at(-1)?.reason), /larger than \d+ bytes/);

  await rm(path);
  await mkdir(path);
  assert.deepEqual(await file.load(), []);
  assert.match(String(warnings(lines).at(-1)?.reason), /cannot read it/);
  assert.equal(warnings(lines).length, 4);
  assert.match(String(warnings(lines)[0].msg), /registry snapshot ignored/);
});

test("options are checked at construction, naming the option", () => {
  const logger = silentLogger();
  assert.throws(() => new SnapshotFile({ path: "", logger }), invalidOption);
  assert.throws(() => new SnapshotFile({ path: "/x", logger, maxIds: 0 }), invalidOption);
  assert.throws(() => new SnapshotFile({ path: "/x", logger, maxBytes: 1.5 }), /maxBytes/);
  const source = new FakeSource();
  const backend = new RecordingBackend();
  assert.throws(() => new RegistrySnapshot({ source, backend, logger, minIntervalMs: -1 }), /minIntervalMs/);
  assert.throws(
    () => new RegistrySnapshot({ source, backend: new RecordingBackend(0), logger }),
    /option backend/,
  );
});

/** A registry stand-in: its ids are set by the test, which emits the change events itself. */
class FakeSource extends EventEmitter {
  ids: string[] = [];
  knownRunnerIds(): string[] {
    return [...this.ids];
  }
  change(ids: string[]): void {
    this.ids = ids;
    this.emit("connected", ids.at(-1) ?? "");
  }
}

/** Keeps every save with its time; failNext makes the next saves throw. */
class RecordingBackend implements SnapshotBackend {
  readonly maxIds: number;
  readonly saves: Array<{ at: number; ids: string[] }> = [];
  failNext = 0;
  #waiters: Array<() => void> = [];
  constructor(maxIds = 100) {
    this.maxIds = maxIds;
  }
  async load(): Promise<string[]> {
    return [];
  }
  async save(ids: readonly string[]): Promise<void> {
    if (this.failNext > 0) {
      this.failNext--;
      throw new Error("disk full");
    }
    this.saves.push({ at: Date.now(), ids: [...ids] });
    for (const w of this.#waiters.splice(0)) w();
  }
  /** Resolves once there are `n` saves (bounded). */
  async saved(n: number): Promise<void> {
    await pollUntil(() => this.saves.length >= n, `${n} saves`, 5000);
  }
}

test("a change after a quiet spell is saved at once, a burst at most once per interval, an unchanged set never", async () => {
  const source = new FakeSource();
  const backend = new RecordingBackend();
  const interval = 300;
  const snapshot = new RegistrySnapshot({ source, backend, logger: silentLogger(), minIntervalMs: interval });
  const t0 = Date.now();
  source.change(["a"]);
  await backend.saved(1);
  assert.ok(backend.saves[0].at - t0 < interval, "the first change is not held back");
  for (let i = 0; i < 20; i++) source.change([...source.ids, `b${i}`]);
  await backend.saved(2);
  assert.ok(backend.saves[1].at - backend.saves[0].at >= interval - 5, "the burst waited for the interval");
  assert.equal(backend.saves[1].ids.length, 21, "and was saved whole, once");
  // Same set, other order, and a change event: nothing to save, at close either.
  source.change([...source.ids].reverse());
  await snapshot.close();
  assert.equal(backend.saves.length, 2);
});

test("close() saves the set as it is then, once, and follows the source no more; it is idempotent", async () => {
  const source = new FakeSource();
  const backend = new RecordingBackend();
  const snapshot = new RegistrySnapshot({ source, backend, logger: silentLogger(), minIntervalMs: 60_000 });
  source.change(["a"]);
  await backend.saved(1);
  source.change(["a", "b"]); // due in a minute
  const closing = snapshot.close();
  assert.equal(snapshot.close(), closing);
  await closing;
  assert.deepEqual(
    backend.saves.map((s) => s.ids),
    [["a"], ["a", "b"]],
  );
  assert.equal(source.listenerCount("connected") + source.listenerCount("grace-ended"), 0);
  await snapshot.close();
  assert.equal(backend.saves.length, 2);
});

test("past backend.maxIds the first ids (the live ones) are kept with one warning; a failed save is warned once and retried", async () => {
  const { logger, lines } = captureLogger();
  const source = new FakeSource();
  const backend = new RecordingBackend(2);
  const snapshot = new RegistrySnapshot({ source, backend, logger, minIntervalMs: 50 });
  source.change(["a", "b", "c"]);
  await backend.saved(1);
  assert.deepEqual(backend.saves[0].ids, ["a", "b"]);
  source.change(["a", "b", "c", "d"]);
  backend.failNext = 2;
  source.change(["a", "x", "c", "d"]);
  await backend.saved(2);
  assert.deepEqual(backend.saves[1].ids, ["a", "x"]);
  await snapshot.close();
  const warned = warnings(lines).map((l) => String(l.msg));
  assert.equal(warned.filter((m) => /more runners than the registry snapshot keeps/.test(m)).length, 1);
  assert.equal(warned.filter((m) => /could not save the registry snapshot/.test(m)).length, 1);
  assert.ok(lines.some((l) => l.msg === "registry snapshot saved again"));
});

test("the registry names every id it would reach or wait for, and says when a grace period ends", async (t) => {
  const registry = new TunnelRegistry({ logger: silentLogger() });
  t.after(() => registry.close());
  const ended: string[] = [];
  registry.on("grace-ended", (id) => ended.push(id));
  assert.equal(registry.expect(["sandbox-x", "wolf-y"], Date.now() + 100), 2);
  assert.deepEqual(registry.knownRunnerIds(), ["sandbox-x", "wolf-y"]);
  assert.equal(registry.evict("wolf-y", "host deleted"), true);
  assert.deepEqual(ended, ["wolf-y"], "an eviction while away ends the grace period");
  await pollUntil(() => ended.length === 2, "the grace period to expire");
  assert.deepEqual(ended, ["wolf-y", "sandbox-x"]);
  assert.deepEqual(registry.knownRunnerIds(), []);
});

test("following a real registry: a runner is saved when it connects, kept while it may come back, dropped when its grace ends or it is evicted", async (t) => {
  const dir = await tempDir(t);
  const target = await startTarget();
  t.after(() => target.close());
  const server = await startTunnelServer({ registry: { gracePeriodMs: 400 } });
  t.after(() => server.close());
  const file = new SnapshotFile({ path: join(dir, "tunnels.snapshot"), logger: silentLogger() });
  const snapshot = new RegistrySnapshot({
    source: server.registry,
    backend: file,
    logger: silentLogger(),
    minIntervalMs: 20,
  });
  t.after(() => snapshot.close());
  const listed = async (ids: string[]) => {
    await pollUntil(
      async () => (await file.load()).sort().join() === ids.join(),
      `the file to list [${ids}]`,
    );
  };
  const local = `127.0.0.1:${target.port}`;
  const a = startAgent(server.url, "adhoc-a", local);
  t.after(() => a.destroy());
  const b = startAgent(server.url, "adhoc-b", local);
  t.after(() => b.destroy());
  await Promise.all([waitConnected(server.registry, "adhoc-a"), waitConnected(server.registry, "adhoc-b")]);
  await listed(["adhoc-a", "adhoc-b"]);

  // Dropped: still expected during its grace period (a crash now must remember it), then gone.
  const dropped = waitDisconnected(server.registry, "adhoc-a");
  a.destroy();
  await dropped;
  assert.deepEqual((await file.load()).sort(), ["adhoc-a", "adhoc-b"]);
  assert.equal(server.registry.inGracePeriod("adhoc-a"), true);
  await listed(["adhoc-b"]);

  server.registry.evict("adhoc-b", "session stopped");
  await listed([]);
  await snapshot.close();
});
