// A request body that fails before its end is aborted at the target, on both protocols: through a
// v2 agent (the stream is reset and the missing closing trailer tells the agent) and through a v1
// agent (the data connection is cut). A body that ends, streamed or whole, reaches the target
// complete. The target records every request and whether its body completed.

import assert from "node:assert/strict";
import type http from "node:http";
import { PassThrough } from "node:stream";
import { after, before, test } from "node:test";
import type { AgentClient } from "../../src/agent/tunnel-client.ts";
import {
  pollUntil,
  readAll,
  startAgent,
  startTarget,
  startTunnelServer,
  TOKEN,
  waitConnected,
} from "../helpers/tunnel-harness.ts";
import { type GoClient, startGoClient } from "./fixtures/go-revdial-client.ts";

interface Seen {
  url: string;
  headers: http.IncomingHttpHeaders;
  bytes: number;
  outcome: "pending" | "complete" | "aborted";
}

const seen: Seen[] = [];
let target: Awaited<ReturnType<typeof startTarget>>;
let server: Awaited<ReturnType<typeof startTunnelServer>>;
let v2: AgentClient;
let v1: GoClient;

before(async () => {
  target = await startTarget((req, res) => {
    const s: Seen = { url: req.url ?? "", headers: req.headers, bytes: 0, outcome: "pending" };
    seen.push(s);
    req.on("data", (c: Buffer) => {
      s.bytes += c.length;
    });
    req.on("end", () => {
      s.outcome = "complete";
      res.end(String(s.bytes));
    });
    req.on("close", () => {
      if (s.outcome === "pending") s.outcome = "aborted";
    });
  });
  server = await startTunnelServer({ timings: { callTimeoutMs: 5000 } });
  v2 = startAgent(server.url, "wolf-body-v2", `127.0.0.1:${target.port}`);
  v1 = await startGoClient(server.url, "wolf-body-v1", TOKEN, `127.0.0.1:${target.port}`);
  await waitConnected(server.registry, "wolf-body-v2");
  await waitConnected(server.registry, "wolf-body-v1");
});

after(async () => {
  await v2.close(100);
  v1.close();
  await server.close();
  await target.close();
});

const openStreams = () => server.registry.list().reduce((n, t) => n + t.active_streams, 0);

for (const runner of ["wolf-body-v2", "wolf-body-v1"]) {
  test(`${runner}: a streamed body that fails midway reaches the target aborted, never complete`, async () => {
    // Nothing else runs on this server: the baseline is no open stream at all.
    await pollUntil(() => openStreams() === 0, "no open stream before the fault");
    const index = seen.length;
    const body = new PassThrough();
    const call = server.registry.request(runner, {
      method: "POST",
      path: `/cut-${index}`,
      headers: { "content-type": "application/octet-stream" },
      body,
    });
    call.catch(() => {});
    body.write(Buffer.alloc(1000, 1));
    await pollUntil(() => seen[index]?.bytes === 1000, "the target reading the first bytes");
    body.destroy(new Error("caller went away"));
    await pollUntil(() => seen[index].outcome !== "pending", "the target's request to settle");
    assert.equal(seen[index].outcome, "aborted");
    await pollUntil(() => openStreams() === 0, "open streams back to none");
  });

  test(`${runner}: bodies that end, streamed or whole, reach the target complete`, async () => {
    const index = seen.length;
    const body = new PassThrough();
    const call = server.registry.request(runner, { method: "POST", path: "/streamed", body });
    body.write(Buffer.alloc(70_000, 2));
    body.end(Buffer.alloc(30_000, 3));
    const res = await call;
    assert.equal((await readAll(res.body)).toString(), "100000");
    const whole = await server.registry.request(runner, {
      method: "POST",
      path: "/whole",
      body: Buffer.alloc(5 * 1024 * 1024, 4),
    });
    assert.equal((await readAll(whole.body)).toString(), String(5 * 1024 * 1024));
    assert.deepEqual(
      seen.slice(index).map((s) => [s.url, s.outcome, s.headers["revdial-body-end"]]),
      [
        ["/streamed", "complete", undefined],
        ["/whole", "complete", undefined],
      ],
    );
  });
}
