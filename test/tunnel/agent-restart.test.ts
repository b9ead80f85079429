// An agent that dies mid-request: the caller gets RD_ERR_TUNNEL_CLOSED at once (not a hang). Calls
// made while it is away wait for it within the grace period and complete when it is back; after
// the grace period they fail at once with "no connection"; at most maxWaitersPerRunner wait.

import assert from "node:assert/strict";
import { type TestContext, test } from "node:test";
import { TunnelRegistry } from "../../src/api/tunnel/tunnel-registry.ts";
import { silentLogger } from "../../src/common/logger.ts";
import {
  type Listening,
  pollUntil,
  readAll,
  spawnAgentProcess,
  startAgent,
  startTarget,
  startTunnelServer,
  type TunnelServer,
  waitConnected,
  waitDisconnected,
} from "../helpers/tunnel-harness.ts";

const RUNNER = "sandbox-restart";

interface Rig {
  target: Listening;
  server: TunnelServer;
  local: string;
  /** Requests the target has received on /hang (it never answers them). */
  hanging: () => number;
}

/** A target (`/hang` never answers, anything else echoes its path) and a tunnel server. */
async function rig(t: TestContext, gracePeriodMs: number, maxWaitersPerRunner?: number): Promise<Rig> {
  let hanging = 0;
  const target = await startTarget((req, res) => {
    if (req.url === "/hang") {
      hanging++;
      return;
    }
    res.end(`answer ${req.url}`);
  });
  t.after(() => target.close());
  const registry =
    maxWaitersPerRunner === undefined ? { gracePeriodMs } : { gracePeriodMs, maxWaitersPerRunner };
  const server = await startTunnelServer({ registry });
  t.after(() => server.close());
  return { target, server, local: `127.0.0.1:${target.port}`, hanging: () => hanging };
}

async function getText(registry: TunnelRegistry, path: string, timeoutMs = 5000) {
  const res = await registry.request(RUNNER, { method: "GET", path, timeoutMs });
  return { status: res.status, text: (await readAll(res.body)).toString() };
}

/** Starts a call that the target holds, then runs `kill`; the call must fail fast with CLOSED. */
async function assertKilledMidRequest(r: Rig, kill: () => unknown): Promise<void> {
  const call = r.server.registry.request(RUNNER, { method: "GET", path: "/hang", timeoutMs: 20_000 });
  await pollUntil(() => r.hanging() === 1, "the call to reach the target");
  const t0 = Date.now();
  kill();
  await assert.rejects(call, (err: Error & { code?: string }) => {
    assert.equal(err.code, "RD_ERR_TUNNEL_CLOSED", `${err.code}: ${err.message}`);
    assert.match(err.message, new RegExp(`tunnel to ${RUNNER} closed`));
    return true;
  });
  assert.ok(Date.now() - t0 < 3000, `the caller waited ${Date.now() - t0} ms for a dead agent`);
}

test("agent destroyed mid-request: the caller gets RD_ERR_TUNNEL_CLOSED, not a hang", async (t) => {
  const r = await rig(t, 5000);
  const agent = startAgent(r.server.url, RUNNER, r.local);
  t.after(() => agent.destroy());
  await waitConnected(r.server.registry, RUNNER);
  await assertKilledMidRequest(r, () => agent.destroy());
  assert.equal(await agent.start(), "closed");
});

test("agent process SIGKILLed mid-request: CLOSED at once; calls made while away complete after restart", async (t) => {
  const r = await rig(t, 10_000);
  const first = spawnAgentProcess(r.server.url, RUNNER, r.local);
  t.after(() => first.kill());
  await first.connected;
  await waitConnected(r.server.registry, RUNNER);

  await assertKilledMidRequest(r, () => first.child.kill("SIGKILL"));
  await waitDisconnected(r.server.registry, RUNNER);
  assert.ok(r.server.registry.inGracePeriod(RUNNER));

  // Calls made while the agent is away wait for it instead of failing.
  const waiting = Array.from({ length: 5 }, (_, i) => getText(r.server.registry, `/while-away-${i}`, 15_000));
  const second = spawnAgentProcess(r.server.url, RUNNER, r.local);
  t.after(() => second.kill());
  const results = await Promise.all(waiting);
  for (const [i, res] of results.entries())
    assert.deepEqual(res, { status: 200, text: `answer /while-away-${i}` });
  assert.equal(r.server.registry.isConnected(RUNNER), true);
});

test("agent away past the grace period: waiting and new calls fail with RD_ERR_TUNNEL_NOT_CONNECTED", async (t) => {
  const r = await rig(t, 300);
  const agent = startAgent(r.server.url, RUNNER, r.local);
  t.after(() => agent.destroy());
  await waitConnected(r.server.registry, RUNNER);
  agent.destroy();
  await waitDisconnected(r.server.registry, RUNNER);

  const notConnected = {
    code: "RD_ERR_TUNNEL_NOT_CONNECTED",
    message: "Sandbox not connected: no connection",
  };
  // A call made during the grace period waits, then fails when it ends (not at its own 10 s deadline).
  const t0 = Date.now();
  await assert.rejects(getText(r.server.registry, "/waits", 10_000), notConnected);
  assert.ok(Date.now() - t0 < 2000, `a waiting call outlived the grace period by ${Date.now() - t0} ms`);
  assert.equal(r.server.registry.inGracePeriod(RUNNER), false);

  // After it, calls fail at once.
  const t1 = Date.now();
  await assert.rejects(getText(r.server.registry, "/late", 10_000), notConnected);
  await assert.rejects(r.server.registry.open(RUNNER, "desktop", { timeoutMs: 10_000 }), notConnected);
  assert.ok(Date.now() - t1 < 100, `calls after the grace period took ${Date.now() - t1} ms to fail`);
});

test("a runner never seen fails at once with RD_ERR_TUNNEL_NOT_CONNECTED", async (t) => {
  const r = await rig(t, 5000);
  await assert.rejects(r.server.registry.request("sandbox-unknown", { method: "GET", path: "/" }), {
    code: "RD_ERR_TUNNEL_NOT_CONNECTED",
    message: "Sandbox not connected: no connection",
  });
});

test("the grace queue is bounded: the 101st waiting call gets RD_ERR_TUNNEL_QUEUE_FULL at once", async (t) => {
  const r = await rig(t, 10_000);
  const agent = startAgent(r.server.url, RUNNER, r.local);
  t.after(() => agent.destroy());
  await waitConnected(r.server.registry, RUNNER);
  agent.destroy();
  await waitDisconnected(r.server.registry, RUNNER);

  const waiting = Array.from({ length: 100 }, (_, i) => getText(r.server.registry, `/queued-${i}`, 15_000));
  const t0 = Date.now();
  await assert.rejects(getText(r.server.registry, "/one-too-many"), { code: "RD_ERR_TUNNEL_QUEUE_FULL" });
  assert.ok(Date.now() - t0 < 100, "the 101st call was not refused at once");

  // The 100 that fit are served once the agent is back.
  const back = startAgent(r.server.url, RUNNER, r.local);
  t.after(() => back.destroy());
  const results = await Promise.all(waiting);
  for (const [i, res] of results.entries())
    assert.deepEqual(res, { status: 200, text: `answer /queued-${i}` });
});

test("the waiting-call bound is configurable and validated (maxWaitersPerRunner)", async (t) => {
  const r = await rig(t, 10_000, 2);
  const agent = startAgent(r.server.url, RUNNER, r.local);
  t.after(() => agent.destroy());
  await waitConnected(r.server.registry, RUNNER);
  agent.destroy();
  await waitDisconnected(r.server.registry, RUNNER);
  const aborter = new AbortController();
  const waiting = [1, 2].map(() =>
    r.server.registry.request(RUNNER, { method: "GET", path: "/", signal: aborter.signal }),
  );
  await assert.rejects(getText(r.server.registry, "/third"), { code: "RD_ERR_TUNNEL_QUEUE_FULL" });
  // Aborting a waiting call frees its place in the queue.
  aborter.abort();
  for (const w of waiting) await assert.rejects(w, { code: "RD_ERR_TUNNEL_ABORTED" });
  assert.throws(
    () => new TunnelRegistry({ logger: silentLogger(), maxWaitersPerRunner: -1 }),
    /invalid option maxWaitersPerRunner/,
  );
});
