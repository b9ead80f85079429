// The legacy v1 protocol, served so that the seed's Go agents keep working: a client that behaves
// like the Go revdial-client registers, and calls reach its local address one data connection
// each, without crossing, with deadlines, and with clear errors. Every test runs on both control
// connections the Go client has had: a WebSocket, and a plain GET answered 200 and hijacked.

import assert from "node:assert/strict";
import http from "node:http";
import { after, before, describe, test } from "node:test";
import { hasCode } from "../../src/common/errors.ts";
import { readAll, startTarget, startTunnelServer, TOKEN, waitConnected } from "../helpers/tunnel-harness.ts";
import { type GoClient, startGoClient } from "./fixtures/go-revdial-client.ts";

for (const mode of ["ws", "hijack"] as const) {
  describe(`v1 on a ${mode === "ws" ? "WebSocket" : "hijacked GET"} control connection`, () => {
    const hijack = mode === "hijack";
    const main = `sandbox-legacy-${mode}`;
    let target: Awaited<ReturnType<typeof startTarget>>;
    let server: Awaited<ReturnType<typeof startTunnelServer>>;
    let client: GoClient;

    before(async () => {
      target = await startTarget();
      server = await startTunnelServer({ timings: { callTimeoutMs: 3000 } });
      client = await startGoClient(server.url, main, TOKEN, `127.0.0.1:${target.port}`, { hijack });
      await waitConnected(server.registry, main);
    });

    after(async () => {
      client.close();
      await server.close();
      await target.close();
    });

    test("a v1 agent registers: keep-alive at once, listed as protocol v1 on its transport", async () => {
      const stats = server.registry.list().find((s) => s.runner_id === main);
      assert.equal(stats?.protocol, "v1");
      assert.equal(stats?.transport, hijack ? "raw" : "ws");
      // On a hijacked link the opening keep-alive may arrive with the 200, where the Go client
      // drops it (legacy-hijack.ts); the WebSocket client reads it first.
      if (!hijack) assert.deepEqual(client.lines[0], { command: "keep-alive" });
    });

    test("calls reach the v1 agent's local address, bodies intact", async () => {
      const body = Buffer.alloc(2 * 1024 * 1024, 9);
      const res = await server.registry.request(main, { method: "POST", path: "/up?x=1", body });
      assert.equal(res.status, 200);
      assert.equal(res.headers["x-echo-path"], "/up?x=1");
      assert.deepEqual(await readAll(res.body), body);
      const ready = client.lines.filter((l) => l.command === "conn-ready");
      assert.match(
        ready.at(-1)?.connPath ?? "",
        /^\/revdial\?revdial\.dialer=[0-9a-f]{32}&revdial\.req=[0-9a-f]{32}$/,
      );
    });

    test("50 concurrent calls, each its own data connection: no crossed answers", async () => {
      const answers = await Promise.all(
        Array.from({ length: 50 }, async (_, i) => {
          const res = await server.registry.request(main, { method: "GET", path: `/call-${i}` });
          await readAll(res.body);
          return res.headers["x-echo-path"];
        }),
      );
      assert.deepEqual(
        answers,
        Array.from({ length: 50 }, (_, i) => `/call-${i}`),
      );
    });

    test("a data connection for an unknown dialer gets 500 `unknown dialer`", async () => {
      const res = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = http.request(
          `${server.url}/api/v1/revdial?revdial.dialer=${"0".repeat(32)}&revdial.req=${"1".repeat(32)}`,
          {
            headers: {
              authorization: `Bearer ${TOKEN}`,
              connection: "Upgrade",
              upgrade: "websocket",
              "sec-websocket-version": "13",
              "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
          },
        );
        req.on("response", async (r) =>
          resolve({ status: r.statusCode ?? 0, body: (await readAll(r)).toString() }),
        );
        req.on("error", reject);
        req.end();
      });
      assert.equal(res.status, 500);
      assert.equal(JSON.parse(res.body).error.message, "unknown dialer");
    });

    test("a v1 agent that cannot reach its local address fails the call with its reason, not a hang", async () => {
      const id = `sandbox-legacy-broken-${mode}`;
      const broken = await startGoClient(server.url, id, TOKEN, "127.0.0.1:1", { hijack });
      try {
        await waitConnected(server.registry, id);
        const started = Date.now();
        await assert.rejects(
          server.registry.request(id, { method: "GET", path: "/" }),
          (err) =>
            hasCode(err, "RD_ERR_TUNNEL_STREAM_FAILED") &&
            /could not pick up the dial: .*ECONNREFUSED/.test(err.message),
        );
        assert.ok(Date.now() - started < 2000);
      } finally {
        broken.close();
      }
    });

    test("a control line that is not JSON closes that v1 tunnel only", async () => {
      const id = `sandbox-legacy-bad-${mode}`;
      const bad = await startGoClient(server.url, id, TOKEN, `127.0.0.1:${target.port}`, { hijack });
      await waitConnected(server.registry, id);
      bad.sendRaw(Buffer.from("this is not json\n"));
      await bad.closed;
      assert.equal(server.registry.isConnected(id), false);
      const res = await server.registry.request(main, { method: "GET", path: "/still" });
      assert.equal(res.headers["x-echo-path"], "/still");
      await readAll(res.body);
    });
  });
}
