// A caller that stops reading a large response holds only that stream: HTTP/2 flow control stops
// the agent (and through it the target) instead of buffering, so a small call on the same tunnel
// still answers at once and the process's memory stays bounded while the reader sleeps. A reader
// that takes an answer only once all of it has arrived gives the stream's credit back all the same:
// the next calls on the same pooled connection are not starved of it.

import assert from "node:assert/strict";
import type http from "node:http";
import { after, before, test } from "node:test";
import {
  type Listening,
  pollUntil,
  readAll,
  startAgent,
  startTarget,
  startTunnelServer,
  type TunnelServer,
  waitConnected,
} from "../helpers/tunnel-harness.ts";

const RUNNER = "sandbox-slow-reader";
const HUGE = 512 * 1024 * 1024;
/** An answer a slow reader holds whole: more than its body buffer, less than one stream window. */
const HELD = Buffer.alloc(2 * 1024 * 1024, 0x62);
const CHUNK = Buffer.alloc(64 * 1024, 0x61);
let target: Listening;
let server: TunnelServer;
let agent: ReturnType<typeof startAgent>;
/** What the target's /huge handler has handed to its socket so far, and whether it has ended. */
const huge = { sent: 0, closed: false };

/** Writes up to HUGE bytes, always waiting for drain: it only gets ahead as far as the reader lets it. */
function sendHuge(res: http.ServerResponse): void {
  res.on("close", () => {
    huge.closed = true;
  });
  const pump = () => {
    while (huge.sent < HUGE && !res.destroyed) {
      huge.sent += CHUNK.length;
      if (!res.write(CHUNK)) return void res.once("drain", pump);
    }
    res.end();
  };
  pump();
}

before(async () => {
  target = await startTarget((req, res) => {
    if (req.url === "/huge") return sendHuge(res);
    if (req.url === "/held") return void res.end(HELD);
    res.end("small");
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

/** Resolves once `value()` has not changed over `stableMs` (polled), failing after `timeoutMs`. */
async function settled(value: () => number, stableMs: number, timeoutMs: number): Promise<number> {
  let last = value();
  let since = Date.now();
  await pollUntil(
    () => {
      const now = value();
      if (now !== last) {
        last = now;
        since = Date.now();
      }
      return Date.now() - since >= stableMs;
    },
    "the target's writes to stall",
    timeoutMs,
    20,
  );
  return last;
}

test("a stalled reader neither blocks other streams nor lets memory grow", async () => {
  const rssBefore = process.memoryUsage().rss;
  const big = await server.registry.request(RUNNER, { method: "GET", path: "/huge", timeoutMs: 5000 });
  assert.equal(big.status, 200);
  // The caller reads nothing. The target must be held back by flow control, far short of 512 MiB.
  const stalledAt = await settled(() => huge.sent, 300, 10_000);
  assert.ok(stalledAt < 32 * 1024 * 1024, `target got ${stalledAt} bytes out with nobody reading`);

  // A small call on the same tunnel answers promptly while the big stream is stuck.
  const t0 = Date.now();
  const small = await server.registry.request(RUNNER, { method: "GET", path: "/small", timeoutMs: 2000 });
  assert.equal(small.status, 200);
  assert.equal((await readAll(small.body)).toString(), "small");
  assert.ok(Date.now() - t0 < 1000, `small call took ${Date.now() - t0} ms behind a stalled stream`);

  const growth = process.memoryUsage().rss - rssBefore;
  assert.ok(growth < 128 * 1024 * 1024, `rss grew by ${Math.round(growth / 2 ** 20)} MiB`);
  assert.equal(huge.sent, stalledAt, "the target kept sending while nobody read");

  // The caller gives up: the stream is reset end to end and the target's response is closed.
  big.body.destroy();
  await pollUntil(() => huge.closed, "the target's response to close after the caller gave up");
  assert.ok(huge.sent < HUGE);
  await pollUntil(() => server.registry.list()[0]?.active_streams === 0, "the big stream to close");
});

test("answers read only once they have all arrived do not starve the next calls of credit", async () => {
  // Each answer arrives whole while its reader waits, so most of it was never credited back as it
  // came; the credit must still go back when the answer is complete, or the pooled connection that
  // carries the next calls runs out of it (they stalled on the third or fourth call).
  for (let call = 1; call <= 6; call++) {
    const res = await server.registry.request(RUNNER, { method: "GET", path: "/held", timeoutMs: 5000 });
    assert.equal(res.status, 200);
    await new Promise((resolve) => setTimeout(resolve, 150));
    const body = await Promise.race([
      readAll(res.body),
      new Promise<never>((_, reject) =>
        setTimeout(() => reject(new Error(`call ${call}: the answer stalled`)), 5000),
      ),
    ]);
    assert.equal(body.length, HELD.length, `call ${call}`);
    assert.ok(body.equals(HELD), `call ${call}: the bytes`);
  }
});
