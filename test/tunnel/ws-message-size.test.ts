// The WebSocket link never sends a message larger than its peer accepts: a write batch of several
// MiB (what HTTP/2 hands the link when a fast target answers a reader that keeps up) leaves as
// messages of at most 1 MiB, so a peer with the endpoint's 4 MiB maxPayload receives every byte
// instead of closing the link with 1009 (which failed every call on the tunnel at once).

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import http from "node:http";
import { test } from "node:test";
import WebSocket, { WebSocketServer } from "ws";
import { WebSocketStream } from "../../src/tunnel/ws-stream.ts";
import { listen, pollUntil } from "../helpers/tunnel-harness.ts";

test("a 6 MiB batch reaches a peer whose maxPayload is 4 MiB, in messages of at most 1 MiB", async (t) => {
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 4 * 1024 * 1024 });
  const l = await listen(http.createServer());
  const accepted = new Promise<WebSocket>((resolve) =>
    l.server.on("upgrade", (req, socket, head) => wss.handleUpgrade(req, socket, head, resolve)),
  );
  const client = new WebSocket(l.url.replace("http:", "ws:"), { perMessageDeflate: false });
  client.on("error", () => {});
  await new Promise((r) => client.once("open", r));
  const receiver = await accepted;
  receiver.on("error", () => {});
  t.after(async () => {
    client.terminate();
    receiver.terminate();
    wss.close();
    await l.close();
  });
  let closedWith: number | null = null;
  receiver.on("close", (code: number) => {
    closedWith = code;
  });
  const sizes: number[] = [];
  const chunks: Buffer[] = [];
  receiver.on("message", (m: Buffer) => {
    sizes.push(m.length);
    chunks.push(m);
  });
  const stream = new WebSocketStream(client);
  const data = randomBytes(6 * 1024 * 1024 + 3);
  stream.cork();
  stream.write(data.subarray(0, 3 * 1024 * 1024));
  stream.write(data.subarray(3 * 1024 * 1024));
  stream.uncork();
  await pollUntil(
    () => closedWith !== null || chunks.reduce((n, c) => n + c.length, 0) === data.length,
    "every byte at the peer, or the link closed",
  );
  assert.equal(closedWith, null, `the peer closed the link with ${closedWith}`);
  const got = Buffer.concat(chunks);
  assert.equal(
    createHash("sha256").update(got).digest("hex"),
    createHash("sha256").update(data).digest("hex"),
  );
  assert.ok(Math.max(...sizes) <= 1024 * 1024, `largest message ${Math.max(...sizes)} bytes`);
});
