// A half-open link (the peer stops reading and answering, but no FIN arrives) is dropped within the
// dead-link timeout. The server's side is tested by SIGSTOPping an agent process (the kernel still
// ACKs, so TCP looks alive); the agent's side by a server that accepts the tunnel and then says nothing.

import assert from "node:assert/strict";
import http from "node:http";
import type { Duplex } from "node:stream";
import { test } from "node:test";
import { WebSocketServer } from "ws";
import { RAW_UPGRADE, RAW_UPGRADE_MUX, SUBPROTOCOL_H2, SUBPROTOCOL_MUX } from "../../src/tunnel/constants.ts";
import { acceptKey } from "../../src/tunnel/ws-codec.ts";
import {
  listen,
  pollUntil,
  readAll,
  spawnAgentProcess,
  startAgent,
  startTarget,
  startTunnelServer,
  TEST_PROTOCOL,
  TEST_TRANSPORT,
  waitConnected,
  waitDisconnected,
} from "../helpers/tunnel-harness.ts";

const RUNNER = "sandbox-half-open";
const DEAD_LINK_MS = 600;

test("server side: a stopped agent is dropped within the dead-link timeout; it reconnects once resumed", async (t) => {
  const target = await startTarget();
  t.after(() => target.close());
  const server = await startTunnelServer({
    timings: { deadLinkTimeoutMs: DEAD_LINK_MS, pingIntervalMs: 150 },
    registry: { gracePeriodMs: 5000 },
  });
  t.after(() => server.close());
  const agent = spawnAgentProcess(server.url, RUNNER, `127.0.0.1:${target.port}`);
  t.after(() => agent.kill());
  await agent.connected;
  await waitConnected(server.registry, RUNNER);
  const firstTunnel = server.registry.get(RUNNER);

  // Pings are answered while the agent runs.
  await pollUntil(() => server.registry.list()[0]?.rtt_ms !== null, "a PING round trip");

  const gone = waitDisconnected(server.registry, RUNNER, 5000);
  const t0 = Date.now();
  agent.child.kill("SIGSTOP");
  // A call made now reaches nobody; it must fail when the link is declared dead, not at its deadline.
  const call = server.registry.request(RUNNER, { method: "GET", path: "/stuck", timeoutMs: 10_000 });
  const reason = await gone;
  const took = Date.now() - t0;
  assert.equal(reason, "dead link");
  assert.ok(took >= DEAD_LINK_MS - 200, `dropped after ${took} ms, before the dead-link timeout`);
  assert.ok(took < DEAD_LINK_MS + 1000, `dropped after ${took} ms, dead-link timeout ${DEAD_LINK_MS} ms`);
  await assert.rejects(call, { code: "RD_ERR_TUNNEL_CLOSED" });

  // Resumed, the agent finds its link cut and dials again.
  agent.child.kill("SIGCONT");
  await waitConnected(server.registry, RUNNER, 5000);
  assert.notEqual(server.registry.get(RUNNER), firstTunnel);
  const res = await server.registry.request(RUNNER, { method: "GET", path: "/back", timeoutMs: 3000 });
  assert.equal(res.status, 200);
  assert.equal(res.headers["x-echo-path"], "/back");
  await readAll(res.body);
});

test("agent side: a server that goes silent is dropped after the agent's dead-link timeout, then redialed", async (t) => {
  // Accepts tunnels, never sends a byte (not even HTTP/2 SETTINGS or a v3 HELLO), never pings.
  const wss = new WebSocketServer({ noServer: true, handleProtocols: () => SUBPROTOCOL_H2 });
  const accepted: number[] = [];
  const rawSockets: Duplex[] = [];
  const server = await listen(http.createServer());
  server.server.on("upgrade", (req, socket, head) => {
    if (TEST_PROTOCOL === "v3") {
      // v3 on either transport: the 101 the agent asked for, then silence.
      rawSockets.push(socket);
      socket.on("error", () => {});
      socket.write(
        TEST_TRANSPORT === "raw"
          ? `HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${RAW_UPGRADE_MUX}\r\n\r\n`
          : "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
              `Sec-WebSocket-Accept: ${acceptKey(String(req.headers["sec-websocket-key"]))}\r\n` +
              `Sec-WebSocket-Protocol: ${SUBPROTOCOL_MUX}\r\n\r\n`,
      );
      accepted.push(Date.now());
      return;
    }
    if (TEST_TRANSPORT === "raw") {
      // The raw transport: a 101, then silence.
      rawSockets.push(socket);
      socket.on("error", () => {});
      socket.write(
        `HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${RAW_UPGRADE}\r\n\r\n`,
      );
      accepted.push(Date.now());
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      accepted.push(Date.now());
      ws.on("error", () => {});
    });
  });
  t.after(async () => {
    for (const socket of rawSockets) socket.destroy();
    for (const ws of wss.clients) ws.terminate();
    wss.close();
    await server.close();
  });
  const agent = startAgent(server.url, RUNNER, "127.0.0.1:1", { deadLinkTimeoutMs: 300 });
  t.after(() => agent.destroy());
  await pollUntil(() => accepted.length >= 2, "the agent to drop the silent link and dial again", 5000);
  const gap = accepted[1] - accepted[0];
  assert.ok(gap >= 250 && gap < 1500, `redialed ${gap} ms after connecting (dead-link timeout 300 ms)`);
});
