// Handshakes past the admission rate get 429 with Retry-After instead of being authenticated and
// served (issue 10, restart storm), and the agent waits at least that long before dialing again.
// Refused handshakes are logged once per runner id and reason per interval, with the count of the
// ones left out, so an agent retrying forever with a revoked key is visible without flooding the log.

import assert from "node:assert/strict";
import http from "node:http";
import { test } from "node:test";
import { AdmissionLimiter } from "../../src/api/tunnel/admission-limiter.ts";
import { HANDSHAKE_HEADER, RAW_UPGRADE } from "../../src/tunnel/constants.ts";
import {
  captureLogger,
  fdsBackTo,
  openFds,
  pollUntil,
  readAll,
  startAgent,
  startTunnelServer,
  TOKEN,
} from "../helpers/tunnel-harness.ts";

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One raw-transport handshake; the upgraded socket (if any) is closed at once. */
function handshake(baseUrl: string, runnerId: string, token = TOKEN): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${baseUrl}/api/v1/revdial?runnerid=${runnerId}`, {
      headers: { connection: "Upgrade", upgrade: RAW_UPGRADE, authorization: `Bearer ${token}` },
      agent: false,
    });
    req.on("upgrade", (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 0, headers: res.headers, body: "" });
    });
    req.on("response", async (res) => {
      const body = (await readAll(res)).toString();
      resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
    });
    req.on("error", reject);
    req.end();
  });
}

test("past the admission rate: 429, Retry-After, RD_ERR_TUNNEL_ADMISSION_RATE; the burst is admitted", async () => {
  const baseline = openFds();
  let now = 1_000_000;
  const server = await startTunnelServer({
    endpoint: { admissionRate: 1, admissionBurst: 3, now: () => now },
    registry: { gracePeriodMs: 0 },
  });
  const answers = await Promise.all(
    [0, 1, 2, 3, 4, 5, 6, 7].map((i) => handshake(server.url, `sandbox-storm-${i}`)),
  );
  const admitted = answers.filter((a) => a.status === 101);
  const refused = answers.filter((a) => a.status === 429);
  assert.equal(admitted.length, 3, "the burst is admitted");
  assert.equal(refused.length, 5);
  for (const a of refused) {
    assert.ok(Number(a.headers["retry-after"]) >= 1, `Retry-After ${a.headers["retry-after"]}`);
    assert.equal(a.headers[HANDSHAKE_HEADER.toLowerCase()], "refused");
    assert.equal(JSON.parse(a.body).error.code, "RD_ERR_TUNNEL_ADMISSION_RATE");
  }
  assert.equal(server.endpoint.counters().refused[429], 5);
  // A second later the bucket holds one more token.
  now += 1000;
  assert.equal((await handshake(server.url, "sandbox-storm-late")).status, 101);
  await server.close();
  await fdsBackTo(baseline);
});

test("the agent honours the 429's Retry-After", async (t) => {
  let now = 1_000_000;
  const server = await startTunnelServer({
    endpoint: { admissionRate: 1, admissionBurst: 1, now: () => now },
    registry: { gracePeriodMs: 0 },
  });
  t.after(() => server.close());
  assert.equal((await handshake(server.url, "sandbox-first")).status, 101);
  const capture = captureLogger();
  const agent = startAgent(server.url, "sandbox-refused", "127.0.0.1:1", { logger: capture.logger });
  t.after(() => agent.destroy());
  await pollUntil(() => capture.lines.some((l) => l.state === "waiting"), "the agent to wait after a 429");
  const failed = capture.lines.find((l) => l.msg === "tunnel connect failed");
  assert.equal(failed?.status, 429);
  const waiting = capture.lines.find((l) => l.state === "waiting");
  // The harness's backoff is at most 200 ms: only the Retry-After makes the wait a second or more.
  assert.ok(Number(waiting?.retry_in_ms) >= 1000, `waits ${waiting?.retry_in_ms} ms after a 429`);
  now += 60_000;
});

test("the limiter validates its options and refills at its rate", () => {
  assert.throws(() => new AdmissionLimiter({ ratePerSecond: 0 }), { code: "RD_ERR_INVALID_OPTION" });
  assert.throws(() => new AdmissionLimiter({ burst: 0.5 }), { code: "RD_ERR_INVALID_OPTION" });
  let now = 0;
  const limiter = new AdmissionLimiter({ ratePerSecond: 10, burst: 2, now: () => now, random: () => 0 });
  assert.equal(limiter.admit().admitted, true);
  assert.equal(limiter.admit().admitted, true);
  assert.deepEqual(limiter.admit(), { admitted: false, retryAfterS: 1 });
  now += 100;
  assert.equal(limiter.admit().admitted, true);
});

test("refused handshakes are logged once per runner and reason per interval, with the suppressed count", async () => {
  const baseline = openFds();
  const capture = captureLogger("info");
  let now = 5_000_000;
  const server = await startTunnelServer({
    logger: capture.logger,
    endpoint: { refusalLogIntervalMs: 60_000, now: () => now },
    registry: { gracePeriodMs: 0 },
  });
  const refusals = () => capture.lines.filter((l) => l.msg === "tunnel handshake refused");
  // An agent retrying with a revoked key, ten times.
  for (let i = 0; i < 10; i++)
    assert.equal((await handshake(server.url, "sandbox-revoked", "revoked")).status, 401);
  // Another runner, and another reason, are logged on their own.
  assert.equal((await handshake(server.url, "sandbox-other", "revoked")).status, 401);
  assert.equal((await handshake(server.url, "bad id!")).status, 400);
  assert.deepEqual(
    refusals().map((l) => [l.runner_id, l.status, l.code]),
    [
      ["sandbox-revoked", 401, "RD_ERR_AUTH_REQUIRED"],
      ["sandbox-other", 401, "RD_ERR_AUTH_REQUIRED"],
      ["(invalid)", 400, "RD_ERR_TUNNEL_INVALID_RUNNER_ID"],
    ],
  );
  assert.equal(refusals()[0].level, 40, "logged at warn");
  // A minute later the same agent is logged again, with how many refusals were left out.
  now += 60_000;
  await handshake(server.url, "sandbox-revoked", "revoked");
  const again = refusals().filter((l) => l.runner_id === "sandbox-revoked");
  assert.equal(again.length, 2);
  assert.equal(again[1].suppressed_since_last, 9);
  assert.equal(server.endpoint.counters().refused[401], 12);
  await server.close();
  await fdsBackTo(baseline);
});
