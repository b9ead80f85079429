// A tunnel is live only while HTTP/2 frames arrive (issue 9, §5). Written from the attacker's side:
// a peer that upgrades and then says nothing is closed by the preface timeout; a peer that sends its
// HTTP/2 SETTINGS and answers WebSocket pings (ws does so by itself) but never answers an HTTP/2
// PING is closed by the dead-link timeout (the seed counted WebSocket pongs as life and kept such a
// link forever). A real agent beside them stays connected through both. For v1, liveness is what the
// seed's Go listener gives (it never answers keep-alive lines; its WebSocket library answers pings):
// a control connection that answers nothing is dropped; an idle Go-like agent stays. Descriptors
// return to their baseline afterwards.

import assert from "node:assert/strict";
import http from "node:http";
import type net from "node:net";
import { test } from "node:test";
import WebSocket from "ws";
import { RAW_UPGRADE, SUBPROTOCOL_H2 } from "../../src/tunnel/constants.ts";
import {
  fdsBackTo,
  openFds,
  pollUntil,
  readAll,
  startAgent,
  startTarget,
  startTunnelServer,
  TEST_TRANSPORT,
  TOKEN,
  waitConnected,
  waitDisconnected,
} from "../helpers/tunnel-harness.ts";
import { startGoClient } from "./fixtures/go-revdial-client.ts";

const PREFACE_MS = 300;
const DEAD_LINK_MS = 500;

/** An empty HTTP/2 SETTINGS frame: what the agent, as the HTTP/2 server, sends first. */
const SETTINGS_FRAME = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]);

interface Peer {
  /** Sends bytes on the link (after the upgrade). */
  send(bytes: Buffer): void;
  /** Resolves when the server has closed the link. */
  closed: Promise<void>;
  /** WebSocket pings this peer answered (ws answers them by itself); 0 on raw. */
  pings(): number;
  destroy(): void;
}

/** Upgrades like an agent (on the test's transport), then does only what the test tells it. */
function rogueUpgrade(baseUrl: string, runnerId: string): Promise<Peer> {
  const url = `${baseUrl}/api/v1/revdial?runnerid=${runnerId}`;
  if (TEST_TRANSPORT === "raw") {
    return new Promise((resolve, reject) => {
      const req = http.request(url, {
        headers: { connection: "Upgrade", upgrade: RAW_UPGRADE, authorization: `Bearer ${TOKEN}` },
        agent: false,
      });
      req.on("upgrade", (_res, socket: net.Socket) => {
        socket.on("error", () => {});
        socket.resume(); // read and drop whatever the server's HTTP/2 sends
        const closed = new Promise<void>((r) => socket.once("close", () => r()));
        resolve({ send: (b) => socket.write(b), closed, pings: () => 0, destroy: () => socket.destroy() });
      });
      req.on("response", (res) => reject(new Error(`refused: ${res.statusCode}`)));
      req.on("error", reject);
      req.end();
    });
  }
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url.replace("http:", "ws:"), [SUBPROTOCOL_H2], {
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    let pings = 0;
    ws.on("ping", () => pings++);
    ws.on("error", () => {});
    const closed = new Promise<void>((r) => ws.once("close", () => r()));
    ws.once("open", () =>
      resolve({
        send: (b) => ws.send(b, { binary: true }),
        closed,
        pings: () => pings,
        destroy: () => ws.terminate(),
      }),
    );
    ws.once("unexpected-response", (_req, res) => reject(new Error(`refused: ${res.statusCode}`)));
  });
}

test("a silent link is closed by the preface timeout, a link that never answers HTTP/2 PINGs by the dead-link timeout, a real agent stays", async (t) => {
  const baseline = openFds();
  const target = await startTarget();
  const server = await startTunnelServer({
    timings: { prefaceTimeoutMs: PREFACE_MS, deadLinkTimeoutMs: DEAD_LINK_MS, pingIntervalMs: 100 },
    registry: { gracePeriodMs: 0 },
  });
  const agent = startAgent(server.url, "sandbox-real", `127.0.0.1:${target.port}`);
  await waitConnected(server.registry, "sandbox-real");
  const realTunnel = server.registry.get("sandbox-real");

  const silent = await rogueUpgrade(server.url, "sandbox-silent");
  const pongOnly = await rogueUpgrade(server.url, "sandbox-pong-only");
  pongOnly.send(SETTINGS_FRAME);
  await waitConnected(server.registry, "sandbox-silent");
  await waitConnected(server.registry, "sandbox-pong-only");

  assert.equal(
    await waitDisconnected(server.registry, "sandbox-silent", 5000),
    `no HTTP/2 preface within ${PREFACE_MS} ms`,
  );
  await silent.closed;
  assert.equal(await waitDisconnected(server.registry, "sandbox-pong-only", 5000), "dead link");
  await pongOnly.closed;
  if (TEST_TRANSPORT === "ws") assert.ok(pongOnly.pings() > 0, "the WebSocket pings were answered");
  assert.deepEqual(
    { preface: server.endpoint.counters().preface_timeouts, dead: server.endpoint.counters().dead_links },
    { preface: 1, dead: 1 },
  );

  // The agent has lived through several dead-link timeouts on the same tunnel, answering PINGs.
  assert.equal(server.registry.get("sandbox-real"), realTunnel);
  const res = await server.registry.request("sandbox-real", { method: "GET", path: "/still-here" });
  assert.equal(res.status, 200);
  await readAll(res.body);

  agent.destroy();
  await waitDisconnected(server.registry, "sandbox-real");
  silent.destroy();
  pongOnly.destroy();
  await server.close();
  await target.close();
  await fdsBackTo(baseline);
  t.diagnostic(`descriptors back to ${openFds()} (baseline ${baseline})`);
});

test("v1: a control connection that answers nothing is dropped; an idle Go-like agent stays", async () => {
  const baseline = openFds();
  const target = await startTarget();
  const server = await startTunnelServer({
    timings: { deadLinkTimeoutMs: DEAD_LINK_MS, pingIntervalMs: 100 },
    registry: { gracePeriodMs: 0 },
  });
  const talking = await startGoClient(server.url, "sandbox-v1-talks", TOKEN, `127.0.0.1:${target.port}`);
  const silent = await startGoClient(server.url, "sandbox-v1-silent", TOKEN, `127.0.0.1:${target.port}`, {
    silent: true,
  });
  await waitConnected(server.registry, "sandbox-v1-talks");
  await waitConnected(server.registry, "sandbox-v1-silent");
  const talkingTunnel = server.registry.get("sandbox-v1-talks");

  assert.equal(await waitDisconnected(server.registry, "sandbox-v1-silent", 5000), "dead link");
  // Several keep-alive rounds later, the idle agent (which writes no line) still holds its first tunnel.
  await pollUntil(
    () => talking.lines.filter((l) => l.command === "keep-alive").length >= DEAD_LINK_MS / 100 + 2,
    "keep-alives past the dead-link timeout",
  );
  assert.equal(server.registry.get("sandbox-v1-talks"), talkingTunnel);
  const res = await server.registry.request("sandbox-v1-talks", { method: "GET", path: "/v1-alive" });
  assert.equal(res.headers["x-echo-path"], "/v1-alive");
  await readAll(res.body);

  talking.close();
  silent.close();
  await waitDisconnected(server.registry, "sandbox-v1-talks");
  await server.close();
  await target.close();
  await fdsBackTo(baseline);
});
