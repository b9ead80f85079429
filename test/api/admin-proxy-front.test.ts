// The admin proxy answers on the raw server, ahead of Fastify (src/api/routes/admin-proxy.ts): what
// a caller sees is what the Fastify route gave, and every other request still reaches Fastify. Through
// a real server, agent and target on 127.0.0.1: the same headers in the same order and the same body
// as the Fastify route sent; the error shape, status and content type of Fastify's routes for the
// same refusal; a non-proxy route, an OPTIONS, `/proxy` without a slash and a malformed
// percent-encoding answered by Fastify; one log line and one metric per call; no store lookup per
// call for a remembered key, and a store outage on a key not remembered is 503 with Retry-After; 503
// RD_ERR_SHUTTING_DOWN while the app closes. Regressions of the Fastify route pinned here: a HEAD,
// and a 304 carrying Content-Length, got 502 (its body did not match the declared length); a runner
// id of 101-128 characters, which the tunnel accepts, got 414.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { pino } from "pino";
import type { AgentClient } from "../../src/agent/tunnel-client.ts";
import { type RunningServer, startServer } from "../../src/api/server.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { STORE_ERROR_CODES, StoreError } from "../../src/store/index.ts";
import { pollUntil, startAgent, startTarget, waitConnected } from "../helpers/tunnel-harness.ts";

const RUNNER = "front-one";
const LONG_RUNNER = `long-${"x".repeat(115)}`;

interface Answer {
  status: number;
  /** Header names in the order they were sent, with their values (Date's value blanked). */
  headers: string[];
  body: string;
}

/** Keeps connections alive, as most callers do, so the answers carry Node's keep-alive headers. */
const keepAlive = new http.Agent({ keepAlive: true });

function call(
  base: string,
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: string,
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${base}${path}`, { method, headers, agent: keepAlive }, (res) => {
      let text = "";
      res.setEncoding("latin1");
      res.on("data", (c: string) => {
        text += c;
      });
      res.on("end", () => {
        const raw = res.rawHeaders.map((v, i) =>
          i % 2 === 1 && /^date$/i.test(res.rawHeaders[i - 1]) ? "-" : v,
        );
        resolve({ status: res.statusCode ?? 0, headers: raw, body: text });
      });
    });
    req.on("error", reject);
    req.end(body);
  });
}

/** One raw exchange: writes `text` and reads until the server closes the connection. */
function rawExchange(port: number, text: string, then?: (socket: net.Socket) => void): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1", () => {
      socket.write(text);
      then?.(socket);
    });
    let raw = "";
    socket.on("data", (c: Buffer) => {
      raw += c.toString("latin1");
    });
    socket.on("close", () => resolve(raw));
    socket.on("error", reject);
  });
}

describe("the admin proxy ahead of Fastify", () => {
  let dir: string;
  let server: RunningServer;
  let target: Awaited<ReturnType<typeof startTarget>>;
  const agents: AgentClient[] = [];
  let admin: Record<string, string>;
  let userKey: string;
  const lines: Array<Record<string, unknown>> = [];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "revdial-front-"));
    const logger = pino(
      { level: "debug", base: undefined },
      new Writable({
        write(chunk: Buffer, _enc, cb) {
          for (const line of chunk.toString().split("\n")) if (line) lines.push(JSON.parse(line));
          cb();
        },
      }),
    );
    server = await startServer({ listen: "127.0.0.1:0", dataDir: dir, gracePeriodMs: 0, logger });
    admin = { authorization: `Bearer ${server.adminKey}` };
    userKey = (await server.auth.createUser({ name: "mallory" })).apiKey;
    target = await startTarget((req, res) => {
      req.resume();
      req.on("end", () => {
        if (req.url === "/no-content") return void res.writeHead(204).end();
        if (req.url === "/not-modified") return void res.writeHead(304, { "content-length": "1234" }).end();
        res.setHeader("x-echo-method", req.method ?? "");
        res.setHeader("x-echo-path", req.url ?? "");
        if (req.method === "HEAD") res.setHeader("content-length", "42");
        res.end();
      });
    });
    for (const runnerId of [RUNNER, LONG_RUNNER]) {
      agents.push(
        startAgent(server.url, runnerId, `127.0.0.1:${target.port}`, { token: server.adminKey ?? "" }),
      );
      await waitConnected(server.registry, runnerId);
    }
  });

  after(async () => {
    keepAlive.destroy();
    for (const agent of agents) await agent.close(100);
    await server?.close();
    await target?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const proxy = (path: string) => `/api/v1/revdial/${RUNNER}/proxy${path}`;

  it("answers with the Fastify route's headers, in its order, and the raw path and query", async () => {
    const got = await call(server.url, "GET", proxy("/a%2Fb/c?x=1&y=%20&z"), admin);
    assert.equal(got.status, 200);
    assert.deepEqual(got.headers, [
      "x-echo-method",
      "GET",
      "x-echo-path",
      "/a%2Fb/c?x=1&y=%20&z",
      "date",
      "-",
      "content-length",
      "0",
      // Fastify's default for a Buffer answer without a type: kept.
      "content-type",
      "application/octet-stream",
      "Connection",
      "keep-alive",
      "Keep-Alive",
      "timeout=72",
    ]);
    assert.equal(got.body, "");
    const encoded = await call(server.url, "GET", `/api/v1/revdial/front%2Done/proxy/x?q=%2D1`, admin);
    assert.equal(encoded.status, 200, "a percent-encoded runner id is decoded once");
    assert.equal(encoded.headers[3], "/x?q=%2D1");
  });

  it("a HEAD gets the target's status and Content-Length, no body (the Fastify route answered 502)", async () => {
    const got = await call(server.url, "HEAD", proxy("/head"), admin);
    assert.equal(got.status, 200);
    const at = got.headers.indexOf("content-length");
    assert.equal(got.headers[at + 1], "42");
    assert.equal(got.headers[got.headers.indexOf("x-echo-method") + 1], "HEAD");
    assert.equal(got.body, "");
  });

  it("answers without a body pass as they are: 204 without type or length, 304 with its length", async () => {
    const empty = await call(server.url, "GET", proxy("/no-content"), admin);
    assert.equal(empty.status, 204);
    assert.ok(!empty.headers.includes("content-type") && !empty.headers.includes("content-length"));
    const notModified = await call(server.url, "GET", proxy("/not-modified"), admin);
    assert.equal(notModified.status, 304, "the Fastify route answered 502");
    assert.equal(notModified.headers[notModified.headers.indexOf("content-length") + 1], "1234");
  });

  it("a runner id of 101-128 characters reaches its tunnel (Fastify's router answered 414)", async () => {
    const got = await call(server.url, "GET", `/api/v1/revdial/${LONG_RUNNER}/proxy/long`, admin);
    assert.equal(got.status, 200);
    assert.equal(got.headers[got.headers.indexOf("x-echo-path") + 1], "/long");
    const tooLong = await call(server.url, "GET", `/api/v1/revdial/${"y".repeat(129)}/proxy/x`, admin);
    assert.equal(tooLong.status, 400);
    assert.equal(tooLong.body, "invalid runner ID format");
  });

  it("every other request still goes to Fastify", async () => {
    const listed = await call(server.url, "GET", "/api/v1/revdial/connections", admin);
    assert.equal(listed.status, 200);
    assert.ok((JSON.parse(listed.body) as { runner_id: string }[]).some((c) => c.runner_id === RUNNER));
    const notFound = (method: string, path: string) => ({
      error: { code: "RD_ERR_NOT_FOUND", message: `no route ${method} ${path}` },
    });
    const options = await call(server.url, "OPTIONS", proxy("/x"), admin);
    assert.equal(options.status, 404);
    assert.deepEqual(JSON.parse(options.body), notFound("OPTIONS", proxy("/x")));
    const bare = `/api/v1/revdial/${RUNNER}/proxy`;
    assert.deepEqual(JSON.parse((await call(server.url, "GET", bare, admin)).body), notFound("GET", bare));
    const badUrl = await call(server.url, "GET", "/api/v1/revdial/%zz/proxy/x", admin);
    assert.equal(badUrl.status, 400);
    assert.equal(JSON.parse(badUrl.body).error.code, "RD_ERR_BAD_URL", "Fastify's router answers it");
    assert.equal((await call(server.url, "GET", "/healthz")).status, 200);
  });

  it("refuses the way Fastify's routes do: same status, same body, same type, for JSON-only callers", async () => {
    const json = { accept: "application/json" };
    const cases: Array<[string, Record<string, string>, number]> = [
      ["no key", json, 401],
      ["a wrong key", { ...json, authorization: "Bearer nope" }, 401],
      ["a user key", { ...json, "x-api-key": userKey }, 403],
    ];
    for (const [what, headers, status] of cases) {
      const raw = await call(server.url, "GET", proxy("/x"), headers);
      const fastify = await call(server.url, "GET", "/api/v1/revdial/connections", headers);
      assert.equal(raw.status, status, what);
      assert.equal(fastify.status, status, what);
      assert.equal(raw.body, fastify.body, what);
      const type = (a: Answer) => a.headers[a.headers.indexOf("content-type") + 1];
      assert.equal(type(raw), type(fastify), what);
      assert.equal(type(raw), "application/json; charset=utf-8");
    }
    // Other callers get the seed's plain text, from the same error.
    const text = await call(server.url, "GET", proxy("/x"), { "x-api-key": userKey });
    assert.equal(text.body, "admin access required");
  });

  it("logs one debug line per call, without the query, and counts it under the route", async () => {
    const from = lines.length;
    await call(server.url, "GET", proxy("/logged?secret=1"), admin);
    await pollUntil(() => lines.slice(from).some((l) => l.msg === "request"), "the request line");
    const line = lines.slice(from).find((l) => l.msg === "request") as Record<string, unknown>;
    assert.equal(line.level, 20);
    assert.deepEqual(Object.keys(line).sort(), [
      "duration_ms",
      "level",
      "method",
      "msg",
      "path",
      "runner_id",
      "status",
      "time",
    ]);
    assert.equal(line.path, proxy("/logged"));
    assert.equal(line.runner_id, RUNNER);
    assert.equal(line.status, 200);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(
      metrics,
      /^revdial_http_requests_total\{route="\/api\/v1\/revdial\/:runnerId\/proxy\/\*",status="2xx"\} [1-9]/m,
    );
    assert.match(metrics, /^revdial_http_requests_total\{route="\/healthz",status="2xx"\} [1-9]/m);
  });

  it("a remembered key costs no store lookup; a key the store must check during an outage gets 503", async () => {
    const { user } = await server.auth.createUser({ name: "ops", admin: true });
    const { apiKey } = await server.auth.createUserKey(user.id);
    const keys = server.store.apiKeys;
    const findByHash = keys.findByHash.bind(keys);
    let lookups = 0;
    keys.findByHash = (hash: string) => {
      lookups++;
      return findByHash(hash);
    };
    try {
      for (let i = 0; i < 30; i++) {
        assert.equal((await call(server.url, "GET", proxy(`/c${i}`), { "x-api-key": apiKey })).status, 200);
      }
      assert.equal(lookups, 1, "one lookup for 30 calls with the same key");
      keys.findByHash = async () => {
        throw new StoreError(STORE_ERROR_CODES.unavailable, "connect ECONNREFUSED 10.1.2.3:5432");
      };
      const fresh = (await server.auth.createUserKey(user.id)).apiKey;
      const outage = await call(server.url, "GET", proxy("/x"), {
        "x-api-key": fresh,
        accept: "application/json",
      });
      assert.equal(outage.status, 503);
      assert.equal(JSON.parse(outage.body).error.code, "RD_ERR_STORE_UNAVAILABLE");
      assert.equal(outage.headers[outage.headers.indexOf("retry-after") + 1], "5");
      assert.doesNotMatch(outage.body, /10\.1\.2\.3/);
    } finally {
      keys.findByHash = findByHash;
    }
  });
});

describe("the admin proxy while the app closes", () => {
  it("answers 503 RD_ERR_SHUTTING_DOWN with Retry-After and Connection: close", async () => {
    const dir = mkdtempSync(join(tmpdir(), "revdial-front-close-"));
    const server = await startServer({ listen: "127.0.0.1:0", dataDir: dir, logger: silentLogger() });
    const key = server.adminKey as string;
    try {
      // A request in progress keeps its connection open through the close; the proxy call is
      // pipelined behind it once the app is closing.
      const body = JSON.stringify({ name: "late" });
      const first =
        `POST /api/v1/users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\n` +
        `Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`;
      let exchange: Promise<string> | null = null;
      let socket: net.Socket | null = null;
      exchange = rawExchange(server.port, first, (s) => {
        socket = s;
      });
      await pollUntil(() => socket !== null, "the connection");
      await new Promise((r) => setTimeout(r, 50));
      const closed = server.close();
      await pollUntil(async () => {
        const res = await fetch(`${server.url}/healthz`).catch(() => null);
        return res === null || res.status === 503;
      }, "the app to be closing");
      (socket as unknown as net.Socket).write(
        `${body}GET /api/v1/revdial/anyone/proxy/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\n\r\n`,
      );
      const raw = await exchange;
      await closed;
      const second = raw.slice(raw.indexOf("HTTP/1.1", 1));
      assert.match(second, /^HTTP\/1\.1 503 /, raw);
      assert.match(second, /\r\nretry-after: 1\r\n/i);
      assert.match(second, /\r\nconnection: close\r\n/i);
      assert.match(second, /\r\n\r\nthe server is shutting down; retry$/);
    } finally {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
