// v1 data connections kept alive (legacy-tunnel.ts): with the Go-like client, calls one after another
// ride one data connection (the target sees one TCP connection, the server one dial); a kept
// connection that the target drops before answering is retried on a new dial and the caller never
// sees it; a call with a streamed body always dials; bytes are intact throughout.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import http from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { Readable } from "node:stream";
import { after, before, test } from "node:test";
import { readAll, startTunnelServer, TOKEN, waitConnected } from "../helpers/tunnel-harness.ts";
import { type GoClient, startGoClient } from "./fixtures/go-revdial-client.ts";

const RUNNER = "sandbox-v1-keepalive";
let server: Awaited<ReturnType<typeof startTunnelServer>>;
let client: GoClient;
let target: http.Server;
const sockets = new Map<Socket, number>();
/** Drop the connection instead of answering its second request (a stale kept connection). */
let dropSecond = false;

before(async () => {
  target = http.createServer((req, res) => {
    const socket = req.socket;
    const n = (sockets.get(socket) ?? 0) + 1;
    sockets.set(socket, n);
    if (dropSecond && n === 2) {
      socket.destroy();
      return;
    }
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      res.end(req.method === "POST" ? createHash("sha256").update(body).digest("hex") : `${req.url} #${n}`);
    });
  });
  await new Promise<void>((resolve) => target.listen(0, "127.0.0.1", resolve));
  server = await startTunnelServer();
  client = await startGoClient(
    server.url,
    RUNNER,
    TOKEN,
    `127.0.0.1:${(target.address() as AddressInfo).port}`,
  );
  await waitConnected(server.registry, RUNNER);
});

after(async () => {
  client.close();
  await server.close();
  await new Promise<void>((resolve) => target.close(() => resolve()));
});

const get = async (path: string) => {
  const res = await server.registry.request(RUNNER, { method: "GET", path, headers: {} });
  return { status: res.status, body: (await readAll(res.body)).toString() };
};

test("calls one after another ride one data connection", async () => {
  sockets.clear();
  for (let i = 0; i < 50; i++)
    assert.deepEqual(await get(`/seq/${i}`), { status: 200, body: `/seq/${i} #${i + 1}` });
  assert.equal(sockets.size, 1, "the target saw one connection for 50 calls");
  // Concurrent calls still get a connection each, and their answers do not cross.
  const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => get(`/par/${i}`)));
  for (const [i, a] of answers.entries()) assert.match(a.body, new RegExp(`^/par/${i} #\\d+$`));
});

test("a kept connection the target drops before answering is retried on a new dial", async () => {
  dropSecond = true;
  try {
    sockets.clear();
    // A fresh connection (the previous test's may be kept: the first call here reuses one).
    await get("/warm");
    const before = sockets.size;
    const second = await get("/again");
    assert.equal(second.status, 200);
    assert.match(second.body, /^\/again #1$/, "answered on a new connection, as its first request");
    assert.ok(sockets.size > before, "a new connection was dialed");
  } finally {
    dropSecond = false;
  }
});

test("a call with a streamed body dials its own connection, and its bytes arrive intact", async () => {
  await get("/keep-one");
  sockets.clear();
  const parts = Array.from({ length: 8 }, () => randomBytes(32 * 1024));
  const res = await server.registry.request(RUNNER, {
    method: "POST",
    path: "/upload",
    headers: { "content-type": "application/octet-stream" },
    body: Readable.from(parts),
  });
  assert.equal(
    (await readAll(res.body)).toString(),
    createHash("sha256").update(Buffer.concat(parts)).digest("hex"),
  );
  assert.equal(sockets.size, 1, "the target saw the upload on a connection of its own");
  assert.equal([...sockets.values()][0], 1, "as that connection's first request");
});
