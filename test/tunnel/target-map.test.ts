// Which targets an agent serves: the flag parser (host:port, [v6]:port, unix:///path), the
// allow-list built from --local/--target, and the agent's answers through a real tunnel: a named
// unix-socket or TCP target is served, a name not on the list gets 403, an unreachable one 502.

import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import { formatTargetAddress, parseTargetAddress, TargetMap } from "../../src/agent/target-map.ts";
import {
  listen,
  readAll,
  startAgent,
  startTarget,
  startTunnelServer,
  waitConnected,
} from "../helpers/tunnel-harness.ts";

const invalid = { code: "RD_ERR_INVALID_OPTION" };

describe("parseTargetAddress", () => {
  test("accepts host:port, [v6]:port and unix:///absolute/path", () => {
    assert.deepEqual(parseTargetAddress("127.0.0.1:8080"), { kind: "tcp", host: "127.0.0.1", port: 8080 });
    assert.deepEqual(parseTargetAddress("localhost:1"), { kind: "tcp", host: "localhost", port: 1 });
    assert.deepEqual(parseTargetAddress("desktop.internal:65535"), {
      kind: "tcp",
      host: "desktop.internal",
      port: 65535,
    });
    assert.deepEqual(parseTargetAddress("[::1]:9876"), { kind: "tcp", host: "::1", port: 9876 });
    assert.deepEqual(parseTargetAddress("unix:///run/desktop.sock"), {
      kind: "unix",
      path: "/run/desktop.sock",
    });
  });

  test("refuses anything else, naming the option", () => {
    for (const bad of [
      "",
      "localhost",
      ":8080",
      "host:",
      "host:0",
      "host:65536",
      "host:80x",
      "host:123456",
      "::1:80",
      "unix://relative.sock",
      "unix://",
      "http://127.0.0.1:80",
    ]) {
      assert.throws(() => parseTargetAddress(bad), { ...invalid, message: /invalid option target/ }, bad);
    }
  });

  test("formatTargetAddress is the inverse of parseTargetAddress", () => {
    for (const text of ["127.0.0.1:8080", "[::1]:9876", "unix:///run/desktop.sock"])
      assert.equal(formatTargetAddress(parseTargetAddress(text)), text);
  });
});

describe("TargetMap.fromFlags", () => {
  test("no flags: every name goes to 127.0.0.1:9876", () => {
    const map = TargetMap.fromFlags(undefined, []);
    assert.deepEqual(map.resolve("desktop"), { kind: "tcp", host: "127.0.0.1", port: 9876 });
    assert.deepEqual(map.resolve("anything"), { kind: "tcp", host: "127.0.0.1", port: 9876 });
    assert.deepEqual(map.resolve(undefined), { kind: "tcp", host: "127.0.0.1", port: 9876 });
  });

  test("--local alone maps every name to ADDR", () => {
    const map = TargetMap.fromFlags("unix:///tmp/x.sock", []);
    assert.deepEqual(map.resolve("desktop"), { kind: "unix", path: "/tmp/x.sock" });
    assert.deepEqual(map.resolve("other"), { kind: "unix", path: "/tmp/x.sock" });
    assert.equal(map.describe(), "*=unix:///tmp/x.sock");
  });

  test("--target builds a strict allow-list (names case-insensitive); --local then serves `desktop`", () => {
    const map = TargetMap.fromFlags("127.0.0.1:5000", ["api=127.0.0.1:6000", "Sock=unix:///tmp/s.sock"]);
    assert.deepEqual(map.resolve("api"), { kind: "tcp", host: "127.0.0.1", port: 6000 });
    assert.deepEqual(map.resolve("SOCK"), { kind: "unix", path: "/tmp/s.sock" });
    assert.deepEqual(map.resolve("desktop"), { kind: "tcp", host: "127.0.0.1", port: 5000 });
    assert.equal(map.resolve("secret"), null);
    assert.equal(map.resolve(undefined), null);
  });

  test("an explicit desktop target wins over --local", () => {
    const map = TargetMap.fromFlags("127.0.0.1:5000", ["desktop=127.0.0.1:7000"]);
    assert.deepEqual(map.resolve("desktop"), { kind: "tcp", host: "127.0.0.1", port: 7000 });
    assert.equal(map.resolve("other"), null);
  });

  test("malformed --target specs throw, naming the flag", () => {
    for (const bad of ["noequals", "=127.0.0.1:80"])
      assert.throws(() => TargetMap.fromFlags(undefined, [bad]), { ...invalid, message: /--target/ }, bad);
    assert.throws(() => TargetMap.fromFlags(undefined, ["api=nowhere"]), invalid);
    assert.throws(() => TargetMap.fromFlags("nowhere", []), invalid);
  });
});

/** A port that nothing listens on (bound, then released). */
async function closedPort(): Promise<number> {
  const l = await listen(http.createServer());
  await l.close();
  return l.port;
}

test("through a tunnel: unix-socket and TCP targets served, others 403, unreachable 502", async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), "revdial-target-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const socketPath = path.join(dir, "desktop.sock");
  const unixTarget = http.createServer((req, res) => res.end(`unix ${req.url}`));
  await new Promise<void>((resolve) => unixTarget.listen(socketPath, resolve));
  t.after(() => new Promise<void>((resolve) => unixTarget.close(() => resolve())));
  const tcpTarget = await startTarget((req, res) => res.end(`tcp ${req.url}`));
  t.after(() => tcpTarget.close());
  const server = await startTunnelServer();
  t.after(() => server.close());
  const dead = await closedPort();
  const agent = startAgent(server.url, "sandbox-targets", "unused:1", {
    targets: TargetMap.fromFlags(`unix://${socketPath}`, [
      `api=127.0.0.1:${tcpTarget.port}`,
      `down=127.0.0.1:${dead}`,
    ]),
  });
  t.after(() => agent.destroy());
  await waitConnected(server.registry, "sandbox-targets");

  const call = async (target: string | undefined, p: string) => {
    const res = await server.registry.request("sandbox-targets", { method: "GET", path: p, target });
    return { status: res.status, text: (await readAll(res.body)).toString() };
  };
  assert.deepEqual(await call(undefined, "/shot"), { status: 200, text: "unix /shot" });
  assert.deepEqual(await call("desktop", "/shot2"), { status: 200, text: "unix /shot2" });
  assert.deepEqual(await call("api", "/v1"), { status: 200, text: "tcp /v1" });
  assert.deepEqual(await call("secret", "/"), {
    status: 403,
    text: 'target "secret" is not allowed by this agent',
  });
  const down = await call("down", "/");
  assert.equal(down.status, 502);
  assert.match(down.text, new RegExp(`^target 127\\.0\\.0\\.1:${dead} unreachable: .*ECONNREFUSED`));
});

test("--local pointing at nothing: every call gets 502 from the agent", async (t) => {
  const server = await startTunnelServer();
  t.after(() => server.close());
  const agent = startAgent(server.url, "sandbox-nothing", `127.0.0.1:${await closedPort()}`);
  t.after(() => agent.destroy());
  await waitConnected(server.registry, "sandbox-nothing");
  const res = await server.registry.request("sandbox-nothing", { method: "POST", path: "/x", body: "data" });
  assert.equal(res.status, 502);
  assert.equal(res.headers["content-type"], "text/plain; charset=utf-8");
  assert.match((await readAll(res.body)).toString(), /unreachable/);
});
