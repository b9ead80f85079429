// When a reverse proxy in front of the server strips the Upgrade and Connection headers, the server
// sees a plain GET and answers it (200, 400, 404, or the proxy answers 502). The seed's agent logged
// an unexplained failure; now its log says the answer came without an upgrade and that a proxy
// probably strips the Upgrade headers. The tunnel endpoint's own refusals (marked with
// `Revdial-Handshake: refused`) are still reported as refusals.

import assert from "node:assert/strict";
import http from "node:http";
import { test } from "node:test";
import { classifyUpgradeAnswer } from "../../src/agent/tunnel-client.ts";
import {
  captureLogger,
  listen,
  pollUntil,
  startAgent,
  startTunnelServer,
  TEST_TRANSPORT,
} from "../helpers/tunnel-harness.ts";

test("classifyUpgradeAnswer: plain answers mean a proxy stripped the upgrade; marked ones are refusals", () => {
  for (const status of [200, 400, 404, 502]) {
    const err = classifyUpgradeAnswer(status, { "content-type": "text/html" }, "<html>nope</html>");
    assert.equal(err.code, "RD_ERR_TUNNEL_NOT_UPGRADED");
    assert.match(err.message, new RegExp(`^the server answered ${status} without upgrading: `));
    assert.match(err.message, /strips the Upgrade and Connection headers/);
  }
  const marked = classifyUpgradeAnswer(
    401,
    { "revdial-handshake": "refused" },
    '{"error":{"code":"RD_ERR_AUTH_REQUIRED","message":"missing or invalid token"}}',
  );
  assert.equal(marked.code, "RD_ERR_TUNNEL_HANDSHAKE_REJECTED");
  assert.match(marked.message, /\(401\): missing or invalid token/);
  // An older server's refusal (no header, but its JSON error) is a refusal too.
  const older = classifyUpgradeAnswer(
    429,
    { "retry-after": "7" },
    '{"error":{"code":"RD_ERR_TUNNEL_LIMIT","message":"too many tunnels on this server"}}',
  );
  assert.equal(older.code, "RD_ERR_TUNNEL_HANDSHAKE_REJECTED");
  assert.equal(older.retryAfterMs, 7000);
  // A JSON 404 of the API's router is still "not upgraded".
  const routed = classifyUpgradeAnswer(404, {}, '{"error":{"code":"RD_ERR_NOT_FOUND","message":"no route"}}');
  assert.equal(routed.code, "RD_ERR_TUNNEL_NOT_UPGRADED");
});

test("behind a proxy that strips Upgrade/Connection, the agent's log names the cause", async (t) => {
  const backend = await startTunnelServer();
  t.after(() => backend.close());
  // A proxy that forwards every request as a plain HTTP request, without the upgrade headers.
  const proxy = await listen(
    http.createServer((req, res) => {
      const headers = { ...req.headers };
      delete headers.upgrade;
      delete headers.connection;
      const upstream = http.request(
        `${backend.url}${req.url}`,
        { method: req.method, headers, agent: false },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        },
      );
      upstream.on("error", () => res.writeHead(502).end());
      req.pipe(upstream);
    }),
  );
  // The ws client sends `Connection: Upgrade`; Node's server hands such requests to 'upgrade'
  // listeners only, so route them through the same stripping forwarder.
  proxy.server.on("upgrade", (req, socket) => {
    const headers = { ...req.headers };
    delete headers.upgrade;
    delete headers.connection;
    const upstream = http.request(
      `${backend.url}${req.url}`,
      { method: req.method, headers, agent: false },
      (answer) => {
        const lines = [`HTTP/1.1 ${answer.statusCode} ${answer.statusMessage}`, "Connection: close"];
        for (const [k, v] of Object.entries(answer.headers)) if (k !== "connection") lines.push(`${k}: ${v}`);
        socket.write(`${lines.join("\r\n")}\r\n\r\n`);
        answer.pipe(socket);
      },
    );
    upstream.on("error", () => socket.destroy());
    upstream.end();
  });
  t.after(() => proxy.close());

  const capture = captureLogger();
  const agent = startAgent(proxy.url, "sandbox-behind-proxy", "127.0.0.1:1", { logger: capture.logger });
  t.after(() => agent.destroy());
  const failure = () => capture.lines.find((l) => l.msg === "tunnel connect failed");
  await pollUntil(() => failure() !== undefined, "the agent's failed connect");
  assert.equal(failure()?.code, "RD_ERR_TUNNEL_NOT_UPGRADED");
  assert.equal(failure()?.status, 404);
  assert.match(String(failure()?.err), /answered 404 without upgrading: a proxy .* strips the Upgrade/);
  assert.equal(backend.registry.size, 0);
  t.diagnostic(`transport ${TEST_TRANSPORT}: ${failure()?.err}`);
});
