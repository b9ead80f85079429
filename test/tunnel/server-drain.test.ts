// SIGTERM drains (issue 10, item 6). Regression: the endpoint destroyed every upgraded socket, live
// tunnels included, before the registry could send GOAWAY, so 40 of 40 calls in flight failed with
// 502 ("closed with code 1006"). Through real processes: a `revdial server` child, a real agent, a
// target that holds its answers until after the SIGTERM; 40 calls in flight all succeed, an agent
// that redials during the drain gets 503 + Retry-After, the server exits 0 without cutting anything
// at the drain bound, and the agent reconnects with backoff to the next server on the same port. And
// the bound holds: a call that never finishes is cut at --drain-timeout and the server exits 0.

import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { RAW_UPGRADE } from "../../src/tunnel/constants.ts";
import {
  fdsBackTo,
  openFds,
  pollUntil,
  readAll,
  startAgent,
  startTarget,
  waitAgentState,
} from "../helpers/tunnel-harness.ts";
import { proxyCall, startServerProcess } from "./fixtures/server-process.ts";

const CALLS = 40;
const RUNNER = "wolf-drain";

function rawHandshake(
  url: string,
  token: string,
): Promise<{ status: number; retryAfter?: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${url}/api/v1/revdial?runnerid=wolf-latecomer`, {
      headers: { connection: "Upgrade", upgrade: RAW_UPGRADE, authorization: `Bearer ${token}` },
      agent: false,
    });
    req.on("upgrade", (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 0, body: "" });
    });
    req.on("response", async (res) =>
      resolve({
        status: res.statusCode ?? 0,
        retryAfter: res.headers["retry-after"] as string | undefined,
        body: (await readAll(res)).toString(),
      }),
    );
    req.on("error", reject);
    req.end();
  });
}

test("SIGTERM: 0 of 40 calls in flight fail, new tunnels get 503, exit 0, the agent moves to the next server", async (t) => {
  const baseline = openFds();
  const dir = await mkdtemp(join(tmpdir(), "revdial-drain-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const held: Array<() => void> = [];
  const target = await startTarget((req, res) => {
    if (req.url?.startsWith("/slow/")) held.push(() => res.end(`done ${req.url}`));
    else res.end("ok");
  });
  t.after(() => target.close());

  const first = await startServerProcess(dir, 0, ["--drain-timeout", "20s"]);
  t.after(() => first.proc.stop());
  const agent = startAgent(first.url, RUNNER, `127.0.0.1:${target.port}`, {
    token: first.adminKey,
    backoffBaseMs: 100,
    backoffCapMs: 1000,
  });
  t.after(() => agent.destroy());
  await waitAgentState(agent, "connected", 10_000);

  const calls = Array.from({ length: CALLS }, (_, i) => proxyCall(first, RUNNER, `/slow/${i}`));
  await pollUntil(() => held.length === CALLS, `${CALLS} calls to reach the target`, 20_000);

  first.proc.child.kill("SIGTERM");
  await first.proc.waitFor(/shutting down/);
  // Draining: the listener is still open, and a new tunnel is told to come back later.
  const late = await rawHandshake(first.url, first.adminKey);
  assert.equal(late.status, 503);
  assert.ok(Number(late.retryAfter) >= 1, `Retry-After ${late.retryAfter}`);
  assert.equal(JSON.parse(late.body).error.code, "RD_ERR_TUNNEL_DRAINING");
  const metrics = await (await fetch(`${first.url}/metrics`)).text();
  assert.match(metrics, /^revdial_tunnel_handshakes_refused_total\{status="503"\} 1$/m);

  for (const release of held.splice(0)) release();
  const answers = await Promise.all(calls);
  const failed = answers.filter((a, i) => a.status !== 200 || a.body !== `done /slow/${i}`);
  assert.deepEqual(failed, [], `${failed.length} of ${CALLS} calls failed`);
  assert.equal(await first.proc.exited(), 0);
  assert.doesNotMatch(first.proc.stderr(), /drain timeout: cutting/);

  // The agent lost its server and redials with backoff; the next server on the same port gets it.
  await waitAgentState(agent, "waiting", 10_000);
  const next = await startServerProcess(dir, first.port);
  t.after(() => next.proc.stop());
  await waitAgentState(agent, "connected", 20_000);
  const res = await proxyCall(next, RUNNER, "/after-restart");
  assert.deepEqual(res, { status: 200, body: "ok" });

  agent.destroy();
  await next.proc.stop();
  await target.close();
  await fdsBackTo(baseline);
});

test("SIGTERM with a call that never finishes: cut at --drain-timeout, and the server still exits 0", async (t) => {
  const baseline = openFds();
  const dir = await mkdtemp(join(tmpdir(), "revdial-drain-bound-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const held: Array<() => void> = [];
  const target = await startTarget((_req, res) => held.push(() => res.end("too late")));
  t.after(() => target.close());
  const server = await startServerProcess(dir, 0, ["--drain-timeout", "1s"]);
  t.after(() => server.proc.stop());
  const agent = startAgent(server.url, RUNNER, `127.0.0.1:${target.port}`, { token: server.adminKey });
  t.after(() => agent.destroy());
  await waitAgentState(agent, "connected", 10_000);
  const stuck = proxyCall(server, RUNNER, "/never");
  await pollUntil(() => held.length === 1, "the call to reach the target", 10_000);

  server.proc.child.kill("SIGTERM");
  assert.equal(await server.proc.exited(), 0);
  assert.match(server.proc.stderr(), /drain timeout: cutting calls still in flight/);
  assert.notEqual((await stuck).status, 200);

  agent.destroy();
  for (const release of held.splice(0)) release();
  await target.close();
  await fdsBackTo(baseline);
});
