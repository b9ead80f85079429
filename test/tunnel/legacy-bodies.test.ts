// Bodies through a v1 data connection, both ways: a streamed upload of unknown length goes chunked
// and arrives whole; one with a Content-Length goes as is, and one that runs past it is cut, not
// passed on; a target that answers before the upload has ended completes the call (the rest of
// the upload is dropped, the caller's stream is not left paused); answers framed by chunks, by
// length and by the end of the connection all reach the caller whole, and a HEAD gets no body.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import type http from "node:http";
import { PassThrough, Readable } from "node:stream";
import { after, before, test } from "node:test";
import { hasCode } from "../../src/common/errors.ts";
import {
  pollUntil,
  readAll,
  startTarget,
  startTunnelServer,
  TOKEN,
  waitConnected,
} from "../helpers/tunnel-harness.ts";
import { type GoClient, startGoClient } from "./fixtures/go-revdial-client.ts";

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const BIG = randomBytes(3 * 1024 * 1024 + 17);
let target: Awaited<ReturnType<typeof startTarget>>;
let server: Awaited<ReturnType<typeof startTunnelServer>>;
let client: GoClient;
const seen: Array<{
  path: string;
  te: string | undefined;
  length: string | undefined;
  sha: string;
  bytes: number;
}> = [];

before(async () => {
  target = await startTarget(async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const url = req.url ?? "/";
    if (url === "/early") {
      // Answers at once, reading nothing of the upload.
      res.end("early");
      return;
    }
    if (url.startsWith("/answer/")) {
      const kind = url.slice("/answer/".length);
      if (kind === "chunked") {
        res.write(BIG.subarray(0, 1000));
        res.end(BIG.subarray(1000));
      } else if (kind === "length") {
        res.setHeader("content-length", BIG.length);
        res.end(BIG);
      } else {
        // No length, no chunks: the body ends with the connection.
        res.socket?.write(`HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n`);
        res.socket?.end(BIG);
      }
      return;
    }
    const body = await readAll(req).catch(() => null);
    if (!body) return; // cut off by the server: what this file checks
    seen.push({
      path: url,
      te: req.headers["transfer-encoding"],
      length: req.headers["content-length"],
      sha: sha(body),
      bytes: body.length,
    });
    res.end(sha(body));
  });
  server = await startTunnelServer({ timings: { callTimeoutMs: 5000 } });
  client = await startGoClient(server.url, "sandbox-v1-bodies", TOKEN, `127.0.0.1:${target.port}`);
  await waitConnected(server.registry, "sandbox-v1-bodies");
});

after(async () => {
  client.close();
  await server.close();
  await target.close();
});

function pieces(buffer: Buffer, size: number): Readable {
  const parts: Buffer[] = [];
  for (let at = 0; at < buffer.length; at += size) parts.push(buffer.subarray(at, at + size));
  return Readable.from(parts);
}

test("a streamed upload of unknown length goes chunked and arrives whole", async () => {
  const res = await server.registry.request("sandbox-v1-bodies", {
    method: "PUT",
    path: "/chunked-up",
    body: pieces(BIG, 64 * 1024 + 3),
  });
  assert.equal((await readAll(res.body)).toString(), sha(BIG));
  const at = seen.find((s) => s.path === "/chunked-up");
  assert.equal(at?.te, "chunked");
  assert.equal(at?.bytes, BIG.length);
});

test("a streamed upload with a Content-Length goes as is; one longer than that is cut", async () => {
  const res = await server.registry.request("sandbox-v1-bodies", {
    method: "POST",
    path: "/length-up",
    headers: { "content-length": String(BIG.length) },
    body: pieces(BIG, 100_000),
  });
  assert.equal((await readAll(res.body)).toString(), sha(BIG));
  assert.equal(seen.find((s) => s.path === "/length-up")?.length, String(BIG.length));

  await assert.rejects(
    server.registry.request("sandbox-v1-bodies", {
      method: "POST",
      path: "/too-long",
      headers: { "content-length": "10" },
      body: pieces(Buffer.alloc(100, 1), 20),
    }),
    (err) =>
      hasCode(err, "RD_ERR_TUNNEL_STREAM_FAILED") && /longer than its Content-Length/.test(err.message),
  );
  assert.equal(
    seen.some((s) => s.path === "/too-long" && s.bytes > 10),
    false,
  );
});

test("a target that answers before the upload ends completes the call; the upload is drained", async () => {
  const upload = new PassThrough();
  upload.write(Buffer.alloc(1024, 1));
  const res = await server.registry.request("sandbox-v1-bodies", {
    method: "POST",
    path: "/early",
    body: upload,
  });
  assert.equal((await readAll(res.body)).toString(), "early");
  // The caller goes on writing: nothing holds its stream paused.
  for (let i = 0; i < 64; i++) upload.write(Buffer.alloc(64 * 1024, 2));
  upload.end();
  await pollUntil(() => upload.readableLength === 0 && upload.writableLength === 0, "the upload drained");
});

test("answers framed by chunks, by length and by the end of the connection reach the caller whole", async () => {
  for (const kind of ["chunked", "length", "close"]) {
    const res = await server.registry.request("sandbox-v1-bodies", {
      method: "GET",
      path: `/answer/${kind}`,
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers["transfer-encoding"], undefined, "hop-by-hop headers are not passed on");
    const body = await readAll(res.body);
    assert.equal(sha(body), sha(BIG), kind);
  }
  const head = await server.registry.request("sandbox-v1-bodies", { method: "HEAD", path: "/answer/length" });
  assert.equal(head.headers["content-length"], String(BIG.length));
  assert.equal((await readAll(head.body)).length, 0);
});
