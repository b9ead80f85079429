// v3's streaming WebSocket codec (src/tunnel/ws-codec.ts), on bytes, plus the control frames it
// answers over a real loopback socket (src/tunnel/mux-link.ts). Proves: masked client frames (random
// keys) split at every byte boundary are unmasked right at every payload offset (the mask's
// rotation); 7-, 16- and 64-bit lengths; continuation frames; pings, pongs and close frames with
// their code and reason; every RFC 6455 violation the codec refuses closes with the right code
// (text 1003; unmasked to a server, masked to a client, RSV bits, a fragmented or oversized control
// frame, an unknown opcode 1002; over maxFrameBytes 1009), once, with nothing after; encodeWsFrame
// reads back through WsReader for both roles (the server's sources untouched, the client's masked in place); acceptKey gives
// RFC 6455's own example.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import net from "node:net";
import { type TestContext, test } from "node:test";
import { WsMuxLink } from "../../src/tunnel/mux-link.ts";
import {
  acceptKey,
  closePayload,
  encodeWsFrame,
  isValidKey,
  WS_OPCODE,
  WsReader,
} from "../../src/tunnel/ws-codec.ts";
import { pollUntil } from "../helpers/tunnel-harness.ts";

type Event =
  | { kind: "data"; hex: string }
  | { kind: "ping"; hex: string }
  | { kind: "pong" }
  | { kind: "close"; code: number; reason: string }
  | { kind: "error"; code: number; message: string };

function reader(expectMasked: boolean, maxFrameBytes = 1 << 20) {
  const events: Event[] = [];
  const r = new WsReader(
    {
      data: (chunk) => events.push({ kind: "data", hex: chunk.toString("hex") }),
      ping: (payload) => events.push({ kind: "ping", hex: payload.toString("hex") }),
      pong: () => events.push({ kind: "pong" }),
      close: (code, reason) => events.push({ kind: "close", code, reason }),
      error: (code, message) => events.push({ kind: "error", code, message }),
    },
    { expectMasked, maxFrameBytes },
  );
  return { r, events };
}

/** Consecutive data slices joined: slicing is the reader's business, the bytes are not. */
function merged(events: Event[]): Event[] {
  const out: Event[] = [];
  for (const e of events) {
    const last = out.at(-1);
    if (e.kind === "data" && last?.kind === "data") last.hex += e.hex;
    else out.push({ ...e });
  }
  return out;
}

interface FrameSpec {
  fin?: boolean;
  rsv?: number;
  opcode: number;
  payload: Buffer;
  /** A mask key (the client's side), or none. */
  mask?: Buffer;
  /** Force a length encoding: 7, 16 or 64 bits (the smallest that fits otherwise). */
  lengthBits?: 7 | 16 | 64;
  /** The 64-bit length's high word (for lengths over 4 GiB). */
  high?: number;
}

/** An RFC 6455 frame built here, independently of the codec under test. */
function wsFrame(f: FrameSpec): Buffer {
  const n = f.payload.length;
  const bits = f.lengthBits ?? (n < 126 ? 7 : n < 65536 ? 16 : 64);
  const head: number[] = [((f.fin ?? true) ? 0x80 : 0) | ((f.rsv ?? 0) << 4) | f.opcode];
  const maskBit = f.mask ? 0x80 : 0;
  if (bits === 7) head.push(maskBit | n);
  else if (bits === 16) head.push(maskBit | 126, n >> 8, n & 0xff);
  else {
    const b = Buffer.alloc(8);
    b.writeUInt32BE(f.high ?? 0, 0);
    b.writeUInt32BE(n, 4);
    head.push(maskBit | 127, ...b);
  }
  const payload = Buffer.from(f.payload);
  if (f.mask) {
    head.push(...f.mask);
    for (let i = 0; i < payload.length; i++) payload[i] ^= f.mask[i & 3];
  }
  return Buffer.concat([Buffer.from(head), payload]);
}

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 131 + seed * 17 + (i >> 8)) & 0xff;
  return b;
}

/** A client's stream: every length form, continuation frames, control frames in between. */
function clientStream(): { bytes: Buffer; want: Event[] } {
  const p = [pattern(5, 1), pattern(130, 2), pattern(7, 3), pattern(3, 4), pattern(126, 5), pattern(1, 6)];
  const frames: Buffer[] = [
    wsFrame({ opcode: WS_OPCODE.BINARY, payload: p[0], mask: randomBytes(4) }),
    wsFrame({ opcode: WS_OPCODE.BINARY, payload: p[1], mask: randomBytes(4) }), // 16-bit length
    wsFrame({ opcode: WS_OPCODE.PING, payload: Buffer.from("are you there"), mask: randomBytes(4) }),
    // A message in three fragments with a pong between them (RFC 6455 5.4 allows it).
    wsFrame({ fin: false, opcode: WS_OPCODE.BINARY, payload: p[2], mask: randomBytes(4) }),
    wsFrame({ opcode: WS_OPCODE.PONG, payload: Buffer.from("x"), mask: randomBytes(4) }),
    wsFrame({ fin: false, opcode: WS_OPCODE.CONTINUATION, payload: p[3], mask: randomBytes(4) }),
    wsFrame({ opcode: WS_OPCODE.CONTINUATION, payload: p[4], mask: randomBytes(4) }),
    wsFrame({ opcode: WS_OPCODE.BINARY, payload: Buffer.alloc(0), mask: randomBytes(4) }),
    wsFrame({ opcode: WS_OPCODE.BINARY, payload: p[5], mask: randomBytes(4), lengthBits: 64 }),
    wsFrame({ opcode: WS_OPCODE.PING, payload: Buffer.alloc(0), mask: randomBytes(4) }),
    wsFrame({
      opcode: WS_OPCODE.CLOSE,
      payload: closePayload(4001, "replaced \u00e9"),
      mask: randomBytes(4),
    }),
  ];
  const want: Event[] = [
    { kind: "data", hex: Buffer.concat([p[0], p[1]]).toString("hex") },
    { kind: "ping", hex: Buffer.from("are you there").toString("hex") },
    { kind: "data", hex: p[2].toString("hex") },
    { kind: "pong" },
    { kind: "data", hex: Buffer.concat([p[3], p[4], p[5]]).toString("hex") },
    { kind: "ping", hex: "" },
    { kind: "close", code: 4001, reason: "replaced \u00e9" },
  ];
  return { bytes: Buffer.concat(frames), want };
}

function feed(bytes: Buffer, at: number[], expectMasked = true, maxFrameBytes?: number): Event[] {
  // The reader unmasks in place: every run gets its own copy.
  const copy = Buffer.from(bytes);
  const { r, events } = reader(expectMasked, maxFrameBytes);
  let from = 0;
  for (const to of at) {
    r.push(copy.subarray(from, to));
    from = to;
  }
  r.push(copy.subarray(from));
  return events;
}

test("masked client frames split at every byte boundary are unmasked right (every length form, continuations, control)", () => {
  for (let run = 0; run < 5; run++) {
    const { bytes, want } = clientStream(); // fresh random mask keys each run
    assert.deepEqual(merged(feed(bytes, [])), want, "whole");
    for (let at = 0; at <= bytes.length; at++) {
      assert.deepEqual(merged(feed(bytes, [at])), want, `run ${run}, split at ${at}`);
    }
    for (let at = 1; at + 3 <= bytes.length; at += 3) {
      assert.deepEqual(merged(feed(bytes, [at, at + 1, at + 3])), want, `run ${run}, three splits at ${at}`);
    }
    const one = Array.from({ length: bytes.length }, (_, i) => i + 1);
    assert.deepEqual(merged(feed(bytes, one)), want, `run ${run}: one byte at a time`);
  }
});

test("the mask's rotation: a payload sliced to begin at every offset 0..7 of the frame unmasks right", () => {
  const payload = pattern(4099, 9);
  for (let run = 0; run < 20; run++) {
    const frame = wsFrame({ opcode: WS_OPCODE.BINARY, payload, mask: randomBytes(4) });
    const headLen = frame.length - payload.length;
    for (let first = 0; first < 8; first++) {
      // Slices of 1..13 bytes after the first, so every slice begins at every offset modulo 4.
      const cuts: number[] = [headLen + first];
      for (let at = headLen + first, step = 1; at < frame.length; step = (step % 13) + 1) {
        at += step;
        if (at < frame.length) cuts.push(at);
      }
      const events = feed(frame, cuts);
      assert.equal(
        merged(events)[0].kind === "data" && (merged(events)[0] as { hex: string }).hex,
        payload.toString("hex"),
        `run ${run}, first slice ${first}`,
      );
    }
  }
});

test("a 64-bit length frame (65,536 + 3 bytes) is read whole, split anywhere in its header or payload", () => {
  const payload = pattern(65_539, 11);
  const frame = wsFrame({ opcode: WS_OPCODE.BINARY, payload, mask: randomBytes(4) });
  assert.equal(frame[1] & 0x7f, 127, "the frame uses the 64-bit length");
  const want = [{ kind: "data", hex: payload.toString("hex") }];
  for (let at = 0; at < 40; at++) assert.deepEqual(merged(feed(frame, [at])), want, `split at ${at}`);
  for (let at = frame.length - 40; at <= frame.length; at++)
    assert.deepEqual(merged(feed(frame, [at])), want, `split at ${at}`);
  const one = Array.from({ length: frame.length }, (_, i) => i + 1);
  assert.deepEqual(merged(feed(frame, one)), want, "one byte at a time");
  // The 16-bit form at its largest.
  const p16 = pattern(65_535, 12);
  const f16 = wsFrame({ opcode: WS_OPCODE.BINARY, payload: p16, mask: randomBytes(4) });
  assert.equal(f16[1] & 0x7f, 126);
  assert.deepEqual(merged(feed(f16, [3])), [{ kind: "data", hex: p16.toString("hex") }]);
});

test("a client reads unmasked server frames; close without a payload reports 1005", () => {
  const bytes = Buffer.concat([
    wsFrame({ opcode: WS_OPCODE.BINARY, payload: Buffer.from("abc") }),
    wsFrame({ opcode: WS_OPCODE.PING, payload: Buffer.from("p") }),
    wsFrame({ opcode: WS_OPCODE.CLOSE, payload: Buffer.alloc(0) }),
  ]);
  for (let at = 0; at <= bytes.length; at++) {
    assert.deepEqual(
      merged(feed(bytes, [at], false)),
      [
        { kind: "data", hex: Buffer.from("abc").toString("hex") },
        { kind: "ping", hex: Buffer.from("p").toString("hex") },
        { kind: "close", code: 1005, reason: "" },
      ],
      `split at ${at}`,
    );
  }
});

const VIOLATIONS: Array<{ name: string; frame: Buffer; masked: boolean; code: number; max?: number }> = [
  {
    name: "a text frame",
    frame: wsFrame({ opcode: WS_OPCODE.TEXT, payload: Buffer.from("hi"), mask: randomBytes(4) }),
    masked: true,
    code: 1003,
  },
  {
    name: "an unmasked frame sent to a server",
    frame: wsFrame({ opcode: WS_OPCODE.BINARY, payload: Buffer.from("hi") }),
    masked: true,
    code: 1002,
  },
  {
    name: "a masked frame sent to a client",
    frame: wsFrame({ opcode: WS_OPCODE.BINARY, payload: Buffer.from("hi"), mask: randomBytes(4) }),
    masked: false,
    code: 1002,
  },
  ...[1, 2, 4, 7].map((rsv) => ({
    name: `RSV bits ${rsv.toString(2).padStart(3, "0")} (no extension was negotiated)`,
    frame: wsFrame({ rsv, opcode: WS_OPCODE.BINARY, payload: Buffer.from("hi"), mask: randomBytes(4) }),
    masked: true,
    code: 1002,
  })),
  {
    name: "a fragmented control frame (ping without FIN)",
    frame: wsFrame({ fin: false, opcode: WS_OPCODE.PING, payload: Buffer.from("p"), mask: randomBytes(4) }),
    masked: true,
    code: 1002,
  },
  {
    name: "a control frame over 125 bytes",
    frame: wsFrame({ opcode: WS_OPCODE.CLOSE, payload: Buffer.alloc(126), mask: randomBytes(4) }),
    masked: true,
    code: 1002,
  },
  ...[0x3, 0x7, 0xb, 0xf].map((opcode) => ({
    name: `the reserved opcode 0x${opcode.toString(16)}`,
    frame: wsFrame({ opcode, payload: Buffer.from("hi"), mask: randomBytes(4) }),
    masked: true,
    code: 1002,
  })),
  {
    name: "a frame one byte over maxFrameBytes",
    frame: wsFrame({ opcode: WS_OPCODE.BINARY, payload: Buffer.alloc(1001), mask: randomBytes(4) }),
    masked: true,
    code: 1009,
    max: 1000,
  },
  {
    name: "a 64-bit length over 4 GiB",
    frame: wsFrame({
      opcode: WS_OPCODE.BINARY,
      payload: Buffer.alloc(0),
      mask: randomBytes(4),
      lengthBits: 64,
      high: 1,
    }),
    masked: true,
    code: 1009,
  },
];

for (const v of VIOLATIONS) {
  test(`${v.name}: error ${v.code} once, nothing delivered after it, however the bytes are split`, () => {
    const mask = v.masked ? randomBytes(4) : undefined;
    const good = wsFrame({ opcode: WS_OPCODE.BINARY, payload: Buffer.from("before"), mask });
    const later = Buffer.concat([
      wsFrame({ opcode: WS_OPCODE.BINARY, payload: Buffer.from("after"), mask }),
      wsFrame({ opcode: WS_OPCODE.PING, payload: Buffer.from("p"), mask }),
      wsFrame({ opcode: WS_OPCODE.CLOSE, payload: closePayload(1000, ""), mask }),
    ]);
    const bytes = Buffer.concat([good, v.frame, later]);
    for (let at = 0; at <= bytes.length; at++) {
      const events = merged(feed(bytes, [at], v.masked, v.max));
      assert.deepEqual(
        events[0],
        { kind: "data", hex: Buffer.from("before").toString("hex") },
        `split at ${at}`,
      );
      assert.equal(events.length, 2, `split at ${at}: ${JSON.stringify(events)}`);
      assert.equal(events[1].kind, "error", `split at ${at}`);
      assert.equal((events[1] as { code: number }).code, v.code, `split at ${at}`);
    }
    // The exact limit is fine.
    if (v.max !== undefined) {
      const limit = wsFrame({ opcode: WS_OPCODE.BINARY, payload: Buffer.alloc(v.max), mask });
      assert.equal(feed(limit, [], v.masked, v.max).filter((e) => e.kind === "error").length, 0);
    }
  });
}

test("encodeWsFrame reads back through WsReader for both roles and every length form; the server's sources stay untouched, the client's are masked in place (handed over)", () => {
  for (const length of [0, 1, 125, 126, 127, 65_535, 65_536, 200_003]) {
    const make = () => [
      pattern(Math.floor(length / 3), 1),
      pattern(length - 2 * Math.floor(length / 3), 2),
      pattern(Math.floor(length / 3), 3),
    ];
    const whole = Buffer.concat(make());
    assert.equal(whole.length, length);
    for (const role of ["client", "server"] as const) {
      const mask = role === "client";
      const parts = make();
      const out = Buffer.concat(encodeWsFrame(WS_OPCODE.BINARY, parts, length, mask));
      if (!mask) assert.ok(Buffer.concat(parts).equals(whole), `${role} ${length}: sources unchanged`);
      else if (length > 8)
        assert.ok(!Buffer.concat(parts).equals(whole), `${role} ${length}: masked in place`);
      assert.equal((out[1] & 0x80) !== 0, mask, `${role} ${length}: mask bit`);
      assert.equal(out[1] & 0x7f, length < 126 ? length : length < 65536 ? 126 : 127, `${role} ${length}`);
      // The peer reads it: a server reads the client's masked frame, a client the server's.
      for (const at of [0, 1, 2, 5, 9, 13, out.length >> 1, out.length]) {
        const events = merged(feed(out, [Math.min(at, out.length)], mask));
        const want = length === 0 ? [] : [{ kind: "data", hex: whole.toString("hex") }];
        assert.deepEqual(events, want, `${role} ${length}, split at ${at}`);
      }
    }
  }
});

test("encodeWsFrame draws a fresh mask key per frame", () => {
  const keys = new Set<string>();
  for (let i = 0; i < 3000; i++) {
    const [head] = encodeWsFrame(WS_OPCODE.BINARY, [Buffer.from("x")], 1, true);
    keys.add(head.subarray(2, 6).toString("hex"));
  }
  // 3,000 random 32-bit keys: a repeat is possible (p ~ 0.001) but more than a handful is not.
  assert.ok(keys.size > 2990, `${keys.size} distinct keys of 3,000`);
});

test("a control frame encoded by either role reads back with its code and reason", () => {
  for (const mask of [true, false]) {
    const p = closePayload(4004, `evicted: ${"r".repeat(200)}`);
    assert.equal(p.length, 125, "the reason is cut to fit a control frame");
    const out = Buffer.concat(encodeWsFrame(WS_OPCODE.CLOSE, [p], p.length, mask));
    assert.deepEqual(feed(out, [3], mask), [
      { kind: "close", code: 4004, reason: `evicted: ${"r".repeat(114)}` },
    ]);
  }
});

test("acceptKey gives RFC 6455's example answer; isValidKey takes 16 bytes of base64 only", () => {
  assert.equal(acceptKey("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  assert.equal(isValidKey("dGhlIHNhbXBsZSBub25jZQ=="), true);
  assert.equal(isValidKey(randomBytes(16).toString("base64")), true);
  for (const bad of [
    undefined,
    "",
    "dGhlIHNhbXBsZSBub25jZQ=",
    randomBytes(15).toString("base64"),
    randomBytes(17).toString("base64"),
    "dGhlIHNhbXBsZSBub25jZQ==\r\n",
  ])
    assert.equal(isValidKey(bad), false, JSON.stringify(bad));
});

/** A server-role WsMuxLink on one end of a loopback TCP connection; the test holds the other end. */
async function linkPair(t: TestContext): Promise<{ link: WsMuxLink; peer: net.Socket; got: Event[] }> {
  const server = net.createServer();
  const accepted = new Promise<net.Socket>((resolve) => server.once("connection", resolve));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const peer = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1");
  peer.on("error", () => {});
  const socket = await accepted;
  const link = new WsMuxLink(socket, { role: "server", maxFrameBytes: 1 << 20 });
  // What the server sends, read as a client reads it.
  const { r, events } = reader(false);
  peer.on("data", (c: Buffer) => r.push(c));
  t.after(async () => {
    peer.destroy();
    link.terminate();
    await new Promise((resolve) => server.close(resolve));
  });
  return { link, peer, got: events };
}

test("over a socket: a ping is answered with a pong echoing it; pongs and pings count as activity", async (t) => {
  const { link, peer, got } = await linkPair(t);
  let activity = 0;
  link.onActivity(() => activity++);
  const bytes: Buffer[] = [];
  link.onBytes((c) => bytes.push(Buffer.from(c)));
  peer.write(wsFrame({ opcode: WS_OPCODE.PING, payload: Buffer.from("ping-1"), mask: randomBytes(4) }));
  peer.write(wsFrame({ opcode: WS_OPCODE.PONG, payload: Buffer.alloc(0), mask: randomBytes(4) }));
  peer.write(wsFrame({ opcode: WS_OPCODE.BINARY, payload: Buffer.from("bytes"), mask: randomBytes(4) }));
  await pollUntil(
    () => got.length >= 1 && Buffer.concat(bytes).toString() === "bytes",
    "the pong and the bytes",
  );
  // The server's pong: opcode PONG, unmasked, same payload (the client-role reader would refuse a mask).
  assert.deepEqual(got, [{ kind: "pong" }]);
  assert.equal(activity, 2);
});

test("over a socket: the peer's close (code and reason) is echoed, the link closes, closeCode is kept", async (t) => {
  const { link, peer, got } = await linkPair(t);
  const closed = new Promise<string>((resolve) => link.onClose(resolve));
  const p = closePayload(4003, "server shutting down");
  peer.write(wsFrame({ opcode: WS_OPCODE.CLOSE, payload: p, mask: randomBytes(4) }));
  const peerEnded = new Promise((resolve) => peer.once("end", resolve));
  await peerEnded;
  peer.end();
  assert.equal(await closed, "server shutting down");
  assert.equal(link.closeCode, 4003);
  assert.deepEqual(got, [{ kind: "close", code: 4003, reason: "" }]);
});

for (const v of [
  {
    name: "a text frame",
    frame: () => wsFrame({ opcode: WS_OPCODE.TEXT, payload: Buffer.from("t"), mask: randomBytes(4) }),
    code: 1003,
  },
  {
    name: "an unmasked frame",
    frame: () => wsFrame({ opcode: WS_OPCODE.BINARY, payload: Buffer.from("t") }),
    code: 1002,
  },
  {
    name: "a frame over maxFrameBytes",
    frame: () =>
      wsFrame({ opcode: WS_OPCODE.BINARY, payload: Buffer.alloc((1 << 20) + 1), mask: randomBytes(4) }),
    code: 1009,
  },
]) {
  test(`over a socket: ${v.name} closes the link with ${v.code}, and nothing more is sent after the close frame`, async (t) => {
    const { link, peer, got } = await linkPair(t);
    const closed = new Promise<string>((resolve) => link.onClose(resolve));
    peer.write(v.frame());
    await new Promise((resolve) => peer.once("end", resolve));
    link.write([Buffer.from("late")], 4); // after the close frame: dropped
    peer.end();
    assert.match(await closed, /WebSocket protocol error/);
    assert.equal(got.length, 1, JSON.stringify(got));
    assert.equal(got[0].kind, "close");
    assert.equal((got[0] as { code: number }).code, v.code);
  });
}
