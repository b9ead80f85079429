// Which protocol an agent ends up speaking. A v3 agent (the default) offers `revdial.mux,
// revdial.h2` on ws; a server older than v3 picks `revdial.h2`, and the agent speaks v2 from then on
// (docs/protocol.md): it connects, calls work, and when it reconnects it offers v2 alone. On raw
// there is no offer to choose from: a v3 agent cannot reach an older server, `protocol: "v2"` does.
// Against today's server, on both transports, a v2 agent gets v2 (`h2`) and a v3 agent v3 (`mux`).
//
// The older server is built here, as the endpoint was before v3 (TunnelEndpoint has no option to
// refuse v3): the `ws` library answers the upgrade with the v2 subprotocol, `Upgrade: revdial.h2`
// gets the raw link, and either runs H2Tunnel under a TunnelRegistry.

import assert from "node:assert/strict";
import http from "node:http";
import type { Socket } from "node:net";
import { after, before, test } from "node:test";
import { WebSocketServer } from "ws";
import { TargetMap } from "../../src/agent/target-map.ts";
import type { AgentClient } from "../../src/agent/tunnel-client.ts";
import { H2Tunnel } from "../../src/api/tunnel/h2-tunnel.ts";
import { TunnelRegistry } from "../../src/api/tunnel/tunnel-registry.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { RAW_UPGRADE, SUBPROTOCOL_H2 } from "../../src/tunnel/constants.ts";
import { DEFAULT_TIMINGS } from "../../src/tunnel/tunnel.ts";
import { RawLink, WsLink } from "../../src/tunnel/tunnel-link.ts";
import { WebSocketStream } from "../../src/tunnel/ws-stream.ts";
import {
  type Listening,
  listen,
  pollUntil,
  readAll,
  startAgent,
  startTarget,
  startTunnelServer,
  TOKEN,
  type TunnelServer,
  waitAgentState,
  waitConnected,
} from "../helpers/tunnel-harness.ts";

interface OldServer extends Listening {
  registry: TunnelRegistry;
  /** Each upgrade request as it came: `ws: <offered subprotocols>` or `raw: <Upgrade>`. */
  handshakes: string[];
}

/** A tunnel server as it was before v3: v2 only, on both transports. */
async function startOldServer(): Promise<OldServer> {
  const logger = silentLogger();
  const registry = new TunnelRegistry({ logger });
  const timings = { ...DEFAULT_TIMINGS };
  const wss = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    clientTracking: false,
    handleProtocols: (offered) => (offered.has(SUBPROTOCOL_H2) ? SUBPROTOCOL_H2 : false),
  });
  const handshakes: string[] = [];
  const server = http.createServer((_req, res) => res.writeHead(404).end());
  server.on("upgrade", (req, socket, head) => {
    const runnerId = new URL(req.url ?? "/", "http://x").searchParams.get("runnerid") ?? "";
    const parts = { runnerId, remoteAddress: "old", logger, timings };
    const upgrade = String(req.headers.upgrade ?? "").toLowerCase();
    if (req.headers.authorization !== `Bearer ${TOKEN}`) return void socket.destroy();
    if (upgrade === "websocket") {
      handshakes.push(`ws: ${req.headers["sec-websocket-protocol"] ?? ""}`);
      wss.handleUpgrade(req, socket, head, (ws) => {
        if (ws.protocol !== SUBPROTOCOL_H2) return void ws.close(1002, "subprotocol revdial.h2 required");
        registry.register(new H2Tunnel({ link: new WsLink(new WebSocketStream(ws)), ...parts }));
      });
      return;
    }
    handshakes.push(`raw: ${upgrade}`);
    if (upgrade !== RAW_UPGRADE) {
      // What the old endpoint did with any other upgrade: ws refused it (400, no Upgrade).
      wss.handleUpgrade(req, socket, head, () => {});
      return;
    }
    const s = socket as Socket;
    s.write(
      `HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${RAW_UPGRADE}\r\n\r\n`,
      () => {
        if (head.length > 0) s.unshift(head);
        registry.register(new H2Tunnel({ link: new RawLink(s), ...parts }));
      },
    );
  });
  const l = await listen(server);
  return {
    ...l,
    registry,
    handshakes,
    close: async () => {
      registry.destroy();
      wss.close();
      await l.close();
    },
  };
}

let target: Listening;
let old: OldServer;
let today: TunnelServer;
before(async () => {
  target = await startTarget();
  old = await startOldServer();
  today = await startTunnelServer();
});
after(async () => {
  await old.close();
  await today.close();
  await target.close();
});

let seq = 0;
function agentOn(
  url: string,
  extra: Parameters<typeof startAgent>[3],
): { agent: AgentClient; runner: string } {
  const runner = `sandbox-fallback-${++seq}`;
  const agent = startAgent(url, runner, `127.0.0.1:${target.port}`, extra);
  return { agent, runner };
}

async function callsWork(registry: TunnelRegistry, runner: string): Promise<void> {
  const get = await registry.request(runner, { method: "GET", path: "/get?x=1", timeoutMs: 5000 });
  assert.equal(get.status, 200);
  assert.equal(get.headers["x-echo-path"], "/get?x=1");
  await readAll(get.body);
  const post = await registry.request(runner, {
    method: "POST",
    path: "/post",
    body: "payload",
    timeoutMs: 5000,
  });
  assert.equal((await readAll(post.body)).toString(), "payload");
}

test("a v3 agent whose server answers its ws offer with revdial.h2 connects on v2, calls work, and it reconnects on v2 alone", async (t) => {
  const { agent, runner } = agentOn(old.url, { transport: "ws", protocol: "v3" });
  t.after(() => agent.destroy());
  const from = old.handshakes.length;
  await waitAgentState(agent, "connected");
  await waitConnected(old.registry, runner);
  const mine = () => old.handshakes.slice(from);
  assert.deepEqual(mine(), [`ws: revdial.mux, ${SUBPROTOCOL_H2}`, `ws: ${SUBPROTOCOL_H2}`]);
  // The first WebSocket, which the agent dropped on seeing v2 chosen, leaves nothing behind.
  await pollUntil(
    () => old.registry.list().filter((s) => s.runner_id === runner).length === 1,
    "one tunnel for the runner",
  );
  const stats = old.registry.list().find((s) => s.runner_id === runner);
  assert.equal(stats?.protocol, "h2");
  assert.equal(stats?.transport, "ws");
  await callsWork(old.registry, runner);

  // Cut from the server's side: the agent comes back on v2 without trying v3 again.
  const before = old.handshakes.length;
  old.registry.get(runner)?.destroy(new Error("cut by the test"));
  await waitAgentState(agent, "waiting");
  await waitAgentState(agent, "connected");
  await waitConnected(old.registry, runner);
  assert.deepEqual(old.handshakes.slice(before), [`ws: ${SUBPROTOCOL_H2}`]);
  await callsWork(old.registry, runner);
});

test("on raw there is no offer to follow: a v3 agent cannot reach a v2-only server, a v2 agent can", async (t) => {
  const v3 = agentOn(old.url, { transport: "raw", protocol: "v3" });
  t.after(() => v3.agent.destroy());
  const errors: Error[] = [];
  v3.agent.on("connect-error", (err: Error) => errors.push(err));
  await pollUntil(() => errors.length >= 2, "two failed handshakes of the v3 agent");
  assert.notEqual(v3.agent.state, "connected");
  assert.equal(old.registry.isConnected(v3.runner), false);

  const v2 = agentOn(old.url, { transport: "raw", protocol: "v2" });
  t.after(() => v2.agent.destroy());
  await waitAgentState(v2.agent, "connected");
  await waitConnected(old.registry, v2.runner);
  assert.equal(old.registry.list().find((s) => s.runner_id === v2.runner)?.protocol, "h2");
  await callsWork(old.registry, v2.runner);
});

for (const transport of ["ws", "raw"] as const) {
  for (const [protocol, name] of [
    ["v2", "h2"],
    ["v3", "mux"],
  ] as const) {
    test(`against today's server, a ${protocol} agent on ${transport} gets ${name}`, async (t) => {
      const { agent, runner } = agentOn(today.url, { transport, protocol });
      t.after(() => agent.destroy());
      await waitAgentState(agent, "connected");
      await waitConnected(today.registry, runner);
      const stats = today.registry.list().filter((s) => s.runner_id === runner);
      assert.equal(stats.length, 1);
      assert.equal(stats[0].protocol, name);
      assert.equal(stats[0].transport, transport);
      await callsWork(today.registry, runner);
    });
  }
}

test("the agent refuses a protocol it does not know, naming the option", () => {
  assert.throws(
    () =>
      startAgent(today.url, "sandbox-fallback-bad", "127.0.0.1:1", {
        protocol: "v4" as "v3",
        targets: TargetMap.fromFlags("127.0.0.1:1", []),
      }),
    { code: "RD_ERR_INVALID_OPTION", message: /protocol/ },
  );
});
