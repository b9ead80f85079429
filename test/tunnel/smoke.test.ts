import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  readAll,
  startAgent,
  startTarget,
  startTunnelServer,
  waitConnected,
} from "../helpers/tunnel-harness.ts";

let target: Awaited<ReturnType<typeof startTarget>>;
let server: Awaited<ReturnType<typeof startTunnelServer>>;
let agent: ReturnType<typeof startAgent>;

before(async () => {
  target = await startTarget();
  server = await startTunnelServer();
  agent = startAgent(server.url, "sandbox-smoke", `127.0.0.1:${target.port}`);
  await waitConnected(server.registry, "sandbox-smoke");
});

after(async () => {
  await agent.close(100);
  await server.close();
  await target.close();
});

test("a GET and a POST travel through the tunnel", async () => {
  const res = await server.registry.request("sandbox-smoke", { method: "GET", path: "/hello?x=1" });
  assert.equal(res.status, 200);
  assert.equal(res.headers["x-echo-path"], "/hello?x=1");
  await readAll(res.body);
  const post = await server.registry.request("sandbox-smoke", {
    method: "POST",
    path: "/p",
    body: "payload",
  });
  assert.equal((await readAll(post.body)).toString(), "payload");
});
