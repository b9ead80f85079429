// Revoking a key cuts the tunnels it registered, at once: on a real server (store, auth, registry)
// with real agents. A user's agent registers her session's sandbox with one of her keys; when an
// admin revokes that key the tunnel is gone (calls answer 503 not connected), the agent cannot come
// back with it, and tunnels registered with other keys, hers or not, stay up.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { TargetMap } from "../../src/agent/target-map.ts";
import type { AgentClient } from "../../src/agent/tunnel-client.ts";
import { type RunningServer, startServer } from "../../src/api/server.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { startAgent, startTarget, waitConnected } from "../helpers/tunnel-harness.ts";

let dataDir: string;
let server: RunningServer;
let admin: string;
let target: Awaited<ReturnType<typeof startTarget>>;
const agents: AgentClient[] = [];

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "revdial-revoke-"));
  server = await startServer({ listen: "127.0.0.1:0", dataDir, gracePeriodMs: 0, logger: silentLogger() });
  admin = server.adminKey as string;
  target = await startTarget();
});

after(async () => {
  for (const a of agents) a.destroy();
  await server.close();
  await target.close();
  rmSync(dataDir, { recursive: true, force: true });
});

const api = async (method: string, path: string, key: string, body?: unknown) => {
  const res = await fetch(`${server.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${key}`, ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, text, json: () => JSON.parse(text) };
};

const agentFor = (runnerId: string, token: string) => {
  const a = startAgent(server.url, runnerId, `127.0.0.1:${target.port}`, {
    token,
    targets: TargetMap.fromFlags(`127.0.0.1:${target.port}`, []),
  });
  agents.push(a);
  return a;
};

test("a revoked key's tunnels are cut at once, and only those", async () => {
  const carol = (await api("POST", "/api/v1/users", admin, { name: "carol" })).json() as {
    id: string;
    api_key: string;
  };
  const minted = await api("POST", `/api/v1/users/${carol.id}/keys`, admin, {
    name: "sandbox agent",
  });
  assert.equal(minted.status, 201, minted.text);
  const agentKey = minted.json() as { id: string; api_key: string };
  const sessions: string[] = [];
  for (let i = 0; i < 2; i++) {
    const made = await api("POST", "/api/v1/sessions", carol.api_key, {});
    assert.equal(made.status, 201, made.text);
    sessions.push(`sandbox-${(made.json() as { id: string }).id}`);
  }
  // One sandbox with the key that will be revoked, one with her other key, one admin tunnel.
  agentFor(sessions[0], agentKey.api_key);
  agentFor(sessions[1], carol.api_key);
  agentFor("wolf-unrelated", admin);
  for (const id of [...sessions, "wolf-unrelated"]) await waitConnected(server.registry, id);

  const revoked = await api("DELETE", `/api/v1/users/${carol.id}/keys/${agentKey.id}`, admin);
  assert.equal(revoked.status, 200, revoked.text);
  // Cut before the revocation answered: no grace period, no call reaches it.
  assert.equal(server.registry.isConnected(sessions[0]), false, "the revoked key's tunnel is gone");
  const call = await api("GET", `/api/v1/revdial/${sessions[0]}/proxy/small`, admin);
  assert.equal(call.status, 503);
  assert.match(call.text, /Sandbox not connected/);
  // The agent retries with the revoked key and is refused every time.
  await new Promise((resolve) => setTimeout(resolve, 600));
  assert.equal(
    server.registry.isConnected(sessions[0]),
    false,
    "the agent cannot come back with the revoked key",
  );
  for (const id of [sessions[1], "wolf-unrelated"]) {
    assert.equal(server.registry.isConnected(id), true, `${id} stays up`);
    const ok = await api("GET", `/api/v1/revdial/${id}/proxy/small`, admin);
    assert.equal(ok.status, 200, `${id}: ${ok.text}`);
  }
  // Revoking a key that registered nothing cuts nothing.
  const spare = (await api("POST", `/api/v1/users/${carol.id}/keys`, admin, {})).json() as {
    id: string;
  };
  assert.equal((await api("DELETE", `/api/v1/users/${carol.id}/keys/${spare.id}`, admin)).status, 200);
  assert.equal(server.registry.isConnected(sessions[1]), true);
});
