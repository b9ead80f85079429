// v1 data connections are authorized without costing a store lookup per call, and without counting
// as tunnels: the endpoint asks authorize() with purpose `data` (so quotas do not admit a second
// tunnel per call), remembers the answer per tunnel and credentials for a second (every call is a
// data connection), asks again after that (a revoked key stops reaching the agent), and forgets it
// with the tunnel (eviction ends it at once). The clock is the endpoint's, so no test waits.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { hasCode } from "../../src/common/errors.ts";
import {
  pollUntil,
  readAll,
  startTarget,
  startTunnelServer,
  TOKEN,
  waitConnected,
} from "../helpers/tunnel-harness.ts";
import { type GoClient, startGoClient } from "./fixtures/go-revdial-client.ts";

let now = 1_000_000;
let revoked = false;
const asked: Array<{ runnerId: string; purpose: string }> = [];
let target: Awaited<ReturnType<typeof startTarget>>;
let server: Awaited<ReturnType<typeof startTunnelServer>>;
let client: GoClient;

before(async () => {
  target = await startTarget();
  server = await startTunnelServer({
    timings: { callTimeoutMs: 3000 },
    endpoint: { now: () => now },
    authorize: async (req, runnerId, purpose) => {
      asked.push({ runnerId, purpose });
      if (revoked || req.headers.authorization !== `Bearer ${TOKEN}`)
        throw { statusCode: 401, code: "RD_ERR_AUTH_REQUIRED", message: "missing or invalid token" };
    },
  });
  client = await startGoClient(server.url, "sandbox-data-auth", TOKEN, `127.0.0.1:${target.port}`);
  await waitConnected(server.registry, "sandbox-data-auth");
});

after(async () => {
  client.close();
  await server.close();
  await target.close();
});

async function call(path: string): Promise<string | string[] | undefined> {
  const res = await server.registry.request("sandbox-data-auth", { method: "GET", path });
  await readAll(res.body);
  return res.headers["x-echo-path"];
}

const dataChecks = () => asked.filter((a) => a.purpose === "data").length;

test("the control connection is authorized as a tunnel, its data connections as data", async () => {
  assert.deepEqual(asked[0], { runnerId: "sandbox-data-auth", purpose: "tunnel" });
  assert.equal(await call("/first"), "/first");
  assert.deepEqual(asked.at(-1), { runnerId: "sandbox-data-auth", purpose: "data" });
});

test("within a second, further data connections with the same key are not asked again", async () => {
  const before = dataChecks();
  for (let i = 0; i < 20; i++) assert.equal(await call(`/again-${i}`), `/again-${i}`);
  assert.equal(dataChecks(), before);
});

test("after a second the key is checked again: a revoked key no longer reaches the agent", async () => {
  revoked = true;
  now += 1001;
  await assert.rejects(
    server.registry.request("sandbox-data-auth", { method: "GET", path: "/revoked" }),
    (err) => hasCode(err, "RD_ERR_TUNNEL_STREAM_FAILED") && /bad handshake \(401\)/.test(err.message),
  );
  revoked = false;
  assert.equal(await call("/back"), "/back");
});

test("a new tunnel starts with nothing remembered", async () => {
  const old = server.registry.get("sandbox-data-auth");
  client.close();
  client = await startGoClient(server.url, "sandbox-data-auth", TOKEN, `127.0.0.1:${target.port}`);
  await pollUntil(() => {
    const live = server.registry.get("sandbox-data-auth");
    return live !== undefined && live !== old;
  }, "the new tunnel live");
  const before = dataChecks();
  revoked = true;
  await assert.rejects(server.registry.request("sandbox-data-auth", { method: "GET", path: "/fresh" }));
  revoked = false;
  assert.equal(dataChecks(), before + 1);
});
