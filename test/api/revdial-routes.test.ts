// The tunnel's HTTP surface on a real server (startServer: store, auth, registry, Fastify) with real
// agents: the admin proxy, its errors (503 text and JSON, 413, 401/403), the connections list,
// health and metrics, and `revdial-client` run as users run it, with the seed's flags.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import type { AgentClient } from "../../src/agent/tunnel-client.ts";
import { type RunningServer, startServer } from "../../src/api/server.ts";
import { silentLogger } from "../../src/common/logger.ts";
import {
  startAgent,
  startTarget,
  TEST_PROTOCOL_NAME,
  TEST_TRANSPORT,
  waitConnected,
  waitDisconnected,
} from "../helpers/tunnel-harness.ts";

const RUNNER_TOKEN = "test-runner-token";
const ROOT = new URL("../..", import.meta.url).pathname;

let dataDir: string;
let server: RunningServer;
let target: Awaited<ReturnType<typeof startTarget>>;
let agent: AgentClient;
let admin: Record<string, string>;
let userKey: string;

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "revdial-routes-"));
  server = await startServer({
    listen: "127.0.0.1:0",
    dataDir,
    runnerToken: RUNNER_TOKEN,
    gracePeriodMs: 200,
    bodyLimit: 1024 * 1024,
    logger: silentLogger(),
  });
  admin = { authorization: `Bearer ${server.adminKey}` };
  userKey = (await server.auth.createUser({ name: "mallory" })).apiKey;
  // The runner token registers only hosts an admin has created.
  for (const id of ["routes", "seed-client"]) {
    const created = await fetch(`${server.url}/api/v1/wolf-instances`, {
      method: "POST",
      headers: { ...admin, "content-type": "application/json" },
      body: JSON.stringify({ id }),
    });
    assert.equal(created.status, 201);
  }
  target = await startTarget();
  agent = startAgent(server.url, "wolf-routes", `127.0.0.1:${target.port}`);
  await waitConnected(server.registry, "wolf-routes");
});

after(async () => {
  await agent.close(100);
  await server.close();
  await target.close();
  rmSync(dataDir, { recursive: true, force: true });
});

const proxyUrl = (runner: string, path: string) => `${server.url}/api/v1/revdial/${runner}/proxy${path}`;

test("the proxy passes method, path, query and body through, and keeps the caller's key to itself", async () => {
  const body = Buffer.alloc(300_000, 7);
  const res = await fetch(proxyUrl("wolf-routes", "/echo/a?x=1&y=%20"), {
    method: "PUT",
    headers: admin,
    body,
  });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("x-echo-method"), "PUT");
  assert.equal(res.headers.get("x-echo-path"), "/echo/a?x=1&y=%20");
  assert.deepEqual(Buffer.from(await res.arrayBuffer()), body);
  const small = await fetch(proxyUrl("wolf-routes", "/small"), { headers: admin });
  assert.equal(await small.text(), "");
});

test("a runner without a tunnel gets 503 `Sandbox not connected: no connection`, as text or JSON", async () => {
  const text = await fetch(proxyUrl("sandbox-ses_nobody", "/screenshot"), { headers: admin });
  assert.equal(text.status, 503);
  assert.match(text.headers.get("content-type") ?? "", /^text\/plain/);
  assert.equal(await text.text(), "Sandbox not connected: no connection");
  const json = await fetch(proxyUrl("sandbox-ses_nobody", "/screenshot"), {
    headers: { ...admin, accept: "application/json" },
  });
  assert.equal(json.status, 503);
  assert.deepEqual(await json.json(), {
    error: { code: "RD_ERR_TUNNEL_NOT_CONNECTED", message: "Sandbox not connected: no connection" },
  });
});

test("a body over the limit gets 413, declared or streamed, and the tunnel keeps serving", async () => {
  const declared = await fetch(proxyUrl("wolf-routes", "/sink"), {
    method: "POST",
    headers: admin,
    body: Buffer.alloc(1024 * 1024 + 1),
  });
  assert.equal(declared.status, 413);
  const chunks = (async function* () {
    for (let i = 0; i < 20; i++) yield Buffer.alloc(128 * 1024);
  })();
  const streamed = await fetch(proxyUrl("wolf-routes", "/sink"), {
    method: "POST",
    headers: admin,
    body: ReadableStream.from(chunks),
    duplex: "half",
  } as RequestInit);
  assert.equal(streamed.status, 413);
  assert.equal(await streamed.text(), "request body exceeds the limit of 1048576 bytes");
  const after = await fetch(proxyUrl("wolf-routes", "/still-there"), { headers: admin });
  assert.equal(after.headers.get("x-echo-path"), "/still-there");
});

test("the proxy and the connections list are for admins: 401 without a key, 403 for a user key", async () => {
  for (const url of [proxyUrl("wolf-routes", "/x"), `${server.url}/api/v1/revdial/connections`]) {
    assert.equal((await fetch(url)).status, 401);
    // JSON-only callers get the error shape on every route, the proxy included.
    const res = await fetch(url, { headers: { "x-api-key": userKey, accept: "application/json" } });
    assert.equal(res.status, 403);
    const body = (await res.json()) as { error: { code: string; message: string } };
    assert.equal(body.error.message, "admin access required");
  }
});

test("the connections list shows each live tunnel's figures", async () => {
  const res = await fetch(`${server.url}/api/v1/revdial/connections`, { headers: admin });
  const rows = (await res.json()) as Array<Record<string, unknown>>;
  const row = rows.find((r) => r.runner_id === "wolf-routes");
  assert.ok(row, "wolf-routes is listed");
  assert.equal(row.protocol, TEST_PROTOCOL_NAME);
  assert.equal(row.transport, TEST_TRANSPORT);
  assert.match(String(row.connected_at), /^\d{4}-\d\d-\d\dT/);
  assert.match(String(row.remote_address), /^127\.0\.0\.1:\d+$/);
  assert.ok(Number(row.bytes_in) > 0 && Number(row.bytes_out) > 0);
  assert.equal(typeof row.rtt_ms, "number", "the RTT is measured at connect, not after the first interval");
  assert.equal(row.owner, null);
});

test("health and metrics count tunnels and calls by outcome", async () => {
  const health = (await (await fetch(`${server.url}/healthz`)).json()) as { status: string; tunnels: number };
  assert.equal(health.status, "ok");
  assert.ok(health.tunnels >= 1);
  const metrics = await (await fetch(`${server.url}/metrics`)).text();
  assert.match(metrics, /^revdial_tunnels_connected \d+/m);
  assert.match(metrics, /^revdial_tunnel_calls_total\{outcome="ok"\} [1-9]/m);
  assert.match(metrics, /^revdial_tunnel_calls_total\{outcome="not_connected"\} [1-9]/m);
  assert.match(
    metrics,
    new RegExp(`^revdial_tunnel_registrations_total\\{protocol="${TEST_PROTOCOL_NAME}"\\} [1-9]`, "m"),
  );
  assert.match(metrics, /^revdial_tunnel_bytes_total\{direction="in"\} [1-9]/m);
});

test("the handshake refuses a wrong token (401) and a runner token registering a sandbox (403)", async () => {
  const wrong = await handshake("wolf-x", "nope");
  assert.equal(wrong.status, 401);
  assert.equal(JSON.parse(wrong.body).error.code, "RD_ERR_AUTH_REQUIRED");
  const sandbox = await handshake("sandbox-ses_x", RUNNER_TOKEN);
  assert.equal(sandbox.status, 403);
  assert.match(JSON.parse(sandbox.body).error.message, /wolf-\*/);
});

/** A raw-transport handshake (fetch refuses Upgrade headers): the refusal's status and body. */
function handshake(runnerId: string, token: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${server.url}/api/v1/revdial?runnerid=${runnerId}`, {
      headers: { authorization: `Bearer ${token}`, connection: "Upgrade", upgrade: "revdial.h2" },
    });
    req.on("response", async (res) => {
      let body = "";
      for await (const chunk of res) body += chunk;
      resolve({ status: res.statusCode ?? 0, body });
    });
    req.on("upgrade", () => reject(new Error("the handshake was accepted")));
    req.on("error", reject);
    req.end();
  });
}

test("revdial-client with the seed's flags connects, serves, and exits 0 on SIGTERM", async () => {
  const child = spawn(
    process.execPath,
    [
      join(ROOT, "bin/revdial-client.js"),
      "-server",
      `${server.url}/api/v1/revdial`,
      "-runner-id",
      "wolf-seed-client",
      "-token",
      RUNNER_TOKEN,
      "-local",
      `127.0.0.1:${target.port}`,
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr.on("data", (c: Buffer) => {
    stderr += c.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  try {
    await waitConnected(server.registry, "wolf-seed-client", 15_000);
    const res = await fetch(proxyUrl("wolf-seed-client", "/from-seed-flags"), { headers: admin });
    assert.equal(res.headers.get("x-echo-path"), "/from-seed-flags");
    await res.arrayBuffer();
    child.kill("SIGTERM");
    assert.equal(await exited, 0, stderr);
    await waitDisconnected(server.registry, "wolf-seed-client");
    assert.doesNotMatch(stderr, new RegExp(RUNNER_TOKEN), "the token never reaches the log");
  } finally {
    child.kill("SIGKILL");
  }
});
