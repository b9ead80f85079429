// Hostile v1 control lines, from the attacker's side: a seeded run of 300 legacy (v1) control
// connections, each sending up to 30 random messages: mutated `keep-alive`, `conn-ready` and
// `pickup-failed` lines (random, missing, non-string and unparsable `connPath`s, the real request
// id of a dial the server is waiting on), invalid JSON, lines split across messages, text frames,
// empty messages and over-long lines; some answer the server's dials by opening data connections
// that then send garbage. Proves the server process never crashes, its descriptors and registry
// return to baseline after every batch, its memory stays bounded, and a tunnel opened before the
// fuzz still answers calls.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import { TUNNEL_PATH } from "../../src/tunnel/constants.ts";
import {
  FUZZ_TOKEN,
  type FuzzTarget,
  fuzzSeed,
  inParallel,
  Prng,
  startFuzzTarget,
} from "./fixtures/fuzz-harness.ts";

const BATCHES = 6;
const PER_BATCH = 50;
const AUTH = { authorization: `Bearer ${FUZZ_TOKEN}` };

let server: FuzzTarget;
before(async () => {
  server = await startFuzzTarget();
});
after(async () => {
  await server.close();
});

function connPath(r: Prng, seen: string[]): unknown {
  return r.pick([
    () => seen.at(-1) ?? "/revdial?revdial.dialer=x&revdial.req=y",
    () => `/revdial?revdial.dialer=${r.bytes(16).toString("hex")}&revdial.req=${r.bytes(16).toString("hex")}`,
    () => "//[",
    () => "http://[::1",
    () => "%",
    () => "",
    () => 42,
    () => null,
    () => ({ nested: [1, 2] }),
    () => r.bytes(r.int(40)).toString("latin1"),
    () => `/revdial?revdial.req=${"r".repeat(r.int(5000))}`,
  ])();
}

/** One control message: a JSON line (valid or mutated), junk, or a piece of a line. */
function message(r: Prng, seen: string[]): { data: Buffer | string; binary: boolean } {
  const command = r.pick(["keep-alive", "conn-ready", "pickup-failed", "pickup-failed", "", "x", null, 7]);
  const line = r.pick([
    () => JSON.stringify({ command, connPath: connPath(r, seen), err: r.pick(["boom", 1, null, {}]) }),
    () => JSON.stringify({ command }),
    () => JSON.stringify([command]),
    () => JSON.stringify(r.text(r.int(20), 'ab"{}[]\\\n')),
    () => `{"command":"pickup-failed","connPath":${JSON.stringify(connPath(r, seen))}`,
    () => r.bytes(r.int(60)).toString("latin1").replaceAll("\n", ""),
    () => "null",
    () => "{}",
    () => `{"command":"keep-alive"}${" ".repeat(70 * 1024)}`,
    () => "x".repeat(70 * 1024),
    () => "",
  ])();
  const end = r.chance(0.85) ? "\n" : "";
  const text = r.chance(0.1) ? line.slice(0, r.int(line.length + 1)) : line;
  return { data: Buffer.from(text + end), binary: r.chance(0.9) };
}

function open(url: string, query: string, protocols: string[] = []): Promise<WebSocket | null> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`${url.replace("http:", "ws:")}${TUNNEL_PATH}?${query}`, protocols, {
      headers: AUTH,
    });
    ws.on("error", () => resolve(null));
    ws.on("unexpected-response", () => {
      ws.terminate();
      resolve(null);
    });
    ws.once("open", () => resolve(ws));
  });
}

/** Answers a conn-ready by opening its data connection and sending `what`; then closes it. */
async function pickUp(r: Prng, url: string, path: string): Promise<void> {
  const query = path.slice(path.indexOf("?") + 1);
  const ws = await open(url, query);
  if (!ws) return;
  const closed = new Promise((res) => ws.once("close", res));
  r.pick([
    () => ws.send(r.bytes(r.int(300))),
    () => ws.send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    () => ws.send("HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\nshort"),
    () => ws.send("text, not binary", { binary: false }),
    () => ws.terminate(),
    () => ws.close(),
  ])();
  if (r.chance(0.5)) ws.close();
  else ws.terminate();
  await closed;
}

/** What the run reached: dials the server announced and data connections opened for them. */
const reached = { dials: 0, pickups: 0 };

/** One v1 control connection that says random things and may answer (or not) the server's dials. */
async function attack(r: Prng, n: number): Promise<void> {
  const runnerId = `fz-v1-${n}`;
  const ws = await open(server.url, `runnerid=${runnerId}`);
  if (!ws) await server.assertAlive();
  assert.ok(ws, "a valid v1 handshake should succeed");
  const seen: string[] = [];
  const pickups: Promise<void>[] = [];
  let firstDial: () => void = () => {};
  const dialed = new Promise<void>((resolve) => {
    firstDial = resolve;
  });
  ws.on("message", (data: Buffer) => {
    for (const line of data.toString().split("\n")) {
      const path = /"connPath":"([^"]+)"/.exec(line)?.[1];
      if (!path) continue;
      seen.push(path);
      firstDial();
      reached.dials++;
      if (r.chance(0.5)) {
        reached.pickups++;
        pickups.push(pickUp(r, server.url, path));
      }
    }
  });
  const closed = new Promise((res) => ws.once("close", res));
  // Calls through this tunnel make the server dial, so conn-ready lines and real request ids exist.
  const calls = r.chance(0.5) ? [server.call(runnerId, "/fuzz").catch(() => null)] : [];
  // Most callers wait for the dial (bounded), so the junk meets a dial in progress.
  if (calls.length > 0 && r.chance(0.8)) {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([dialed, new Promise((res) => (timer = setTimeout(res, 1000)))]);
    clearTimeout(timer);
  }
  for (let i = r.int(30); i > 0 && ws.readyState === ws.OPEN; i--) {
    const m = message(r, seen);
    ws.send(m.data, { binary: m.binary });
    if (r.chance(0.2)) await new Promise((res) => setImmediate(res));
  }
  if (r.chance(0.5)) ws.close();
  else ws.terminate();
  await closed;
  await Promise.all([...calls, ...pickups]);
}

test("hostile v1 control lines neither crash the server nor leak, and other tunnels keep working", async () => {
  const r = new Prng(fuzzSeed("fuzz-control-lines", 0x5eed0002));
  for (let b = 0; b < BATCHES; b++) {
    const ids = Array.from({ length: PER_BATCH }, (_, i) => b * PER_BATCH + i);
    await inParallel(ids, 10, (n) => attack(r, n));
    await server.checkRecovered(`control-lines batch ${b}`);
  }
  console.log(`# dials announced ${reached.dials}, data connections opened ${reached.pickups}`);
  assert.ok(reached.dials > 0 && reached.pickups > 0, "the run never reached a dial");
});
