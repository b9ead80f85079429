// A target that sends an answer's head and then cuts its body short (closes, or resets the
// connection, before the Content-Length or the last chunk). Proves the caller never takes a cut
// answer for a complete one: the call fails (RD_ERR_TUNNEL_STREAM_FAILED), or is answered 502 by an
// agent that had not passed the head on yet, or its body fails when read, however late the caller
// reads it. And the API process survives it: the failure must not be an 'error' event nobody
// listens to yet (the caller is still on its way from the resolved promise to its first read).
// Found by fuzz-mux-frames: under v3 the API server died of `Unhandled 'error' event on
// ResponseBody` (http1-exchange.ts).

import assert from "node:assert/strict";
import net from "node:net";
import { after, before, test } from "node:test";
import type { AgentClient } from "../../src/agent/tunnel-client.ts";
import {
  readAll,
  startAgent,
  startTunnelServer,
  type TunnelServer,
  waitAgentState,
  waitConnected,
} from "../helpers/tunnel-harness.ts";

const RUNNER = "sandbox-cut-answer";
const ANSWERS: Record<string, { bytes: string; close: "end" | "reset" }> = {
  "/length-end": { bytes: "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part", close: "end" },
  "/length-reset": { bytes: "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part", close: "reset" },
  "/chunked-end": {
    bytes: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nonly part\r\n",
    close: "end",
  },
  "/chunked-reset": {
    bytes: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n20\r\nonly part",
    close: "reset",
  },
};

/** Errors nobody listened for: each would have killed the API's process. */
const uncaught: unknown[] = [];
const onUncaught = (err: unknown) => uncaught.push(err);

let target: net.Server;
let server: TunnelServer;
let agent: AgentClient;

before(async () => {
  process.prependListener("uncaughtException", onUncaught);
  // Answers each request by its path, in one write, then ends or resets the connection.
  target = net.createServer((socket) => {
    socket.on("error", () => {});
    let head = "";
    socket.on("data", (c: Buffer) => {
      head += c.toString("latin1");
      if (!head.includes("\r\n\r\n")) return;
      const answer = ANSWERS[head.split(" ")[1]];
      socket.write(answer.bytes, () => (answer.close === "end" ? socket.end() : socket.resetAndDestroy()));
    });
  });
  await new Promise<void>((resolve) => target.listen(0, "127.0.0.1", resolve));
  server = await startTunnelServer();
  agent = startAgent(server.url, RUNNER, `127.0.0.1:${(target.address() as net.AddressInfo).port}`);
  await waitConnected(server.registry, RUNNER);
  await waitAgentState(agent, "connected");
});

after(async () => {
  process.off("uncaughtException", onUncaught);
  agent.destroy();
  await server.close();
  await new Promise((resolve) => target.close(resolve));
});

/** One call whose answer the target cuts: how it ended for the caller. */
async function cutCall(path: string): Promise<string> {
  let res: Awaited<ReturnType<TunnelServer["registry"]["request"]>>;
  try {
    res = await server.registry.request(RUNNER, { method: "GET", path, timeoutMs: 5000 });
  } catch (err) {
    return `rejected ${(err as { code?: string }).code}`;
  }
  // The caller takes its time before its first read: the cut arrives meanwhile.
  for (let k = 0; k < 20; k++) await new Promise((resolve) => setImmediate(resolve));
  await new Promise((resolve) => setTimeout(resolve, 20));
  try {
    const body = await readAll(res.body);
    return `${res.status} with a complete body of ${body.length} bytes`;
  } catch (err) {
    return `${res.status} whose body failed: ${(err as { code?: string }).code}`;
  }
}

for (const path of Object.keys(ANSWERS)) {
  test(`an answer cut short (${path.slice(1)}) is never taken for a complete one, and the API survives`, async () => {
    uncaught.length = 0;
    for (let i = 0; i < 5; i++) {
      const outcome = await cutCall(path);
      assert.ok(
        [
          "rejected RD_ERR_TUNNEL_STREAM_FAILED",
          "502 with a complete body",
          "200 whose body failed: RD_ERR_TUNNEL_STREAM_FAILED",
        ].some((ok) => outcome.startsWith(ok)),
        `call ${i}: ${outcome}`,
      );
    }
    assert.deepEqual(
      uncaught.map((e) => String(e)),
      [],
      "errors nobody listened for (each would have killed the API process)",
    );
    assert.equal(server.registry.isConnected(RUNNER), true, "the tunnel is unharmed");
  });
}
