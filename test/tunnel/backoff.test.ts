// Reconnect delays: exponential backoff with full jitter (delay in [0, min(cap, base * 2^n))), a
// Retry-After floor, reset after a good connection; and the agent honouring a server's Retry-After.

import assert from "node:assert/strict";
import http from "node:http";
import { test } from "node:test";
import { Backoff } from "../../src/common/backoff.ts";
import type { HandshakeRejectedError } from "../../src/tunnel/errors.ts";
import { listen, pollUntil, startAgent } from "../helpers/tunnel-harness.ts";

/** The ceilings a Backoff draws from, read off by a random() that returns just under 1. */
function ceilings(options: { baseMs?: number; capMs?: number }, n: number): number[] {
  const b = new Backoff({ ...options, random: () => 0.999_999_9 });
  return Array.from({ length: n }, () => b.next() + 1);
}

test("ceilings double from the base up to the cap (defaults 500 ms and 30 s)", () => {
  assert.deepEqual(ceilings({}, 9), [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  assert.deepEqual(ceilings({ baseMs: 20, capMs: 200 }, 6), [20, 40, 80, 160, 200, 200]);
});

test("full jitter: every delay lies in [0, ceiling), and the draws spread over it", () => {
  const b = new Backoff({ baseMs: 100, capMs: 1000 });
  const seen: number[] = [];
  for (let i = 0; i < 2000; i++) {
    const ceiling = Math.min(1000, 100 * 2 ** Math.min(b.attempt, 30));
    const d = b.next();
    assert.ok(Number.isInteger(d) && d >= 0 && d < ceiling, `delay ${d} outside [0, ${ceiling})`);
    if (ceiling === 1000) seen.push(d);
  }
  // Not all at the top (plain exponential) nor all at zero: spread over the range.
  assert.ok(Math.min(...seen) < 100 && Math.max(...seen) > 900, "delays are not spread over [0, cap)");
  const zero = new Backoff({ random: () => 0 });
  assert.equal(zero.next(), 0);
});

test("many attempts stay at the cap (no overflow to Infinity or NaN)", () => {
  const b = new Backoff({ baseMs: 500, capMs: 30_000, random: () => 0.5 });
  let d = 0;
  for (let i = 0; i < 10_000; i++) d = b.next();
  assert.equal(d, 15_000);
  assert.equal(b.attempt, 10_000);
});

test("a Retry-After floor wins over a shorter jittered delay, not over a longer one", () => {
  const low = new Backoff({ random: () => 0 });
  assert.equal(low.next(1500), 1500);
  const high = new Backoff({ baseMs: 10_000, capMs: 10_000, random: () => 0.5 });
  assert.equal(high.next(1500), 5000);
});

test("reset() starts again from the base", () => {
  const b = new Backoff({ baseMs: 100, capMs: 10_000, random: () => 0.999_999_9 });
  for (let i = 0; i < 5; i++) b.next();
  assert.equal(b.attempt, 5);
  b.reset();
  assert.equal(b.attempt, 0);
  assert.equal(b.next() + 1, 100);
});

test("the agent waits at least the server's Retry-After before dialing again", async (t) => {
  const attempts: number[] = [];
  const server = await listen(
    http.createServer((_req, res) => {
      res.statusCode = 404;
      res.end();
    }),
  );
  // Every handshake is refused with 429 and Retry-After: 1 (second).
  server.server.on("upgrade", (_req, socket) => {
    attempts.push(Date.now());
    const body = JSON.stringify({ error: { code: "RD_ERR_TUNNEL_LIMIT", message: "too many tunnels" } });
    socket.end(
      `HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 1\r\n` +
        `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
    );
  });
  t.after(() => server.close());
  const errors: HandshakeRejectedError[] = [];
  const agent = startAgent(server.url, "sandbox-backoff", "127.0.0.1:1", {
    backoffBaseMs: 10,
    backoffCapMs: 20,
  });
  agent.on("connect-error", (err: HandshakeRejectedError) => errors.push(err));
  t.after(() => agent.destroy());
  await pollUntil(() => attempts.length >= 2, "a second attempt", 5000);
  const gap = attempts[1] - attempts[0];
  assert.ok(gap >= 950, `dialed again after ${gap} ms despite Retry-After: 1`);
  assert.ok(gap < 2000, `waited ${gap} ms for a Retry-After of 1 s`);
  assert.equal(errors[0].code, "RD_ERR_TUNNEL_HANDSHAKE_REJECTED");
  assert.equal(errors[0].status, 429);
  assert.equal(errors[0].retryAfterMs, 1000);
  assert.equal(errors[0].message, "server refused the tunnel (429): too many tunnels");
});
