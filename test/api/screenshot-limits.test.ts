// What a sandbox's answer can cost the API, through a real server, a real agent in a user's own
// sandbox and a real target: a screenshot whose declared length is over --screenshot-limit is a
// 502 RD_ERR_SANDBOX_BAD_RESPONSE naming the limit and its stream is reset at the target, not
// drained; an undeclared one is cut off at the limit; a small untagged image gets an ETag and 304;
// a larger untagged one is streamed whole, without an ETag; a tagged one streams with the sandbox's
// tag; a clipboard answer declared over its bound is a 502 and is reset too.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, beforeEach, test } from "node:test";
import type { AgentClient } from "../../src/agent/tunnel-client.ts";
import { type RunningServer, startServer } from "../../src/api/server.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { pollUntil, startAgent, startTarget, waitConnected } from "../helpers/tunnel-harness.ts";

const LIMIT = 6 * 1024 * 1024;
/** Larger than every buffer between target and API (32 MiB connection window, 4 MiB stream window,
 * the agent's 1 MiB): a target that finishes writing this much was drained, not reset. */
const BEYOND_WINDOWS = 64 * 1024 * 1024;
const PNG = Buffer.from("89504e470d0a1a0a0000000d49484452", "hex");

interface Answer {
  bytes: Buffer;
  declare: boolean;
  etag?: string;
  contentType?: string;
}

let dataDir: string;
let server: RunningServer;
let target: Awaited<ReturnType<typeof startTarget>>;
let agent: AgentClient;
let userKey: string;
let sessionId: string;
let answer: Answer;
/** Per answer the target began: written to its end, or cut off. */
const outcomes: Array<"pending" | "finished" | "cut"> = [];

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "revdial-shot-limits-"));
  server = await startServer({
    listen: "127.0.0.1:0",
    dataDir,
    runnerToken: "test-runner-token",
    screenshotLimit: LIMIT,
    logger: silentLogger(),
  });
  const user = await server.auth.createUser({ name: "owner" });
  userKey = user.apiKey;
  sessionId = (await server.store.sessions.create({ ownerId: user.user.id })).id;
  target = await startTarget((req, res) => {
    const index = outcomes.push("pending") - 1;
    res.once("close", () => {
      outcomes[index] = res.writableFinished ? "finished" : "cut";
    });
    if (req.headers["if-none-match"] && req.headers["if-none-match"] === answer.etag) {
      res.writeHead(304, { etag: answer.etag });
      res.end();
      return;
    }
    const headers: Record<string, string | number> = { "content-type": answer.contentType ?? "image/png" };
    if (answer.declare) headers["content-length"] = answer.bytes.length;
    if (answer.etag) headers.etag = answer.etag;
    res.writeHead(200, headers);
    // In 64 KiB writes with backpressure, so that a reset is seen before the end.
    let at = 0;
    const more = () => {
      while (at < answer.bytes.length) {
        const next = answer.bytes.subarray(at, at + 64 * 1024);
        at += next.length;
        if (at >= answer.bytes.length) res.end(next);
        else if (!res.write(next)) return void res.once("drain", more);
      }
    };
    more();
  });
  agent = startAgent(server.url, `sandbox-${sessionId}`, `127.0.0.1:${target.port}`, { token: userKey });
  await waitConnected(server.registry, `sandbox-${sessionId}`);
});

beforeEach(() => {
  outcomes.length = 0;
});

after(async () => {
  await agent.close(100);
  await server.close();
  await target.close();
  rmSync(dataDir, { recursive: true, force: true });
});

function image(size: number): Buffer {
  const bytes = Buffer.alloc(size, 7);
  PNG.copy(bytes);
  return bytes;
}

/** GET through the API with node:http: status, headers, body, and whether the body completed. */
function get(
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer; complete: boolean }> {
  return new Promise((resolve, reject) => {
    const req = http.get(
      `${server.url}/api/v1/external-agents/${sessionId}${path}`,
      { headers: { authorization: `Bearer ${userKey}`, ...headers }, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        const done = (complete: boolean) =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks),
            complete,
          });
        res.once("end", () => done(true));
        res.once("aborted", () => done(false));
        res.once("error", () => done(false));
      },
    );
    req.on("error", reject);
  });
}

test("a declared screenshot over the limit is a 502 naming it, and the sandbox's stream is reset", async () => {
  answer = { bytes: image(BEYOND_WINDOWS), declare: true };
  const res = await get("/screenshot");
  assert.equal(res.status, 502);
  const { error } = JSON.parse(res.body.toString()) as { error: { code: string; message: string } };
  assert.equal(error.code, "RD_ERR_SANDBOX_BAD_RESPONSE");
  assert.match(error.message, new RegExp(`${BEYOND_WINDOWS} bytes, over the limit of ${LIMIT} bytes`));
  await pollUntil(() => outcomes.length === 1 && outcomes[0] !== "pending", "the target's answer to settle");
  assert.deepEqual([...outcomes], ["cut"]);
});

test("an undeclared screenshot over the limit is cut off at the limit, never completed", async () => {
  answer = { bytes: image(BEYOND_WINDOWS), declare: false };
  const res = await get("/screenshot");
  assert.equal(res.status, 200);
  assert.equal(res.complete, false);
  assert.ok(res.body.length <= LIMIT, `${res.body.length} bytes crossed`);
  await pollUntil(() => outcomes.length === 1 && outcomes[0] !== "pending", "the target's answer to settle");
  assert.deepEqual([...outcomes], ["cut"]);
});

test("a small untagged screenshot gets an ETag from its bytes, and 304 for it", async () => {
  answer = { bytes: image(3 * 1024 * 1024), declare: false };
  const res = await get("/screenshot");
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, answer.bytes);
  assert.equal(res.headers["content-type"], "image/png");
  const etag = String(res.headers.etag ?? "");
  assert.match(etag, /^"[A-Za-z0-9_-]+"$/);
  const again = await get("/screenshot", { "if-none-match": etag });
  assert.equal(again.status, 304);
});

test("a larger untagged screenshot within the limit is streamed whole, without an ETag", async () => {
  answer = { bytes: image(LIMIT), declare: true };
  const res = await get("/screenshot");
  assert.equal(res.status, 200);
  assert.equal(res.complete, true);
  assert.deepEqual(res.body, answer.bytes);
  assert.equal(res.headers.etag, undefined);
  assert.equal(res.headers["content-length"], String(answer.bytes.length));
});

test("a tagged screenshot streams with the sandbox's tag; If-None-Match reaches the sandbox", async () => {
  answer = { bytes: image(LIMIT), declare: false, etag: '"sandbox-tag-1"' };
  const res = await get("/screenshot");
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, answer.bytes);
  assert.equal(res.headers.etag, '"sandbox-tag-1"');
  const again = await get("/screenshot", { "if-none-match": '"sandbox-tag-1"' });
  assert.equal(again.status, 304);
  assert.equal(again.headers.etag, '"sandbox-tag-1"');
});

test("a clipboard answer declared over its bound is a 502, and its stream is reset", async () => {
  answer = {
    bytes: Buffer.alloc(BEYOND_WINDOWS, 0x20),
    declare: true,
    contentType: "application/json",
  };
  const res = await get("/clipboard");
  assert.equal(res.status, 502);
  const { error } = JSON.parse(res.body.toString()) as { error: { code: string; message: string } };
  assert.equal(error.code, "RD_ERR_SANDBOX_BAD_RESPONSE");
  assert.match(error.message, /over the limit of 16777216 bytes/);
  await pollUntil(() => outcomes.length === 1 && outcomes[0] !== "pending", "the target's answer to settle");
  assert.deepEqual([...outcomes], ["cut"]);
});
