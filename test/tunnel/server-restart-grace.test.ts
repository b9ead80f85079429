// A restart keeps the grace period (issue 10, item 7). Regression: after a restart every runner was
// unknown, so calls got an instant 503 until their agent was back. Through real processes: a host
// registered and connected (`wolf-grace`), the server killed with SIGKILL, restarted on the same data
// dir and port; a call made at once, while the host's agent is still away, waits and succeeds when the
// agent is back. A runner the store never knew still fails at once.

import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import {
  fdsBackTo,
  openFds,
  pollUntil,
  startAgent,
  startTarget,
  waitAgentState,
} from "../helpers/tunnel-harness.ts";
import { proxyCall, startServerProcess } from "./fixtures/server-process.ts";

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
