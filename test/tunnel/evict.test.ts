// registry.evict(runnerId, reason): what the API calls when a session is stopped or its keys are
// revoked (issue 10, "a session that is stopped has its tunnel closed at once"). The live tunnel is
// closed at once, calls in flight on it end, no grace period follows (a new call fails at once), calls
// already waiting for the runner fail with RD_ERR_TUNNEL_EVICTED, and the evicted agent does not spin:
// it waits the eviction's retry-after hint (60 s) before dialing again.

import assert from "node:assert/strict";
import { type TestContext, test } from "node:test";
import { EVICTED_RETRY_AFTER_S } from "../../src/tunnel/constants.ts";
import {
  captureLogger,
  fdsBackTo,
  openFds,
  pollUntil,
  startAgent,
  startTarget,
  startTunnelServer,
  waitAgentState,
  waitConnected,
  waitDisconnected,
} from "../helpers/tunnel-harness.ts";

const RUNNER = "sandbox-evicted";

async function rig(t: TestContext) {
  const held: Array<() => void> = [];
  const target = await startTarget((req, res) => {
    if (req.url === "/held") held.push(() => res.end("late"));
    else res.end("ok");
  });
  const server = await startTunnelServer({ registry: { gracePeriodMs: 30_000 } });
  t.after(async () => {
    for (const release of held) release();
    await server.close();
    await target.close();
  });
  return { server, target, held };
}

test("evict closes the live tunnel at once, cuts its calls, starts no grace period; the agent backs off", async (t) => {
  const baseline = openFds();
  const { server, target, held } = await rig(t);
  const capture = captureLogger();
  const agent = startAgent(server.url, RUNNER, `127.0.0.1:${target.port}`, { logger: capture.logger });
  await waitConnected(server.registry, RUNNER);
  await waitAgentState(agent, "connected");

  const inFlight = server.registry.request(RUNNER, { method: "GET", path: "/held", timeoutMs: 20_000 }).then(
    () => null,
    (err: { code?: string }) => err,
  );
  await pollUntil(() => held.length === 1, "the call to reach the target");
  const gone = waitDisconnected(server.registry, RUNNER);
  assert.equal(server.registry.evict(RUNNER, "session stopped"), true);
  assert.match(await gone, /evicted: session stopped/);
  const cut = await inFlight;
  assert.ok(
    ["RD_ERR_TUNNEL_CLOSED", "RD_ERR_TUNNEL_STREAM_FAILED"].includes(cut?.code ?? ""),
    `the call in flight ends with ${cut?.code}`,
  );

  // No grace period: a call made now fails at once instead of waiting 30 s for a comeback.
  assert.equal(server.registry.inGracePeriod(RUNNER), false);
  await assert.rejects(server.registry.request(RUNNER, { method: "GET", path: "/after" }), {
    code: "RD_ERR_TUNNEL_NOT_CONNECTED",
  });

  // The agent waits the hint before dialing again (it does not spin on a stopped session).
  await waitAgentState(agent, "waiting");
  await pollUntil(() => capture.lines.some((l) => l.state === "waiting"), "the agent's waiting line");
  const evictedLine = capture.lines.find((l) => String(l.msg).includes("evicted this runner"));
  assert.ok(evictedLine, `the agent logs the eviction: ${JSON.stringify(capture.lines.slice(-4))}`);
  assert.equal(evictedLine.retry_in_ms, EVICTED_RETRY_AFTER_S * 1000);
  const waiting = capture.lines.find((l) => l.state === "waiting");
  assert.ok(Number(waiting?.retry_in_ms) >= EVICTED_RETRY_AFTER_S * 1000, `waits ${waiting?.retry_in_ms} ms`);
  assert.equal(agent.state, "waiting");
  assert.equal(server.registry.isConnected(RUNNER), false);

  agent.destroy();
  for (const release of held.splice(0)) release();
  await server.close();
  await target.close();
  await fdsBackTo(baseline);
});

test("evict fails the calls waiting in a grace period with RD_ERR_TUNNEL_EVICTED, at once", async (t) => {
  const { server, target } = await rig(t);
  const agent = startAgent(server.url, RUNNER, `127.0.0.1:${target.port}`);
  await waitConnected(server.registry, RUNNER);
  const gone = waitDisconnected(server.registry, RUNNER);
  agent.destroy();
  await gone;
  assert.equal(server.registry.inGracePeriod(RUNNER), true);
  const waiting = [1, 2, 3].map(() =>
    server.registry.request(RUNNER, { method: "GET", path: "/wait", timeoutMs: 20_000 }),
  );
  assert.equal(server.registry.evict(RUNNER, "keys revoked"), true);
  for (const call of waiting) {
    await assert.rejects(call, (err: Error & { code?: string }) => {
      assert.equal(err.code, "RD_ERR_TUNNEL_EVICTED");
      assert.match(err.message, /evicted \(keys revoked\)/);
      return true;
    });
  }
  assert.equal(server.registry.inGracePeriod(RUNNER), false);
  assert.equal(server.registry.evict(RUNNER, "again"), false, "nothing left to evict");
});

test("evict of a runner expected back after a restart fails its waiters too; unknown runners are untouched", async (t) => {
  const { server } = await rig(t);
  assert.equal(server.registry.expect(["sandbox-expected"], Date.now() + 30_000), 1);
  const waiting = server.registry.request("sandbox-expected", {
    method: "GET",
    path: "/",
    timeoutMs: 20_000,
  });
  assert.equal(server.registry.evict("sandbox-expected", "session stopped"), true);
  await assert.rejects(waiting, { code: "RD_ERR_TUNNEL_EVICTED" });
  assert.equal(server.registry.evict("sandbox-never-seen", "x"), false);
});
