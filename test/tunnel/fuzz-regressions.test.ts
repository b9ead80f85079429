// Faults the fuzz runs found, pinned one by one (each case crashed the whole server process, every
// tunnel with it, before its fix). Each sends its input from the attacker's side to a server in its
// own process and proves the server is still up, back to baseline, and serving the healthy tunnel.

import assert from "node:assert/strict";
import net from "node:net";
import { afterEach, beforeEach, test } from "node:test";
import WebSocket from "ws";
import { SUBPROTOCOL_H2, TUNNEL_PATH } from "../../src/tunnel/constants.ts";
import { FUZZ_TOKEN, type FuzzTarget, startFuzzTarget } from "./fixtures/fuzz-harness.ts";

// A server per case, so that each case proves its own fault.
let server: FuzzTarget;
beforeEach(async () => {
  server = await startFuzzTarget();
});
afterEach(async () => {
  await server.close();
});

/** Opens a v1 control connection, sends `line`, and resolves once the server has dealt with it. */
async function sendControlLine(runnerId: string, line: string): Promise<void> {
  const url = `${server.url.replace("http:", "ws:")}${TUNNEL_PATH}?runnerid=${runnerId}`;
  const ws = new WebSocket(url, { headers: { authorization: `Bearer ${FUZZ_TOKEN}` } });
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  const closed = new Promise((resolve) => ws.once("close", resolve));
  ws.on("error", () => {});
  ws.send(Buffer.from(`${line}\n`));
  // A keep-alive after it: the server has read the line before it reads this one.
  ws.send(Buffer.from('{"command":"keep-alive"}\n'));
  ws.close();
  await closed;
}

test("a v1 control line `null` no longer kills the server (TypeError reading 'command')", async () => {
  await sendControlLine("fz-null-line", "null");
  await server.assertAlive();
  await server.checkRecovered("null control line");
  assert.equal((await server.call("healthy-agent", "/after")).status, 200);
});

test("a v1 pickup-failed whose connPath is no URL (`//[`) no longer kills the server (ERR_INVALID_URL)", async () => {
  await sendControlLine("fz-bad-connpath", JSON.stringify({ command: "pickup-failed", connPath: "//[" }));
  await server.assertAlive();
  await server.checkRecovered("unparsable connPath");
  assert.equal((await server.call("healthy-agent", "/after")).status, 200);
});

/** A client WebSocket frame (binary, final) with a zero mask, so the payload goes as is. */
function wsFrame(payload: Buffer): Buffer {
  const head =
    payload.length < 126
      ? Buffer.from([0x82, 0x80 | payload.length])
      : Buffer.from([0x82, 0x80 | 126, payload.length >> 8, payload.length & 0xff]);
  return Buffer.concat([head, Buffer.alloc(4), payload]);
}

test("a ws tunnel flooded with PINGs past the end of its session no longer holds its descriptor for ws's 30 s close timeout", async () => {
  const socket = net.connect(server.port, "127.0.0.1");
  socket.on("error", () => {});
  const serverClosed = new Promise((resolve) => socket.once("close", resolve));
  let head = "";
  await new Promise<void>((resolve) => {
    socket.on("data", function onData(c: Buffer) {
      head += c.toString("latin1");
      if (!head.includes("\r\n\r\n")) return;
      socket.off("data", onData);
      socket.resume();
      resolve();
    });
    socket.write(
      `GET ${TUNNEL_PATH}?runnerid=fz-paused HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
        `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${Buffer.alloc(16, 1).toString("base64")}\r\n` +
        `Sec-WebSocket-Protocol: ${SUBPROTOCOL_H2}\r\nAuthorization: Bearer ${FUZZ_TOKEN}\r\n\r\n`,
    );
  });
  assert.match(head, /^HTTP\/1\.1 101/);
  // The agent's SETTINGS and ACK, then PINGs in 60 KB messages: nghttp2 ends the session as a
  // flood, and the bytes keep coming after it.
  const settings = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]);
  const ack = Buffer.from([0, 0, 0, 4, 1, 0, 0, 0, 0]);
  const ping = Buffer.from([0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
  const flood = Buffer.concat(Array.from({ length: 3000 }, () => ping)).subarray(0, 60_000);
  socket.write(wsFrame(Buffer.concat([settings, ack])));
  for (let i = 0; i < 40; i++) socket.write(wsFrame(flood));
  // We end our half: the server must read that FIN and close. Before the fix its socket was paused
  // (a full read buffer nobody drained), never read the FIN, and stayed open for ws's 30 s close
  // timeout: a descriptor and its buffers held per attacking connection.
  socket.end();
  await serverClosed;
  await server.checkRecovered("paused ws after an ended session");
});
