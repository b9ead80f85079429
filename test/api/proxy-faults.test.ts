// The admin proxy's call path, from the caller's side, through a real server, a real agent and a
// real target that records every request it sees and whether its body completed: a body the caller
// cuts off (chunked without its last chunk, or shorter than its Content-Length) reaches the target
// as an aborted request, never a complete one; a request the API refuses (400, 401, 403, 413, a
// caller gone before the call) never reaches it; percent-encoded runner ids route or get 400 and
// the target's path is exactly what follows `/proxy`; hop-by-hop headers, those named in
// Connection, Proxy-Authorization and the caller's API key never cross, either way. Descriptors and
// open tunnel streams return to their baseline after each fault.

import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readlinkSync, rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import type { AgentClient } from "../../src/agent/tunnel-client.ts";
import { type RunningServer, startServer } from "../../src/api/server.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { pollUntil, startAgent, startTarget, waitConnected } from "../helpers/tunnel-harness.ts";

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  bytes: number;
  outcome: "pending" | "complete" | "aborted";
  /** Whether the target's answer was sent, or the call was cancelled before it. */
  answer?: "sent" | "cancelled";
}

const RUNNER = "wolf-proxy-faults";
const seen: Seen[] = [];
let dataDir: string;
let server: RunningServer;
let target: Awaited<ReturnType<typeof startTarget>>;
let agent: AgentClient;
let adminKey: string;
let userKey: string;

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "revdial-proxy-faults-"));
  server = await startServer({
    listen: "127.0.0.1:0",
    dataDir,
    runnerToken: "test-runner-token",
    gracePeriodMs: 200,
    bodyLimit: 1024 * 1024,
    logger: silentLogger(),
  });
  adminKey = server.adminKey ?? "";
  userKey = (await server.auth.createUser({ name: "mallory" })).apiKey;
  target = await startTarget((req, res) => {
    const s: Seen = {
      method: req.method ?? "",
      url: req.url ?? "",
      headers: req.headers,
      bytes: 0,
      outcome: "pending",
    };
    seen.push(s);
    req.on("data", (c: Buffer) => {
      s.bytes += c.length;
    });
    res.once("close", () => {
      s.answer = res.writableFinished ? "sent" : "cancelled";
    });
    req.on("end", () => {
      s.outcome = "complete";
      if (req.url?.startsWith("/hang")) return; // never answers: only a cancel ends it
      // The answer carries hop-by-hop headers of its own, which must not reach the caller.
      res.writeHead(200, {
        // `close`: no pooled socket outlives a call, so socket counts have a fixed baseline.
        connection: "close, x-target-hop, keep-alive",
        "x-target-hop": "secret",
        "keep-alive": "timeout=5, max=77",
        "proxy-authenticate": "Basic",
        "x-target-end": "kept",
      });
      res.end("ok");
    });
    req.on("close", () => {
      if (s.outcome === "pending") s.outcome = "aborted";
    });
  });
  // The runner token registers only hosts an admin created.
  await server.store.wolfInstances.create({ id: RUNNER.slice("wolf-".length), name: "proxy faults" });
  agent = startAgent(server.url, RUNNER, `127.0.0.1:${target.port}`);
  await waitConnected(server.registry, RUNNER);
  // One call first, so that the agent's pooled socket to the target is part of every baseline.
  await (
    await fetch(`${server.url}/api/v1/revdial/${RUNNER}/proxy/warm-up`, {
      headers: { authorization: `Bearer ${adminKey}` },
    })
  ).text();
});

after(async () => {
  await agent.close(100);
  await server.close();
  await target.close();
  rmSync(dataDir, { recursive: true, force: true });
});

/** Open sockets of this process (server, agent, target and callers; the store's files aside). */
function fds(): number {
  let sockets = 0;
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).startsWith("socket:")) sockets++;
    } catch {
      // Closed while listing.
    }
  }
  return sockets;
}
const openStreams = () => server.registry.list().reduce((n, t) => n + t.active_streams, 0);

/** Descriptors and streams as they were before a fault, once every party has let go. */
async function backToBaseline(base: { fds: number; streams: number }): Promise<void> {
  await pollUntil(() => openStreams() === base.streams, "open tunnel streams back to baseline");
  await pollUntil(() => fds() <= base.fds, "socket descriptors back to baseline");
}

function rawSend(text: string): net.Socket {
  const u = new URL(server.url);
  const socket = net.connect(Number(u.port), u.hostname);
  socket.on("error", () => {});
  socket.write(text);
  return socket;
}

const head = (path: string, extra: string) =>
  `POST /api/v1/revdial/${RUNNER}/proxy${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${adminKey}\r\n${extra}\r\n`;

for (const [name, framing, part] of [
  ["a chunked upload without its last chunk", "Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n"],
  ["a body shorter than its Content-Length", "Content-Length: 1000\r\n", "hello"],
] as const) {
  test(`${name}, cut off by the caller, reaches the target aborted, never complete`, async () => {
    const base = { fds: fds(), streams: openStreams() };
    const index = seen.length;
    const socket = rawSend(head(`/upload-${seen.length}`, framing) + part);
    await pollUntil(
      () => seen.length > index && seen[index].bytes >= 5,
      "the target reading the first bytes",
    );
    socket.destroy();
    await pollUntil(() => seen[index].outcome !== "pending", "the target's request to settle");
    assert.equal(seen[index].outcome, "aborted");
    assert.equal(seen[index].bytes, 5);
    await backToBaseline(base);
  });
}

test("a cut-off body after the target already answered still resets the stream", async () => {
  // The target answers at once and keeps reading: the call has its response headers when the
  // caller dies, so only the body's reset can tell the target.
  const early = await startTarget((req, res) => {
    const s: Seen = {
      method: req.method ?? "",
      url: req.url ?? "",
      headers: req.headers,
      bytes: 0,
      outcome: "pending",
    };
    seen.push(s);
    res.writeHead(200, { "content-type": "text/plain" });
    res.write("streaming");
    req.on("data", (c: Buffer) => {
      s.bytes += c.length;
    });
    req.on("end", () => {
      s.outcome = "complete";
      res.end();
    });
    req.on("close", () => {
      if (s.outcome === "pending") s.outcome = "aborted";
    });
  });
  // Not a host (an admin's runner id of its own): nothing else calls through this tunnel.
  const earlyAgent = startAgent(server.url, "early-answer", `127.0.0.1:${early.port}`, { token: adminKey });
  try {
    await waitConnected(server.registry, "early-answer");
    const base = { fds: fds(), streams: openStreams() };
    const index = seen.length;
    const socket = rawSend(
      `POST /api/v1/revdial/early-answer/proxy/up HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${adminKey}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n`,
    );
    let answer = "";
    socket.on("data", (c: Buffer) => {
      answer += c.toString("latin1");
    });
    const upload = () => seen.slice(index).find((s) => s.url === "/up");
    await pollUntil(() => answer.includes("streaming") && (upload()?.bytes ?? 0) >= 5, "the answer to start");
    socket.destroy();
    await pollUntil(() => upload()?.outcome !== "pending", "the target's request to settle");
    assert.equal(upload()?.outcome, "aborted");
    await backToBaseline(base);
  } finally {
    await earlyAgent.close(100);
    await early.close();
  }
});

/** One request with node:http, its status (or -1 when the connection failed). */
function send(path: string, headers: Record<string, string>, body?: Buffer | string): Promise<number> {
  return new Promise((resolve) => {
    const req = http.request(`${server.url}${path}`, { method: "POST", headers, agent: false });
    req.on("response", (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on("error", () => resolve(-1));
    if (body !== undefined) req.end(body);
    else req.end();
  });
}

test("a request the API refuses never reaches the agent", async () => {
  const base = { fds: fds(), streams: openStreams() };
  const before = seen.length;
  const admin = { authorization: `Bearer ${adminKey}` };
  const cases: Array<[string, string, Record<string, string>, number]> = [
    ["bad runner id", "/api/v1/revdial/bad%20id/proxy/x", admin, 400],
    ["runner id with an encoded slash", `/api/v1/revdial/wolf%2F${RUNNER}/proxy/x`, admin, 400],
    ["doubly encoded runner id", "/api/v1/revdial/wolf%252Dproxy-faults/proxy/x", admin, 400],
    ["malformed percent-encoding", "/api/v1/revdial/%zz/proxy/x", admin, 400],
    ["no key", `/api/v1/revdial/${RUNNER}/proxy/x`, {}, 401],
    ["a wrong key", `/api/v1/revdial/${RUNNER}/proxy/x`, { authorization: "Bearer nope" }, 401],
    ["a user key", `/api/v1/revdial/${RUNNER}/proxy/x`, { "x-api-key": userKey }, 403],
  ];
  for (const [what, path, headers, status] of cases) {
    assert.equal(await send(path, headers, "a body"), status, what);
  }
  // Declared too large: refused on the headers, the body never read.
  const tooLarge = await new Promise<number>((resolve) => {
    const req = http.request(`${server.url}/api/v1/revdial/${RUNNER}/proxy/x`, {
      method: "POST",
      headers: { ...admin, "content-length": String(2 * 1024 * 1024) },
      agent: false,
    });
    req.on("response", (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
      req.destroy();
    });
    req.on("error", () => resolve(-1));
    req.write(Buffer.alloc(1000));
  });
  assert.equal(tooLarge, 413);
  // A malformed chunk: Node refuses it with 400 before or while the route runs.
  const socket = rawSend(`${head("/bad-chunk", "Transfer-Encoding: chunked\r\n")}zz\r\nhello\r\n`);
  const answer = await new Promise<string>((resolve) => {
    let text = "";
    socket.on("data", (c: Buffer) => {
      text += c.toString("latin1");
    });
    socket.on("close", () => resolve(text));
  });
  assert.match(answer, /^HTTP\/1\.1 400 /);
  // The refusals above were all answered; a request that was forwarded would be seen by now, but a
  // last good call through the same tunnel proves the target is still listening and in order.
  assert.equal(await send(`/api/v1/revdial/${RUNNER}/proxy/marker`, admin, "m"), 200);
  assert.deepEqual(
    seen.slice(before).map((s) => s.url),
    ["/marker"],
    "only the accepted call reached the target",
  );
  await backToBaseline(base);
});

test("percent-encoded runner ids route once decoded; the target's path is exactly what follows /proxy", async () => {
  const before = seen.length;
  const admin = { authorization: `Bearer ${adminKey}` };
  const encoded = RUNNER.replace(/-/g, "%2D");
  assert.equal(await send(`/api/v1/revdial/${encoded}/proxy/a%2Fb/c?q=%2D1&x`, admin, "x"), 200);
  assert.equal(await send(`/api/v1/revdial/${RUNNER}/proxy/${RUNNER}/proxy/z`, admin, "x"), 200);
  assert.deepEqual(
    seen.slice(before).map((s) => s.url),
    ["/a%2Fb/c?q=%2D1&x", `/${RUNNER}/proxy/z`],
  );
  for (const s of seen.slice(before, before + 1)) {
    assert.ok(!s.url.includes("proxy-faults"), `the runner id stays out of the target's path: ${s.url}`);
  }
});

test("hop-by-hop headers, those named in Connection, and credentials never cross, either way", async () => {
  const before = seen.length;
  const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
    const req = http.request(`${server.url}/api/v1/revdial/${RUNNER}/proxy/headers`, {
      method: "POST",
      agent: false,
      headers: {
        authorization: `Bearer ${adminKey}`,
        connection: "keep-alive, X-Hop-Secret",
        "x-hop-secret": "must-not-cross",
        "keep-alive": "timeout=5",
        "proxy-authorization": "Basic c2VjcmV0",
        "proxy-connection": "keep-alive",
        te: "trailers",
        trailer: "x-later",
        "x-end-to-end": "kept",
        "content-type": "text/plain",
      },
    });
    req.on("response", resolve);
    req.on("error", reject);
    req.end("body");
  });
  res.resume();
  const got = seen[before].headers;
  for (const name of [
    "authorization",
    "x-api-key",
    "x-hop-secret",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "revdial-body-end",
  ]) {
    assert.equal(got[name], undefined, `${name} reached the target`);
  }
  assert.equal(got["x-end-to-end"], "kept");
  assert.equal(got["content-type"], "text/plain");
  assert.equal(res.headers["x-target-hop"], undefined, "a header the target named in Connection came back");
  assert.equal(res.headers["proxy-authenticate"], undefined);
  assert.notEqual(res.headers["keep-alive"], "timeout=5, max=77");
  assert.equal(res.headers["x-target-end"], "kept");
});

test("a caller gone before the call starts never reaches the target as a complete request", async () => {
  const before = seen.length;
  // Headers and part of a body, then gone at once: authentication is still running when it closes.
  for (let i = 0; i < 5; i++) {
    rawSend(`${head(`/gone-${i}`, "Content-Length: 100\r\n")}x`).destroy();
  }
  assert.equal(
    await send(`/api/v1/revdial/${RUNNER}/proxy/after-gone`, { authorization: `Bearer ${adminKey}` }, "m"),
    200,
  );
  const reached = seen.slice(before).filter((s) => s.url.startsWith("/gone-"));
  for (const s of reached) assert.equal(s.outcome === "complete", false, `${s.url} completed`);
});

test("a caller gone before the answer cancels the call at the target, body or none", async () => {
  const base = { fds: fds(), streams: openStreams() };
  const index = seen.length;
  const socket = rawSend(
    `GET /api/v1/revdial/${RUNNER}/proxy/hang HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${adminKey}\r\n\r\n`,
  );
  await pollUntil(() => seen[index]?.outcome === "complete", "the target to have the request");
  socket.destroy();
  // Well within the call deadline (15 s): the cancel comes from the caller leaving, not the clock.
  await pollUntil(() => seen[index].answer !== undefined, "the target's call to end");
  assert.equal(seen[index].answer, "cancelled");
  await backToBaseline(base);
});
