// Hostile HTTP/2 from an agent that passed a valid handshake, from the attacker's side, on both
// transports (WebSocket and raw): a seeded run of 300 sessions per transport, each sending up to 40
// frames while the server has calls open on it: random types, flags, stream ids and lengths,
// truncated frames, SETTINGS floods and invalid SETTINGS, PING floods, WINDOW_UPDATE overflow, RST
// floods, HEADERS with garbage HPACK, CONTINUATION floods, PUSH_PROMISE, GOAWAY, random bytes.
// Proves the server process never crashes, its descriptors and registry return to baseline after
// every batch, its memory stays bounded, and a tunnel opened before the fuzz still answers calls.

import assert from "node:assert/strict";
import net from "node:net";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import { RAW_UPGRADE, SUBPROTOCOL_H2, TUNNEL_PATH } from "../../src/tunnel/constants.ts";
import {
  FUZZ_TOKEN,
  type FuzzTarget,
  fuzzSeed,
  inParallel,
  Prng,
  startFuzzTarget,
} from "./fixtures/fuzz-harness.ts";

const BATCHES = 10;
const PER_BATCH = 30;
const MAX_FRAMES = 40;
const T = {
  DATA: 0,
  HEADERS: 1,
  PRIORITY: 2,
  RST: 3,
  SETTINGS: 4,
  PUSH: 5,
  PING: 6,
  GOAWAY: 7,
  WINDOW: 8,
  CONT: 9,
};

let server: FuzzTarget;
before(async () => {
  server = await startFuzzTarget();
});
after(async () => {
  await server.close();
});

function frame(
  type: number,
  flags: number,
  stream: number,
  payload: Buffer,
  length = payload.length,
): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(length & 0xffffff, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream >>> 0, 5);
  return Buffer.concat([head, payload]);
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

function settings(r: Prng, count: number): Buffer {
  const b = Buffer.alloc(count * 6);
  for (let i = 0; i < count; i++) {
    b.writeUInt16BE(r.chance(0.8) ? 1 + r.int(6) : r.int(0x10000), i * 6);
    b.writeUInt32BE(
      r.pick([0, 1, 2, 16383, 16384, 65535, 2 ** 24, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, r.int(2 ** 32)]),
      i * 6 + 2,
    );
  }
  return b;
}

/** A HEADERS block: a valid `:status` (static table), literal fields, or HPACK garbage. */
function hpack(r: Prng): Buffer {
  return r.pick([
    () => Buffer.from([0x88]),
    () => Buffer.from([0x88, 0x00, 0x01, 0x61, 0x01, 0x62]),
    () => Buffer.from([0x8d]),
    () => r.bytes(1 + r.int(50)),
    () => Buffer.from([0x3f, 0xe1, 0xff, 0xff, 0xff, 0x0f]), // table size update, huge
    () => Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]), // index overflow
    () => Buffer.concat([Buffer.from([0x00, 0x7f, 0xff, 0x7f]), r.bytes(20)]), // name length past the end
    () =>
      Buffer.concat([
        Buffer.from([0x88, 0x00, 0x05]),
        Buffer.from("x-big"),
        Buffer.from([0x7f, 0x81, 0x7f]),
        Buffer.alloc(16_000, 0x61),
      ]),
  ])();
}

/** The stream ids the server (the HTTP/2 client here) has opened: odd, from 1. */
function streamId(r: Prng): number {
  return r.pick([1, 1, 3, 5, 7, 0, 2, 2 ** 31 - 1, r.int(2 ** 32), 1 + 2 * r.int(50)]);
}

function randomFrame(r: Prng): Buffer {
  const s = streamId(r);
  return r.pick([
    () => frame(T.SETTINGS, 0, 0, settings(r, r.int(4))),
    () => frame(T.SETTINGS, r.pick([0, 1]), r.pick([0, 0, 1]), r.bytes(r.int(13))),
    () =>
      Buffer.concat(Array.from({ length: 500 + r.int(2000) }, () => frame(T.SETTINGS, 0, 0, settings(r, 1)))),
    () => frame(T.PING, r.pick([0, 1]), r.pick([0, 0, 1]), r.bytes(r.pick([8, 8, 0, 7, 9]))),
    () => Buffer.concat(Array.from({ length: 1000 + r.int(5000) }, () => frame(T.PING, 0, 0, r.bytes(8)))),
    () => frame(T.WINDOW, 0, r.pick([0, s]), u32(r.pick([0, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1]))),
    () => Buffer.concat([frame(T.WINDOW, 0, 0, u32(2 ** 31 - 1)), frame(T.WINDOW, 0, 0, u32(2 ** 31 - 1))]),
    () =>
      Buffer.concat(
        Array.from({ length: 200 + r.int(2000) }, (_, i) => frame(T.RST, 0, 1 + 2 * i, u32(r.int(14)))),
      ),
    () => frame(T.RST, 0, s, u32(r.int(2 ** 32)), r.pick([4, 4, 3, 5])),
    () => frame(T.HEADERS, r.pick([4, 5, 0, 1, 8 | 4, 0x20 | 4, 0xff]), s, hpack(r)),
    () => frame(T.HEADERS, 4 | 8, s, Buffer.concat([Buffer.from([200]), hpack(r)])), // padding past the end
    () =>
      Buffer.concat([
        frame(T.HEADERS, 0, s, hpack(r)),
        ...Array.from({ length: 10 + r.int(500) }, () => frame(T.CONT, 0, s, r.bytes(r.int(100)))),
      ]),
    () => frame(T.CONT, r.pick([0, 4]), s, r.bytes(r.int(30))),
    () => frame(T.DATA, r.pick([0, 1, 8, 9]), s, r.bytes(r.int(2000))),
    () => frame(T.DATA, 0, s, r.bytes(100), r.pick([16_385, 2 ** 24 - 1, 50])),
    () => frame(T.PUSH, 4, s, Buffer.concat([u32(2), hpack(r)])),
    () => frame(T.PRIORITY, 0, s, Buffer.concat([u32(s), Buffer.from([r.int(256)])])),
    () =>
      frame(
        T.GOAWAY,
        0,
        r.pick([0, 1]),
        Buffer.concat([u32(r.int(2 ** 32)), u32(r.int(20)), r.bytes(r.int(2000))]),
      ),
    () => frame(10 + r.int(246), r.int(256), s, r.bytes(r.int(300))),
    () => frame(r.int(10), r.int(256), s, r.bytes(r.int(64)), r.int(2 ** 24)), // a length that lies
    () => r.bytes(1 + r.int(100)),
  ])();
}

/** One fuzz session's bytes: usually a valid SETTINGS first (an agent's preface), then frames. */
function session(r: Prng): Buffer[] {
  const out: Buffer[] = [];
  if (r.chance(0.9))
    out.push(frame(T.SETTINGS, 0, 0, Buffer.alloc(0)), frame(T.SETTINGS, 1, 0, Buffer.alloc(0)));
  for (let i = 1 + r.int(MAX_FRAMES); i > 0; i--) out.push(randomFrame(r));
  // Bytes arrive in other pieces than frames: join neighbours, split some in two.
  const pieces: Buffer[] = [];
  for (const b of out) {
    if (r.chance(0.2) && b.length > 2) {
      const at = 1 + r.int(b.length - 1);
      pieces.push(b.subarray(0, at), b.subarray(at));
    } else if (pieces.length > 0 && r.chance(0.3))
      pieces[pieces.length - 1] = Buffer.concat([pieces.at(-1)!, b]);
    else pieces.push(b);
  }
  return pieces;
}

/** The attacker's link: send bytes, learn when the server cut it, cut it ourselves. */
interface Link {
  send(b: Buffer): void;
  closed: Promise<unknown>;
  cut(): void;
}

function openWs(runnerId: string): Promise<Link | null> {
  return new Promise((resolve) => {
    const url = `${server.url.replace("http:", "ws:")}${TUNNEL_PATH}?runnerid=${runnerId}`;
    const ws = new WebSocket(url, [SUBPROTOCOL_H2], { headers: { authorization: `Bearer ${FUZZ_TOKEN}` } });
    ws.on("error", () => resolve(null));
    const closed = new Promise((res) => ws.once("close", res));
    ws.once("open", () =>
      resolve({
        send: (b) => {
          if (ws.readyState === ws.OPEN) ws.send(b);
        },
        closed,
        cut: () => ws.terminate(),
      }),
    );
  });
}

function openRaw(runnerId: string): Promise<Link | null> {
  return new Promise((resolve) => {
    const socket = net.connect(server.port, "127.0.0.1");
    socket.on("error", () => resolve(null));
    const closed = new Promise((res) => socket.once("close", res));
    let head = "";
    const onData = (c: Buffer) => {
      head += c.toString("latin1");
      if (!head.includes("\r\n\r\n")) return;
      socket.off("data", onData);
      if (!head.startsWith("HTTP/1.1 101")) {
        socket.destroy();
        resolve(null);
        return;
      }
      socket.resume(); // the server's frames are read and dropped
      resolve({ send: (b) => socket.write(b), closed, cut: () => socket.destroy() });
    };
    socket.on("data", onData);
    socket.write(
      `GET ${TUNNEL_PATH}?runnerid=${runnerId} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n` +
        `Upgrade: ${RAW_UPGRADE}\r\nAuthorization: Bearer ${FUZZ_TOKEN}\r\n\r\n`,
    );
  });
}

async function attack(
  r: Prng,
  transport: "ws" | "raw",
  n: number,
  reached: { calls: number },
): Promise<void> {
  const runnerId = `fz-h2-${transport}-${n}`;
  const link = transport === "ws" ? await openWs(runnerId) : await openRaw(runnerId);
  if (!link) await server.assertAlive();
  assert.ok(link, "a valid handshake should succeed");
  const pieces = session(r);
  // Calls through this tunnel: the server opens streams that the fuzz frames then land on.
  const calls = Array.from({ length: r.int(3) }, () =>
    server.call(runnerId, "/fuzz").then(
      () => reached.calls++,
      () => null,
    ),
  );
  for (const p of pieces) {
    link.send(p);
    if (r.chance(0.1)) await new Promise((res) => setImmediate(res));
  }
  // Let the server read it all, or cut (the server must cope with both).
  if (r.chance(0.5)) await Promise.race([link.closed, new Promise((res) => setImmediate(res))]);
  link.cut();
  await link.closed;
  await Promise.all(calls);
}

for (const transport of ["ws", "raw"] as const) {
  test(`hostile HTTP/2 frames over ${transport} neither crash the server nor leak, and other tunnels keep working`, async () => {
    const r = new Prng(
      fuzzSeed(`fuzz-h2-frames (${transport})`, transport === "ws" ? 0x5eed0003 : 0x5eed0004),
    );
    const reached = { calls: 0 };
    for (let b = 0; b < BATCHES; b++) {
      const ids = Array.from({ length: PER_BATCH }, (_, i) => b * PER_BATCH + i);
      await inParallel(ids, 10, (n) => attack(r, transport, n, reached));
      await server.checkRecovered(`h2 ${transport} batch ${b}`);
    }
    console.log(`# calls made through fuzz tunnels that came back (any status): ${reached.calls}`);
  });
}
