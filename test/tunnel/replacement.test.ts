// Two agents register one runner id: the second wins. The first's tunnel is closed with the
// REPLACED close code, its start() resolves "replaced" (it does not fight for the id), and the
// first tunnel's late close never evicts the second.

import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { type TestContext, test } from "node:test";
import WebSocket from "ws";
import { TunnelRegistry } from "../../src/api/tunnel/tunnel-registry.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { CLOSE, SUBPROTOCOL_H2 } from "../../src/tunnel/constants.ts";
import type { Tunnel } from "../../src/tunnel/tunnel.ts";
import type { TunnelStats } from "../../src/tunnel/types.ts";
import {
  readAll,
  startAgent,
  startTarget,
  startTunnelServer,
  TOKEN,
  type TunnelServer,
  waitConnected,
} from "../helpers/tunnel-harness.ts";

const RUNNER = "sandbox-replaced";

/** A target that names itself in every answer, so a call shows which agent served it. */
async function namedTarget(t: TestContext, name: string) {
  const target = await startTarget((_req, res) => res.end(name));
  t.after(() => target.close());
  return `127.0.0.1:${target.port}`;
}

async function whoAnswers(server: TunnelServer): Promise<string> {
  const res = await server.registry.request(RUNNER, { method: "GET", path: "/", timeoutMs: 3000 });
  assert.equal(res.status, 200);
  return (await readAll(res.body)).toString();
}

test("the second agent wins; the first is told 'replaced', stops, and its late close evicts nothing", async (t) => {
  const server = await startTunnelServer();
  t.after(() => server.close());
  const first = startAgent(server.url, RUNNER, await namedTarget(t, "first"));
  t.after(() => first.destroy());
  await waitConnected(server.registry, RUNNER);
  assert.equal(await whoAnswers(server), "first");
  const firstTunnel = server.registry.get(RUNNER)!;
  const firstTunnelClosed = new Promise((resolve) => firstTunnel.once("close", resolve));
  const disconnected: string[] = [];
  server.registry.on("disconnected", (id, reason) => disconnected.push(`${id}: ${reason}`));

  const secondTarget = await namedTarget(t, "second");
  const t0 = Date.now();
  const second = startAgent(server.url, RUNNER, secondTarget);
  t.after(() => second.destroy());
  assert.equal(await first.start(), "replaced");
  // Told at once, not after the server's 10 s drain timeout.
  assert.ok(Date.now() - t0 < 2000, `the first agent learned it was replaced after ${Date.now() - t0} ms`);
  await firstTunnelClosed;
  assert.equal(first.state, "closed");

  // The first tunnel's close came after the second registered: the second stays live.
  const live = server.registry.get(RUNNER);
  assert.ok(live && live !== firstTunnel && !live.closed);
  assert.equal(server.registry.isConnected(RUNNER), true);
  assert.equal(server.registry.list().length, 1);
  assert.deepEqual(disconnected, []);
  assert.equal(await whoAnswers(server), "second");
  assert.equal(second.state, "connected");
});

test("the replaced tunnel receives close code 4001 (REPLACED) with reason 'replaced'", async (t) => {
  const server = await startTunnelServer();
  t.after(() => server.close());
  const url = `${server.url.replace("http", "ws")}/api/v1/revdial?runnerid=${RUNNER}`;
  const raw = new WebSocket(url, [SUBPROTOCOL_H2], { headers: { authorization: `Bearer ${TOKEN}` } });
  t.after(() => raw.terminate());
  raw.on("error", () => {});
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    raw.once("close", (code, reason) => resolve({ code, reason: reason.toString() })),
  );
  await waitConnected(server.registry, RUNNER);
  const agent = startAgent(server.url, RUNNER, await namedTarget(t, "agent"));
  t.after(() => agent.destroy());
  assert.deepEqual(await closed, { code: CLOSE.REPLACED, reason: "replaced" });
  assert.equal(await whoAnswers(server), "agent");
});

/** A stand-in tunnel whose close the test fires by hand, as late as it likes. */
class FakeTunnel extends EventEmitter implements Tunnel {
  readonly protocol = "h2" as const;
  closed = false;
  closeCalls: Array<[number | undefined, string | undefined]> = [];
  readonly runnerId: string;
  constructor(runnerId: string) {
    super();
    this.runnerId = runnerId;
  }
  request(): never {
    throw new Error("not used");
  }
  open(): never {
    throw new Error("not used");
  }
  stats(): TunnelStats {
    return {
      runner_id: this.runnerId,
      protocol: "h2",
      transport: "ws",
      connected_at: new Date(0).toISOString(),
      remote_address: "test",
      rtt_ms: null,
      active_streams: 0,
      bytes_in: 0,
      bytes_out: 0,
    };
  }
  async close(code?: number, reason?: string): Promise<void> {
    this.closeCalls.push([code, reason]);
  }
  destroy(): void {
    this.fireClose("destroyed");
  }
  fireClose(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.emit("close", reason);
  }
}

test("registry: a replaced tunnel's close event, however late, never evicts the live one", () => {
  const registry = new TunnelRegistry({ logger: silentLogger(), gracePeriodMs: 0 });
  const a = new FakeTunnel(RUNNER);
  const b = new FakeTunnel(RUNNER);
  const events: string[] = [];
  registry.on("connected", (id) => events.push(`connected ${id}`));
  registry.on("disconnected", (id) => events.push(`disconnected ${id}`));
  registry.register(a);
  registry.register(b);
  assert.deepEqual(a.closeCalls, [[CLOSE.REPLACED, "replaced"]]);
  assert.deepEqual(b.closeCalls, []);
  a.fireClose("replaced");
  assert.equal(registry.get(RUNNER), b);
  assert.deepEqual(events, [`connected ${RUNNER}`, `connected ${RUNNER}`]);
  b.fireClose("link lost");
  assert.equal(registry.isConnected(RUNNER), false);
  assert.deepEqual(events.at(-1), `disconnected ${RUNNER}`);
  registry.destroy();
});
