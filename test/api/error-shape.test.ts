// Every error a client can provoke answers {"error":{"code":"RD_ERR_…","message":"…"}}, Fastify's
// own included: a body that is not JSON, an empty JSON body, an unsupported media type, a schema
// violation, a route that does not exist, a malformed URL, a body over the limit. Before, parse
// errors leaked Fastify's shape and FST_* codes. Through a real server on 127.0.0.1.

import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type RunningServer, startServer } from "../../src/api/server.ts";
import { silentLogger } from "../../src/common/logger.ts";

interface Answer {
  status: number;
  body: { error?: { code?: unknown; message?: unknown } };
  raw: string;
}

function assertShape(answer: Answer, status: number, code: string): void {
  assert.equal(answer.status, status, answer.raw);
  assert.deepEqual(Object.keys(answer.body), ["error"], answer.raw);
  assert.deepEqual(Object.keys(answer.body.error ?? {}).sort(), ["code", "message"], answer.raw);
  assert.equal(answer.body.error?.code, code, answer.raw);
  assert.equal(typeof answer.body.error?.message, "string");
  assert.ok(String(answer.body.error?.message).length > 0);
  assert.doesNotMatch(answer.raw, /FST_/);
}

describe("error shape: every error, Fastify's included", () => {
  let dir: string;
  let server: RunningServer;
  let key: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "revdial-errshape-"));
    server = await startServer({ listen: "127.0.0.1:0", dataDir: join(dir, "data"), logger: silentLogger() });
    key = server.adminKey as string;
  });
  after(async () => {
    await server?.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function call(path: string, init: RequestInit = {}): Promise<Answer> {
    const res = await fetch(`${server.url}${path}`, {
      ...init,
      headers: { authorization: `Bearer ${key}`, ...(init.headers as Record<string, string>) },
    });
    const raw = await res.text();
    let body: Answer["body"] = {};
    try {
      body = JSON.parse(raw);
    } catch {}
    return { status: res.status, body, raw };
  }

  const json = { "content-type": "application/json" };

  it("a body that is not JSON: 400 RD_ERR_BAD_JSON", async () => {
    const answer = await call("/api/v1/users", { method: "POST", headers: json, body: '{"name": "x",' });
    assertShape(answer, 400, "RD_ERR_BAD_JSON");
  });

  it("an empty JSON body: 400 RD_ERR_BAD_JSON", async () => {
    const answer = await call("/api/v1/users", { method: "POST", headers: json, body: "" });
    assertShape(answer, 400, "RD_ERR_BAD_JSON");
  });

  it("an unsupported media type: 415 RD_ERR_UNSUPPORTED_MEDIA_TYPE", async () => {
    const answer = await call("/api/v1/users", {
      method: "POST",
      headers: { "content-type": "application/xml" },
      body: "<user/>",
    });
    assertShape(answer, 415, "RD_ERR_UNSUPPORTED_MEDIA_TYPE");
  });

  it("a body that breaks the route's schema: 400 RD_ERR_VALIDATION", async () => {
    const answer = await call("/api/v1/users", { method: "POST", headers: json, body: '{"nom":"x"}' });
    assertShape(answer, 400, "RD_ERR_VALIDATION");
  });

  it("a route that does not exist: 404 RD_ERR_NOT_FOUND", async () => {
    assertShape(await call("/api/v1/no-such-thing"), 404, "RD_ERR_NOT_FOUND");
  });

  it("a malformed percent-encoding in a path parameter: 400 RD_ERR_BAD_URL", async () => {
    assertShape(await call("/api/v1/projects/%E0%A4%A"), 400, "RD_ERR_BAD_URL");
  });

  it("a JSON body declared over the server's limit: 413 RD_ERR_BODY_TOO_LARGE", async () => {
    // Content-Length is checked before any of the body is read: a few bytes are enough to ask.
    const { port } = server;
    const answer = await new Promise<Answer>((resolve, reject) => {
      const req = http.request(
        {
          host: "127.0.0.1",
          port,
          method: "POST",
          path: "/api/v1/users",
          headers: { ...json, authorization: `Bearer ${key}`, "content-length": String(1024 ** 3) },
        },
        (res) => {
          let raw = "";
          res.on("data", (c: Buffer) => (raw += c));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(raw), raw }));
        },
      );
      req.on("error", reject);
      req.write('{"name":');
    });
    assertShape(answer, 413, "RD_ERR_BODY_TOO_LARGE");
  });
});
