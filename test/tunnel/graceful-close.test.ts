// close() sends GOAWAY, lets calls in flight finish within the drain timeout, then closes the link;
// with nothing in flight it returns at once. Regression: close() used to wait for the session's own
// `close`, which needs the peer to close the WebSocket (it never does), so every close() of a tunnel
// or an agent took the whole drain timeout (10 s / 5 s), and a replaced agent learned it late.

import assert from "node:assert/strict";
import { type TestContext, test } from "node:test";
import { CLOSE } from "../../src/tunnel/constants.ts";
import {
  pollUntil,
  readAll,
  startAgent,
  startTarget,
  startTunnelServer,
  waitAgentState,
  waitConnected,
  waitDisconnected,
} from "../helpers/tunnel-harness.ts";

const RUNNER = "sandbox-close";

/** A target whose `/held` answers only when the test calls release(). */
async function rig(t: TestContext, drainTimeoutMs: number) {
  const held: Array<() => void> = [];
  const target = await startTarget((req, res) => {
    if (req.url === "/held") held.push(() => res.end("released"));
    else res.end("ok");
  });
  t.after(() => target.close());
  const server = await startTunnelServer({ timings: { drainTimeoutMs }, registry: { gracePeriodMs: 5000 } });
  t.after(() => server.close());
  const agent = startAgent(server.url, RUNNER, `127.0.0.1:${target.port}`);
  t.after(() => agent.destroy());
  await waitConnected(server.registry, RUNNER);
  await waitAgentState(agent, "connected");
  return { server, agent, held };
}

test("tunnel.close() with nothing in flight returns at once, and the agent reconnects (SHUTDOWN)", async (t) => {
  const { server, agent } = await rig(t, 10_000);
  const tunnel = server.registry.get(RUNNER)!;
  const t0 = Date.now();
  await tunnel.close(CLOSE.SHUTDOWN, "server shutting down");
  assert.ok(Date.now() - t0 < 1000, `close() took ${Date.now() - t0} ms with no call in flight`);
  // SHUTDOWN is not REPLACED: the agent comes back on its own.
  await pollUntil(
    () => server.registry.get(RUNNER) !== undefined && server.registry.get(RUNNER) !== tunnel,
    "the agent to reconnect",
  );
  await waitAgentState(agent, "connected");
});

test("tunnel.close() lets a call in flight finish, refuses new calls, then closes", async (t) => {
  const { server, held } = await rig(t, 10_000);
  const tunnel = server.registry.get(RUNNER)!;
  const inFlight = tunnel.request({ method: "GET", path: "/held" });
  await pollUntil(() => held.length === 1, "the call to reach the target");
  let closed = false;
  const closing = tunnel.close().then(() => {
    closed = true;
  });
  await assert.rejects(tunnel.request({ method: "GET", path: "/new" }), { code: "RD_ERR_TUNNEL_CLOSED" });
  assert.equal(closed, false);
  held[0]();
  const res = await inFlight;
  assert.equal(res.status, 200);
  assert.equal((await readAll(res.body)).toString(), "released");
  await closing;
});

test("the drain is bounded: a call that never finishes is cut after drainTimeoutMs", async (t) => {
  const { server, held } = await rig(t, 300);
  const tunnel = server.registry.get(RUNNER)!;
  const inFlight = tunnel.request({ method: "GET", path: "/held", timeoutMs: 10_000 });
  await pollUntil(() => held.length === 1, "the call to reach the target");
  const t0 = Date.now();
  await tunnel.close();
  const took = Date.now() - t0;
  assert.ok(took >= 250 && took < 2500, `close() took ${took} ms with a drain of 300 ms`);
  await assert.rejects(inFlight, { code: "RD_ERR_TUNNEL_CLOSED" });
});

test("agent.close() with nothing in flight returns at once and the server sees it leave", async (t) => {
  const { server, agent } = await rig(t, 10_000);
  const gone = waitDisconnected(server.registry, RUNNER);
  const t0 = Date.now();
  assert.equal(await agent.close(), "closed");
  assert.ok(Date.now() - t0 < 1000, `agent.close() took ${Date.now() - t0} ms with no call in flight`);
  assert.match(await gone, /agent stopping/);
});

test("agent.close() lets a call in flight finish", async (t) => {
  const { server, agent, held } = await rig(t, 10_000);
  const inFlight = server.registry.request(RUNNER, { method: "GET", path: "/held" });
  await pollUntil(() => held.length === 1, "the call to reach the target");
  const closing = agent.close();
  held[0]();
  const res = await inFlight;
  assert.equal((await readAll(res.body)).toString(), "released");
  assert.equal(await closing, "closed");
});
