// 1,000 calls at once through one tunnel, each answered with its own id: every response must carry
// the id of the call that asked for it (no crossed streams) and none may be lost.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  type Listening,
  pollUntil,
  readAll,
  startAgent,
  startTarget,
  startTunnelServer,
  type TunnelServer,
  waitConnected,
} from "../helpers/tunnel-harness.ts";

const RUNNER = "sandbox-concurrency";
let target: Listening;
let server: TunnelServer;
let agent: ReturnType<typeof startAgent>;

before(async () => {
  // The target answers after a random delay so responses come back out of order.
  target = await startTarget((req, res) => {
    const id = req.headers["x-call-id"];
    setTimeout(
      () => {
        res.setHeader("x-answer-id", String(id));
        res.end(`body-of-${req.url?.slice(1)}`);
      },
      Math.floor(Math.random() * 20),
    );
  });
  server = await startTunnelServer();
  agent = startAgent(server.url, RUNNER, `127.0.0.1:${target.port}`);
  await waitConnected(server.registry, RUNNER);
});

after(async () => {
  agent.destroy();
  await server.close();
  await target.close();
});

test("1,000 concurrent requests through one tunnel: each answered with its own id", async () => {
  const N = 1000;
  const calls = Array.from({ length: N }, async (_, i) => {
    const res = await server.registry.request(RUNNER, {
      method: "GET",
      path: `/${i}`,
      headers: { "x-call-id": String(i) },
      timeoutMs: 20_000,
    });
    const body = (await readAll(res.body)).toString();
    return { i, status: res.status, header: res.headers["x-answer-id"], body };
  });
  const results = await Promise.all(calls);
  assert.equal(results.length, N);
  const seen = new Set<number>();
  for (const r of results) {
    assert.equal(r.status, 200);
    assert.equal(r.header, String(r.i), `call ${r.i} got the header of another call`);
    assert.equal(r.body, `body-of-${r.i}`, `call ${r.i} got the body of another call`);
    seen.add(r.i);
  }
  assert.equal(seen.size, N);
  // Every stream is done: none is left open on the tunnel.
  await pollUntil(() => server.registry.list()[0]?.active_streams === 0, "all streams to close");
});
