// Every error a client can provoke answers {"error":{"code":"RD_ERR_…","message":"…"}}, Fastify's
// own included: a body that is not JSON, an empty JSON body, an unsupported media type, a schema
// violation, a route that does not exist, a malformed URL, a body over the limit, a request Node's
// parser rejects, a request that arrives while the server closes. Before, parse errors leaked
// Fastify's shape and FST_* codes. Through a real server on 127.0.0.1.

import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import Fastify from "fastify";
import { installErrorHandlers, refuseWhileClosing } from "../../src/api/error-handler.ts";
import { type RunningServer, startServer } from "../../src/api/server.ts";
import { silentLogger } from "../../src/common/logger.ts";

/** Writes `request` on a fresh socket and reads everything until the server closes it. */
function rawExchange(port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1", () => socket.write(request));
    let raw = "";
    socket.on("data", (c: Buffer) => (raw += c));
    socket.on("close", () => resolve(raw));
    socket.on("error", reject);
  });
}

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

  it("/readyz answers 200 while the store answers", async () => {
    const res = await fetch(`${server.url}/readyz`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { status: "ready" });
  });

  it("a request Node's HTTP parser rejects: 400 RD_ERR_BAD_REQUEST", async () => {
    const raw = await rawExchange(server.port, "GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n");
    const [head, body] = raw.split("\r\n\r\n");
    assert.match(head, /^HTTP\/1\.1 400 /);
    assertShape({ status: 400, body: JSON.parse(body), raw: body }, 400, "RD_ERR_BAD_REQUEST");
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

describe("error shape: a request that arrives while the server closes", () => {
  it("gets 503 RD_ERR_SHUTTING_DOWN with Retry-After, not Fastify's shape", async () => {
    const app = Fastify({ return503OnClosing: false, forceCloseConnections: "idle" });
    installErrorHandlers(app);
    refuseWhileClosing(app);
    app.get("/next", async () => ({ ok: true }));
    // close() holds in a preClose hook (as a drain does) until the request below is answered.
    let closingStarted: () => void = () => {};
    const started = new Promise<void>((resolve) => {
      closingStarted = resolve;
    });
    let finishClose: () => void = () => {};
    const held = new Promise<void>((resolve) => {
      finishClose = resolve;
    });
    app.addHook("preClose", async () => {
      closingStarted();
      await held;
    });
    await app.listen({ host: "127.0.0.1", port: 0 });
    const port = (app.server.address() as net.AddressInfo).port;
    const closed = app.close();
    await started;
    const raw = await rawExchange(port, "GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
    finishClose();
    await closed;
    assert.match(raw, /^HTTP\/1\.1 503 /, raw);
    assert.match(raw, /\r\nretry-after: 1\r\n/i);
    assert.match(raw, /\r\nconnection: close\r\n/i);
    const body = raw.slice(raw.indexOf("\r\n\r\n") + 4);
    assertShape({ status: 503, body: JSON.parse(body), raw: body }, 503, "RD_ERR_SHUTTING_DOWN");
  });
});
