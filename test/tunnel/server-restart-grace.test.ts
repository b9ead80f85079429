// A restart keeps the grace period (issue 10, item 7). Regression: after a restart every runner was
// unknown, so calls got an instant 503 until their agent was back. Through real processes: a host
// registered and connected (`wolf-grace`), the server killed with SIGKILL, restarted on the same data
// dir and port; a call made at once, while the host's agent is still away, waits and succeeds when the
// agent is back. A runner the store never knew still fails at once.
//
// The registry snapshot (DATA_DIR/tunnels.snapshot) covers the runners the store does not know.
// Regression: an agent registered ad hoc with the admin key (the storm bench's, `revdial doctor`'s)
// got an instant 503 after a kill -9 of the API until it was back (25 of 94 calls in a storm run).
// Now a call for it made right after /healthz waits and succeeds once the agent reconnects; a runner
// that never comes back gets 503 when the grace period ends; a corrupt snapshot stops nothing.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { parseSnapshot, SNAPSHOT_FILE_NAME } from "../../src/api/tunnel/snapshot-file.ts";
import {
  fdsBackTo,
  openFds,
  pollUntil,
  spawnAgentProcess,
  startAgent,
  startTarget,
  waitAgentState,
} from "../helpers/tunnel-harness.ts";
import { proxyCall, startServerProcess, waitHealthz } from "./fixtures/server-process.ts";

const HOST = "grace";
const RUNNER = `wolf-${HOST}`;

test("kill -9 and restart: a call for a runner live before the restart waits for it and succeeds", async (t) => {
  const baseline = openFds();
  const dir = await mkdtemp(join(tmpdir(), "revdial-restart-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const target = await startTarget((req, res) => res.end(`served ${req.url}`));
  t.after(() => target.close());

  const first = await startServerProcess(dir, 0);
  t.after(() => first.proc.stop());
  const registered = await fetch(`${first.url}/api/v1/wolf-instances/register`, {
    method: "POST",
    headers: { authorization: `Bearer ${first.adminKey}`, "content-type": "application/json" },
    body: JSON.stringify({ id: HOST, name: HOST, max_sandboxes: 1 }),
  });
  assert.equal(registered.status, 200, await registered.text());
  const agentOptions = { token: first.adminKey, backoffBaseMs: 50, backoffCapMs: 500 };
  const before = startAgent(first.url, RUNNER, `127.0.0.1:${target.port}`, agentOptions);
  t.after(() => before.destroy());
  await waitAgentState(before, "connected", 10_000);
  assert.equal((await proxyCall(first, RUNNER, "/before")).status, 200);

  // The crash: the host's agent goes too (it will come back as a new process would).
  first.proc.child.kill("SIGKILL");
  await first.proc.exited();
  before.destroy();

  const second = await startServerProcess(dir, first.port, ["--grace-period", "30s"]);
  t.after(() => second.proc.stop());
  const waiting = proxyCall(second, RUNNER, "/during-grace");
  let settled = false;
  void waiting.then(() => {
    settled = true;
  });
  // A runner the store never knew fails at once, and the expected one is not connected yet.
  const unknown = await proxyCall(second, "wolf-never-seen", "/x");
  assert.equal(unknown.status, 503);
  assert.equal(unknown.body, "Sandbox not connected: no connection");
  const connections = await fetch(`${second.url}/api/v1/revdial/connections`, {
    headers: { authorization: `Bearer ${second.adminKey}` },
  });
  assert.deepEqual(await connections.json(), []);
  assert.equal(settled, false, "the call for the expected runner is still waiting");

  const after = startAgent(second.url, RUNNER, `127.0.0.1:${target.port}`, agentOptions);
  t.after(() => after.destroy());
  assert.deepEqual(await waiting, { status: 200, body: "served /during-grace" });

  after.destroy();
  await pollUntil(async () => {
    const res = await fetch(`${second.url}/api/v1/revdial/connections`, {
      headers: { authorization: `Bearer ${second.adminKey}` },
    });
    return ((await res.json()) as unknown[]).length === 0;
  }, "the agent to leave");
  await second.proc.stop();
  await target.close();
  await fdsBackTo(baseline);
});

/** The ids in DIR's registry snapshot, [] while there is none (or it does not parse). */
async function snapshotIds(dir: string): Promise<string[]> {
  const text = await readFile(join(dir, SNAPSHOT_FILE_NAME), "utf8").catch(() => "");
  const parsed = parseSnapshot(text, 1000);
  return "ids" in parsed ? parsed.ids.sort() : [];
}

const BACK = "adhoc-back";
const GONE = "adhoc-gone";
const GRACE_MS = 10_000;

test("kill -9 and restart: a call for an ad-hoc runner (admin key, not in the store) waits for it via the registry snapshot; one that never comes back gets 503 when the grace period ends", async (t) => {
  const baseline = openFds();
  const dir = await mkdtemp(join(tmpdir(), "revdial-snapshot-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  // A body large enough to cross several frames: it must arrive whole after the wait.
  const payload = randomBytes(48 * 1024).toString("hex");
  const target = await startTarget((req, res) => res.end(`${req.url} ${payload}`));
  t.after(() => target.close());
  const local = `127.0.0.1:${target.port}`;

  const first = await startServerProcess(dir, 0);
  t.after(() => first.proc.stop());
  const back = spawnAgentProcess(first.url, BACK, local, { token: first.adminKey });
  t.after(() => back.kill());
  const gone = spawnAgentProcess(first.url, GONE, local, { token: first.adminKey });
  t.after(() => gone.kill());
  await Promise.all([back.connected, gone.connected]);
  assert.equal((await proxyCall(first, BACK, "/before")).status, 200);
  assert.equal((await proxyCall(first, GONE, "/before")).status, 200);
  // Saved within the snapshot's interval (1 s) of the change; the file is private.
  await pollUntil(async () => (await snapshotIds(dir)).join() === [BACK, GONE].join(), "the snapshot");
  assert.equal((await stat(join(dir, SNAPSHOT_FILE_NAME))).mode & 0o777, 0o600);

  // The crash. One agent is frozen (it will find its link cut when resumed, as a live agent would);
  // the other dies with the API and never comes back.
  back.child.kill("SIGSTOP");
  first.proc.child.kill("SIGKILL");
  await first.proc.exited();
  await gone.kill();

  const restartedAt = Date.now();
  const second = await startServerProcess(dir, first.port, ["--grace-period", `${GRACE_MS / 1000}s`]);
  t.after(() => second.proc.stop());
  await waitHealthz(second.url);
  const forBack = proxyCall(second, BACK, "/during-grace");
  const forGone = proxyCall(second, GONE, "/during-grace").then((a) => ({ ...a, at: Date.now() }));
  let settled = false;
  void Promise.race([forBack, forGone]).then(() => {
    settled = true;
  });
  const unknown = await proxyCall(second, "adhoc-never-seen", "/x");
  assert.equal(unknown.status, 503, "a runner nobody knew fails at once");
  assert.equal(unknown.body, "Sandbox not connected: no connection");
  assert.equal(settled, false, "the calls for the snapshot's runners are still waiting");
  await second.proc.waitFor(/"from_store":0,"from_snapshot":2,"in_both":0/);

  back.child.kill("SIGCONT");
  assert.deepEqual(await forBack, { status: 200, body: `/during-grace ${payload}` });

  const answer = await forGone;
  assert.equal(answer.status, 503);
  assert.equal(answer.body, "Sandbox not connected: no connection");
  assert.ok(answer.at >= restartedAt + GRACE_MS - 100, "the call waited out the grace period");
  const started = Date.now();
  const late = await proxyCall(second, GONE, "/after-grace");
  assert.equal(late.status, 503, "past the grace period a runner that did not come back fails");
  assert.ok(Date.now() - started < 2000, "and at once");

  // The expired runner leaves the snapshot; a clean stop keeps the one that is live.
  await pollUntil(
    async () => (await snapshotIds(dir)).join() === BACK,
    "the snapshot without the gone runner",
  );
  await second.proc.stop();
  assert.deepEqual(await snapshotIds(dir), [BACK]);
  assert.equal((await stat(join(dir, SNAPSHOT_FILE_NAME))).mode & 0o777, 0o600);
  await back.kill();
  await target.close();
  await fdsBackTo(baseline);
});

test("a corrupt registry snapshot does not stop the server: it is ignored with a warning", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "revdial-snapshot-corrupt-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await writeFile(
    join(dir, SNAPSHOT_FILE_NAME),
    "revdial-tunnels-snapshot v1 count=3\nadhoc-a\n\u0000\xff\n",
    {
      mode: 0o600,
    },
  );
  const server = await startServerProcess(dir, 0);
  t.after(() => server.proc.stop());
  await server.proc.waitFor(/registry snapshot ignored/);
  await waitHealthz(server.url);
  assert.equal((await proxyCall(server, "adhoc-a", "/x")).status, 503, "nothing was read from it");
  await server.proc.stop();
  assert.equal(await server.proc.exited(), 0);
});
