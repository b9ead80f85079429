// A 64 MiB body each way crosses the tunnel byte-identical: uploaded as a stream (POST) and
// downloaded (GET), compared by sha256 and length.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { after, before, test } from "node:test";
import {
  type Listening,
  startAgent,
  startTarget,
  startTunnelServer,
  type TunnelServer,
  waitConnected,
} from "../helpers/tunnel-harness.ts";

const RUNNER = "sandbox-large";
const SIZE = 64 * 1024 * 1024;
let payload: Buffer;
let payloadHash: string;
let target: Listening;
let server: TunnelServer;
let agent: ReturnType<typeof startAgent>;

function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Hashes a stream as it arrives (never holds 64 MiB twice). */
async function hashStream(stream: NodeJS.ReadableStream): Promise<{ hash: string; bytes: number }> {
  const h = createHash("sha256");
  let bytes = 0;
  for await (const chunk of stream) {
    h.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  return { hash: h.digest("hex"), bytes };
}

before(async () => {
  payload = randomBytes(SIZE);
  payloadHash = sha256(payload);
  // POST: the target answers with the hash and size of what it received. GET: it sends the payload.
  target = await startTarget((req, res) => {
    if (req.method === "POST") {
      hashStream(req).then(({ hash, bytes }) => res.end(JSON.stringify({ hash, bytes })));
      return;
    }
    res.setHeader("content-length", String(payload.length));
    res.end(payload);
  });
  server = await startTunnelServer();
  agent = startAgent(server.url, RUNNER, `127.0.0.1:${target.port}`);
  await waitConnected(server.registry, RUNNER);
});

after(async () => {
  agent.destroy();
  await server.close();
  await target.close();
});

test("a 64 MiB POST body arrives at the target byte-identical", async () => {
  // Streamed in 1 MiB pieces, as a proxy would pass an upload through.
  const pieces = function* () {
    for (let off = 0; off < SIZE; off += 1024 * 1024) yield payload.subarray(off, off + 1024 * 1024);
  };
  const res = await server.registry.request(RUNNER, {
    method: "POST",
    path: "/upload",
    body: Readable.from(pieces()),
    timeoutMs: 30_000,
  });
  assert.equal(res.status, 200);
  const chunks: Buffer[] = [];
  for await (const c of res.body) chunks.push(c as Buffer);
  assert.deepEqual(JSON.parse(Buffer.concat(chunks).toString()), { hash: payloadHash, bytes: SIZE });
});

test("a 64 MiB GET body arrives at the caller byte-identical", async () => {
  const res = await server.registry.request(RUNNER, { method: "GET", path: "/download", timeoutMs: 30_000 });
  assert.equal(res.status, 200);
  assert.equal(res.headers["content-length"], String(SIZE));
  assert.deepEqual(await hashStream(res.body), { hash: payloadHash, bytes: SIZE });
});
