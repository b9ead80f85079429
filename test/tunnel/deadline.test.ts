// Every call has a deadline and honours its AbortSignal: a target that never answers costs the
// caller timeoutMs and no more, an abort ends the call at once, and either way the stream is
// cancelled end to end (the target sees its request go away).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  type Listening,
  pollUntil,
  startAgent,
  startTarget,
  startTunnelServer,
  type TunnelServer,
  waitConnected,
  waitDisconnected,
} from "../helpers/tunnel-harness.ts";

const RUNNER = "sandbox-deadline";
let target: Listening;
let server: TunnelServer;
let agent: ReturnType<typeof startAgent>;
/** Requests the target holds forever; each notes when its client went away. */
const held: Array<{ gone: boolean }> = [];

before(async () => {
  target = await startTarget((req, res) => {
    const entry = { gone: false };
    held.push(entry);
    res.on("close", () => {
      entry.gone = true;
    });
    void req;
  });
  server = await startTunnelServer({ registry: { callTimeoutMs: 400, gracePeriodMs: 10_000 } });
  agent = startAgent(server.url, RUNNER, `127.0.0.1:${target.port}`);
  await waitConnected(server.registry, RUNNER);
});

after(async () => {
  agent.destroy();
  await server.close();
  await target.close();
});

test("a target that never answers: RD_ERR_TUNNEL_TIMEOUT after timeoutMs, and the stream is cancelled", async () => {
  const before = held.length;
  const t0 = Date.now();
  await assert.rejects(server.registry.request(RUNNER, { method: "GET", path: "/never", timeoutMs: 300 }), {
    code: "RD_ERR_TUNNEL_TIMEOUT",
    message: new RegExp(`^no answer from ${RUNNER} within \\d+ ms$`),
  });
  const took = Date.now() - t0;
  assert.ok(took >= 290 && took < 1500, `timed out after ${took} ms (deadline 300 ms)`);
  assert.equal(held.length, before + 1);
  await pollUntil(() => held[before].gone, "the target's request to be cancelled");
});

test("without timeoutMs the registry's callTimeoutMs applies", async () => {
  const t0 = Date.now();
  await assert.rejects(server.registry.request(RUNNER, { method: "GET", path: "/never" }), {
    code: "RD_ERR_TUNNEL_TIMEOUT",
  });
  const took = Date.now() - t0;
  assert.ok(took >= 390 && took < 1500, `timed out after ${took} ms (callTimeoutMs 400 ms)`);
});

test("an AbortSignal aborts a call in flight with RD_ERR_TUNNEL_ABORTED, at once", async () => {
  const before = held.length;
  const controller = new AbortController();
  const call = server.registry.request(RUNNER, {
    method: "GET",
    path: "/abort-me",
    timeoutMs: 10_000,
    signal: controller.signal,
  });
  await pollUntil(() => held.length === before + 1, "the call to reach the target");
  const t0 = Date.now();
  controller.abort(new Error("user went away"));
  await assert.rejects(call, (err: Error & { code?: string; cause?: Error }) => {
    assert.equal(err.code, "RD_ERR_TUNNEL_ABORTED");
    assert.equal(err.cause?.message, "user went away");
    return true;
  });
  assert.ok(Date.now() - t0 < 200);
  await pollUntil(() => held[before].gone, "the target's request to be cancelled");
});

test("an already-aborted signal fails the call without sending it", async () => {
  const before = held.length;
  await assert.rejects(
    server.registry.request(RUNNER, { method: "GET", path: "/", signal: AbortSignal.abort() }),
    { code: "RD_ERR_TUNNEL_ABORTED" },
  );
  await assert.rejects(server.registry.open(RUNNER, "desktop", { signal: AbortSignal.abort() }), {
    code: "RD_ERR_TUNNEL_ABORTED",
  });
  assert.equal(held.length, before);
});

test("the deadline covers waiting for a reconnect: a call waiting in the grace period times out", async () => {
  agent.destroy();
  await waitDisconnected(server.registry, RUNNER);
  const t0 = Date.now();
  await assert.rejects(server.registry.request(RUNNER, { method: "GET", path: "/", timeoutMs: 300 }), {
    code: "RD_ERR_TUNNEL_TIMEOUT",
  });
  const took = Date.now() - t0;
  assert.ok(took >= 290 && took < 1500, `timed out after ${took} ms while waiting`);
  assert.equal(server.registry.inGracePeriod(RUNNER), true);
});
