// The agent reads its targets into recycled slabs (src/tunnel/read-pool.ts), freed once the link
// has written them: a slab reused while its bytes still wait (for credit, in a batch, in the
// socket) would corrupt answers silently. Proves, on the transport under test, that many large
// answers at once, each of its own bytes, read at different speeds (so streams wait for credit,
// targets pause and slabs are reused meanwhile), all arrive byte-identical, and that the agent did
// reuse slabs while they did.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import {
  type Listening,
  startAgent,
  startTarget,
  startTunnelServer,
  type TunnelServer,
  waitConnected,
} from "../helpers/tunnel-harness.ts";

const RUNNER = "sandbox-recycled";
const BODIES = 12;
const SIZE = 6 * 1024 * 1024 + 12_345;
let bodies: Buffer[];
let target: Listening;
let server: TunnelServer;
let agent: ReturnType<typeof startAgent>;

function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

before(async () => {
  bodies = Array.from({ length: BODIES }, () => randomBytes(SIZE));
  // Each body is written in uneven pieces, so the agent's reads cut it at varying places.
  target = await startTarget((req, res) => {
    const body = bodies[Number(req.url?.slice(1))];
    res.setHeader("content-length", String(body.length));
    let off = 0;
    const more = () => {
      while (off < body.length) {
        const n = 1000 + ((off * 7) % 200_000);
        const ok = res.write(body.subarray(off, off + n));
        off += n;
        if (!ok) return void res.once("drain", more);
      }
      res.end();
    };
    more();
  });
  server = await startTunnelServer();
  agent = startAgent(server.url, RUNNER, `127.0.0.1:${target.port}`);
  await waitConnected(server.registry, RUNNER);
});

after(async () => {
  agent.destroy();
  await server.close();
  await target.close();
});

/** Reads a body, the odd ones slowly (a pause every few chunks), and hashes it. */
async function readHash(
  body: NodeJS.ReadableStream,
  slow: boolean,
): Promise<{ hash: string; bytes: number }> {
  const h = createHash("sha256");
  let bytes = 0;
  let chunks = 0;
  for await (const chunk of body) {
    h.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
    if (slow && ++chunks % 8 === 0) await sleep(2);
  }
  return { hash: h.digest("hex"), bytes };
}

test("large answers at once, read at different speeds, arrive byte-identical through recycled reads", async () => {
  const before = agent.pumpReadStats;
  const results = await Promise.all(
    bodies.map(async (_, i) => {
      const res = await server.registry.request(RUNNER, { method: "GET", path: `/${i}`, timeoutMs: 60_000 });
      assert.equal(res.status, 200);
      return readHash(res.body, i % 2 === 1);
    }),
  );
  results.forEach((r, i) => {
    assert.deepEqual(r, { hash: sha256(bodies[i]), bytes: SIZE }, `body ${i}`);
  });
  // Under v2 the agent reads through its HTTP client, not the pump: nothing to count there.
  const stats = agent.pumpReadStats;
  if (stats.reads > before.reads) assert.ok(stats.recycled > before.recycled, "the agent reused read slabs");
});

test("a second round on the same pooled connections is byte-identical too", async () => {
  const results = await Promise.all(
    bodies.map(async (_, i) => {
      const res = await server.registry.request(RUNNER, { method: "GET", path: `/${i}`, timeoutMs: 60_000 });
      return readHash(res.body, i % 3 === 0);
    }),
  );
  results.forEach((r, i) => {
    assert.deepEqual(r, { hash: sha256(bodies[i]), bytes: SIZE }, `body ${i}`);
  });
});
