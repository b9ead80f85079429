// The seed's hijacked v1 control connection (a plain GET answered 200, then the raw socket), told
// apart from a handshake a proxy stripped of its Upgrade header, which keeps its 426. Through the
// real API: the Go-like client in hijack mode registers and carries calls, is refused like any
// handshake without a good token, and the stripped v2 handshakes (ws and raw) still get 426
// RD_ERR_TUNNEL_UPGRADE_STRIPPED. On the bare tunnel server: a call that waits for the runner
// reaches a hijacked agent that reads its 200 late (the Go client drops what comes with the 200),
// a newer agent replaces the older one and its socket is closed, an idle hijacked agent outlives
// many dead-link timeouts (it has nothing to answer with), and server shutdown closes the link.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import type { IncomingMessage } from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type RunningServer, startServer } from "../../src/api/server.ts";
import { isHijackRequest } from "../../src/api/tunnel/legacy-hijack.ts";
import { silentLogger } from "../../src/common/logger.ts";
import {
  pollUntil,
  readAll,
  startTarget,
  startTunnelServer,
  TOKEN,
  waitConnected,
} from "../helpers/tunnel-harness.ts";
import { startGoClient } from "./fixtures/go-revdial-client.ts";

/** The request the hijack-era Go client writes (http.Request.Write), header for header. */
const GO_HEADERS = {
  host: "api:8080",
  "user-agent": "Go-http-client/1.1",
  authorization: "Bearer t",
  connection: "Upgrade",
};

function request(headers: Record<string, string>, url = "/api/v1/revdial?runnerid=wolf-a", method = "GET") {
  return { method, url, headers } as unknown as IncomingMessage;
}

describe("which plain GETs on the tunnel path are hijacked control connections", () => {
  test("the Go client's request is", () => {
    assert.equal(isHijackRequest(request(GO_HEADERS)), true);
    assert.equal(isHijackRequest(request({ ...GO_HEADERS, connection: "keep-alive, Upgrade" })), true);
  });

  test("a WebSocket handshake whose Upgrade a proxy stripped is not (it keeps Sec-WebSocket-*)", () => {
    const stripped = { host: "x", authorization: "Bearer t", "sec-websocket-version": "13" };
    const extras: Array<Record<string, string>> = [
      { "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==" },
      { "sec-websocket-protocol": "revdial.h2" },
      {},
    ];
    for (const extra of extras) {
      assert.equal(isHijackRequest(request({ ...stripped, ...extra, connection: "close" })), false);
      // A proxy that dropped only the Upgrade header and passed Connection on.
      assert.equal(isHijackRequest(request({ ...stripped, ...extra, connection: "Upgrade" })), false);
    }
  });

  test("a raw v2 handshake whose Upgrade was stripped is not; nor anything with Upgrade, a dialer or another method", () => {
    assert.equal(
      isHijackRequest(request({ host: "x", authorization: "Bearer t", connection: "close" })),
      false,
    );
    assert.equal(isHijackRequest(request({ host: "x", authorization: "Bearer t" })), false);
    assert.equal(isHijackRequest(request({ ...GO_HEADERS, connection: "Upgrade, revdial.h2" })), false);
    assert.equal(
      isHijackRequest(request({ ...GO_HEADERS, upgrade: "revdial.h2", connection: "close" })),
      false,
    );
    assert.equal(
      isHijackRequest(request(GO_HEADERS, `/api/v1/revdial?revdial.dialer=${"0".repeat(32)}&revdial.req=1`)),
      false,
    );
    assert.equal(isHijackRequest(request(GO_HEADERS, undefined, "POST")), false);
  });
});

/** One raw HTTP exchange: `head` written as is, the answer read until the server closes or `ms`. */
function rawExchange(port: number, head: string, ms = 2000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1", () => socket.write(head));
    let answer = "";
    socket.on("data", (c) => {
      answer += c.toString("latin1");
    });
    const timer = setTimeout(() => socket.destroy(), ms);
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(answer);
    });
    socket.on("error", reject);
  });
}

describe("through the API", () => {
  let dataDir: string;
  let server: RunningServer;
  let target: Awaited<ReturnType<typeof startTarget>>;
  let port: number;

  before(async () => {
    dataDir = mkdtempSync(join(tmpdir(), "revdial-hijack-"));
    server = await startServer({ listen: "127.0.0.1:0", dataDir, logger: silentLogger() });
    port = Number(new URL(server.url).port);
    target = await startTarget();
  });

  after(async () => {
    await server.close();
    await target.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  test("a hijacked control connection registers as v1 on `raw` and carries calls", async () => {
    const client = await startGoClient(
      server.url,
      "wolf-hijacked",
      server.adminKey as string,
      `127.0.0.1:${target.port}`,
      {
        hijack: true,
      },
    );
    try {
      await waitConnected(server.registry, "wolf-hijacked");
      const list = await fetch(`${server.url}/api/v1/revdial/connections`, {
        headers: { authorization: `Bearer ${server.adminKey}` },
      });
      const entry = ((await list.json()) as Array<Record<string, unknown>>).find(
        (c) => c.runner_id === "wolf-hijacked",
      );
      assert.equal(entry?.protocol, "v1");
      assert.equal(entry?.transport, "raw");
      for (const path of ["/one", "/two?x=1"]) {
        const res = await fetch(`${server.url}/api/v1/revdial/wolf-hijacked/proxy${path}`, {
          method: "POST",
          headers: { authorization: `Bearer ${server.adminKey}` },
          body: `body of ${path}`,
        });
        assert.equal(res.status, 200);
        assert.equal(res.headers.get("x-echo-path"), path);
        assert.equal(await res.text(), `body of ${path}`);
      }
      assert.ok(client.lines.some((l) => l.command === "conn-ready"));
    } finally {
      client.close();
    }
  });

  test("a hijack request without a valid token is refused like any handshake (401, marked)", async () => {
    const answer = await rawExchange(
      port,
      "GET /api/v1/revdial?runnerid=wolf-nokey HTTP/1.1\r\nHost: x\r\nUser-Agent: Go-http-client/1.1\r\n" +
        "Authorization: Bearer rd-not-a-real-key\r\nConnection: Upgrade\r\n\r\n",
    );
    assert.match(answer, /^HTTP\/1\.1 401 /);
    assert.match(answer, /\r\nRevdial-Handshake: refused\r\n/i);
    assert.equal(server.registry.isConnected("wolf-nokey"), false);
  });

  test("a stripped v2 WebSocket handshake still gets 426 RD_ERR_TUNNEL_UPGRADE_STRIPPED", async () => {
    // What nginx forwards of a WebSocket handshake without the documented Upgrade lines.
    const answer = await rawExchange(
      port,
      "GET /api/v1/revdial?runnerid=wolf-stripped HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" +
        `Authorization: Bearer ${server.adminKey}\r\nSec-WebSocket-Version: 13\r\n` +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: revdial.h2\r\n\r\n",
    );
    assert.match(answer, /^HTTP\/1\.1 426 /);
    assert.match(answer, /RD_ERR_TUNNEL_UPGRADE_STRIPPED/);
    assert.equal(server.registry.isConnected("wolf-stripped"), false);
  });

  test("a stripped raw v2 handshake (no Upgrade, Connection: close) still gets 426", async () => {
    const answer = await rawExchange(
      port,
      "GET /api/v1/revdial?runnerid=wolf-stripped-raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" +
        `Authorization: Bearer ${server.adminKey}\r\n\r\n`,
    );
    assert.match(answer, /^HTTP\/1\.1 426 /);
    assert.match(answer, /RD_ERR_TUNNEL_UPGRADE_STRIPPED/);
  });
});

describe("on the bare tunnel server", () => {
  let target: Awaited<ReturnType<typeof startTarget>>;
  let server: Awaited<ReturnType<typeof startTunnelServer>>;

  before(async () => {
    target = await startTarget();
    server = await startTunnelServer({
      timings: { pingIntervalMs: 100, deadLinkTimeoutMs: 300, callTimeoutMs: 3000 },
      registry: { gracePeriodMs: 5000 },
    });
  });

  after(async () => {
    await server.close();
    await target.close();
  });

  test("a call waiting for the runner reaches a hijacked agent that reads its 200 late", async () => {
    // The agent reads nothing for 50 ms after its request: the 200 and whatever follows it arrive in
    // one read, and the Go client drops what came with the 200. A conn-ready sent at once would be
    // lost and the call would time out; the server holds dials until the link has settled.
    server.registry.expect(["sandbox-late-reader"], Date.now() + 5000);
    const call = server.registry.request("sandbox-late-reader", {
      method: "GET",
      path: "/waited",
      timeoutMs: 3000,
    });
    const client = await startGoClient(server.url, "sandbox-late-reader", TOKEN, `127.0.0.1:${target.port}`, {
      hijack: true,
      readDelayMs: 50,
    });
    try {
      const res = await call;
      assert.equal(res.headers["x-echo-path"], "/waited");
      await readAll(res.body);
    } finally {
      client.close();
    }
  });

  test("an idle hijacked agent outlives many dead-link timeouts; keep-alive lines keep coming", async () => {
    const client = await startGoClient(server.url, "sandbox-idle-hj", TOKEN, `127.0.0.1:${target.port}`, {
      hijack: true,
    });
    try {
      await waitConnected(server.registry, "sandbox-idle-hj");
      const tunnel = server.registry.get("sandbox-idle-hj");
      // 10 keep-alives at 100 ms: more than three dead-link timeouts of 300 ms without a line.
      await pollUntil(
        () => client.lines.filter((l) => l.command === "keep-alive").length >= 10,
        "keep-alives",
      );
      assert.equal(server.registry.get("sandbox-idle-hj"), tunnel);
      const res = await server.registry.request("sandbox-idle-hj", { method: "GET", path: "/idle" });
      assert.equal(res.headers["x-echo-path"], "/idle");
      await readAll(res.body);
    } finally {
      client.close();
    }
  });

  test("a newer hijacked agent replaces the older one, whose socket the server closes", async () => {
    const older = await startGoClient(server.url, "sandbox-replaced-hj", TOKEN, `127.0.0.1:${target.port}`, {
      hijack: true,
    });
    await waitConnected(server.registry, "sandbox-replaced-hj");
    const first = server.registry.get("sandbox-replaced-hj");
    const newer = await startGoClient(server.url, "sandbox-replaced-hj", TOKEN, `127.0.0.1:${target.port}`, {
      hijack: true,
    });
    try {
      await older.closed;
      await pollUntil(() => {
        const live = server.registry.get("sandbox-replaced-hj");
        return live !== undefined && live !== first;
      }, "the newer tunnel live");
      const res = await server.registry.request("sandbox-replaced-hj", { method: "GET", path: "/newer" });
      assert.equal(res.headers["x-echo-path"], "/newer");
      await readAll(res.body);
    } finally {
      older.close();
      newer.close();
    }
  });

  test("closing the server closes a hijacked link", async () => {
    const own = await startTunnelServer();
    const client = await startGoClient(own.url, "sandbox-shutdown-hj", TOKEN, `127.0.0.1:${target.port}`, {
      hijack: true,
    });
    await waitConnected(own.registry, "sandbox-shutdown-hj");
    await own.registry.close(1000);
    await client.closed;
    await own.close();
  });
});
