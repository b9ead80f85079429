// Bad input at the tunnel endpoint: a wrong token or runner id is refused before the upgrade with a
// JSON error; text frames, garbage instead of HTTP/2, or bytes that are not even WebSocket frames
// close that one tunnel, and the server keeps serving every other tunnel.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import type { IncomingMessage } from "node:http";
import net from "node:net";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import { CLOSE, SUBPROTOCOL_H2 } from "../../src/tunnel/constants.ts";
import {
  type Listening,
  pollUntil,
  readAll,
  startAgent,
  startTarget,
  startTunnelServer,
  TOKEN,
  type TunnelServer,
  waitConnected,
  waitDisconnected,
} from "../helpers/tunnel-harness.ts";

const GOOD = "sandbox-good";
let target: Listening;
let server: TunnelServer;
let agent: ReturnType<typeof startAgent>;

before(async () => {
  target = await startTarget();
  server = await startTunnelServer();
  agent = startAgent(server.url, GOOD, `127.0.0.1:${target.port}`);
  await waitConnected(server.registry, GOOD);
});

after(async () => {
  agent.destroy();
  await server.close();
  await target.close();
});

function tunnelUrl(runnerId: string): string {
  return `${server.url.replace("http:", "ws:")}/api/v1/revdial?runnerid=${encodeURIComponent(runnerId)}`;
}

/** The good agent's tunnel still carries calls. */
async function assertOthersServed(): Promise<void> {
  const res = await server.registry.request(GOOD, { method: "GET", path: "/still-here", timeoutMs: 3000 });
  assert.equal(res.status, 200);
  assert.equal(res.headers["x-echo-path"], "/still-here");
  await readAll(res.body);
  assert.equal(server.registry.isConnected(GOOD), true);
}

type Handshake = { status: number; body: { error: { code: string; message: string } } } | { ws: WebSocket };

/** Dials the endpoint like an agent; resolves with the refusal or the open WebSocket. */
function dial(runnerId: string, headers: Record<string, string>): Promise<Handshake> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(tunnelUrl(runnerId), [SUBPROTOCOL_H2], { headers });
    ws.on("unexpected-response", async (_req, res: IncomingMessage) => {
      assert.equal(res.headers["content-type"], "application/json");
      const body = JSON.parse((await readAll(res)).toString());
      ws.terminate();
      resolve({ status: res.statusCode ?? 0, body });
    });
    ws.once("open", () => resolve({ ws }));
    ws.once("error", (err) => reject(err));
  });
}

const AUTH = { authorization: `Bearer ${TOKEN}` };

/** An attacker's WebSocket, registered as `runnerId`, and a promise of how it was closed. */
async function attacker(runnerId: string) {
  const h = await dial(runnerId, AUTH);
  assert.ok("ws" in h, "the attacker's handshake should succeed");
  const ws = h.ws;
  ws.on("error", () => {});
  const closed = new Promise<number>((resolve) => ws.once("close", (code) => resolve(code)));
  await waitConnected(server.registry, runnerId);
  return { ws, closed };
}

test("wrong or missing token: 401 with a JSON error, before any upgrade", async () => {
  const attempts: Array<Record<string, string>> = [{ authorization: "Bearer wrong-token" }, {}];
  for (const headers of attempts) {
    const h = await dial("sandbox-x", headers);
    assert.ok("status" in h);
    assert.equal(h.status, 401);
    assert.equal(typeof h.body.error.code, "string");
    assert.equal(typeof h.body.error.message, "string");
    assert.deepEqual(Object.keys(h.body), ["error"]);
  }
  assert.equal(server.registry.isConnected("sandbox-x"), false);
  await assertOthersServed();
});

test("malformed runner id: 400 with RD_ERR_TUNNEL_INVALID_RUNNER_ID", async () => {
  for (const id of ["bad id", "-x", "a".repeat(129), "", "ab/c", "é"]) {
    const h = await dial(id, AUTH);
    assert.ok("status" in h, `runner id ${JSON.stringify(id)} was accepted`);
    assert.equal(h.status, 400, `runner id ${JSON.stringify(id)}`);
    assert.deepEqual(h.body, {
      error: { code: "RD_ERR_TUNNEL_INVALID_RUNNER_ID", message: "missing or invalid runnerid" },
    });
  }
  // The longest valid id (128 characters) is accepted.
  const longest = `a${"b".repeat(127)}`;
  const ok = await dial(longest, AUTH);
  assert.ok("ws" in ok);
  ok.ws.terminate();
  await assertOthersServed();
});

test("a text frame on an established tunnel closes that tunnel with 1003", async () => {
  const a = await attacker("sandbox-text");
  const gone = waitDisconnected(server.registry, "sandbox-text");
  a.ws.send("hello, I am text");
  assert.equal(await a.closed, CLOSE.UNSUPPORTED_DATA);
  assert.equal(await gone, "text message on a binary tunnel");
  await assertOthersServed();
});

test("garbage binary frames instead of HTTP/2 close that tunnel only", async () => {
  const a = await attacker("sandbox-garbage");
  const junk = randomBytes(4096);
  junk[3] = 0x00; // a DATA frame header where HTTP/2 requires SETTINGS first: always a protocol error
  a.ws.send(junk);
  const gone = waitDisconnected(server.registry, "sandbox-garbage");
  await a.closed;
  assert.equal(await gone, "HTTP/2 error: Protocol error");
  await assertOthersServed();
});

test("an HTTP/1.1 answer instead of HTTP/2 closes that tunnel only", async () => {
  const a = await attacker("sandbox-http1");
  const gone = waitDisconnected(server.registry, "sandbox-http1");
  a.ws.send(Buffer.from("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
  await a.closed;
  assert.equal(await gone, "HTTP/2 error: Protocol error");
  await assertOthersServed();
});

test("a WebSocket message over the 4 MiB limit closes that tunnel with 1009", async () => {
  const a = await attacker("sandbox-huge-message");
  const gone = waitDisconnected(server.registry, "sandbox-huge-message");
  a.ws.send(Buffer.alloc(4 * 1024 * 1024 + 1));
  assert.equal(await a.closed, 1009);
  await gone;
  await assertOthersServed();
});

test("a raw socket that sends junk after a valid upgrade closes that tunnel only", async () => {
  const socket = net.connect(server.port, "127.0.0.1");
  socket.on("error", () => {});
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  socket.write(
    [
      "GET /api/v1/revdial?runnerid=sandbox-raw HTTP/1.1",
      `Host: 127.0.0.1:${server.port}`,
      "Upgrade: websocket",
      "Connection: Upgrade",
      `Sec-WebSocket-Key: ${randomBytes(16).toString("base64")}`,
      "Sec-WebSocket-Version: 13",
      `Sec-WebSocket-Protocol: ${SUBPROTOCOL_H2}`,
      `Authorization: Bearer ${TOKEN}`,
      "",
      "",
    ].join("\r\n"),
  );
  let answer = "";
  socket.setEncoding("latin1");
  socket.on("data", (text: string) => {
    answer += text;
  });
  await pollUntil(() => answer.includes("\r\n\r\n"), "the upgrade answer");
  assert.match(answer, /^HTTP\/1\.1 101 /);
  await waitConnected(server.registry, "sandbox-raw");
  // Not WebSocket framing at all ('G' sets RSV1, unmasked): the WebSocket layer rejects it.
  socket.write("GARBAGE GARBAGE GARBAGE\r\n");
  assert.match(
    await waitDisconnected(server.registry, "sandbox-raw"),
    /^WebSocket error: Invalid WebSocket frame/,
  );
  await closed;
  await assertOthersServed();
});

test("after all of that, a new agent still registers and is served", async () => {
  const fresh = startAgent(server.url, "sandbox-fresh", `127.0.0.1:${target.port}`);
  try {
    await waitConnected(server.registry, "sandbox-fresh");
    const res = await server.registry.request("sandbox-fresh", { method: "GET", path: "/fresh" });
    assert.equal(res.headers["x-echo-path"], "/fresh");
    await readAll(res.body);
  } finally {
    fresh.destroy();
  }
  await assertOthersServed();
});
