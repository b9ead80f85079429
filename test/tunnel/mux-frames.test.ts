// Protocol v3's frame codec (src/tunnel/mux-frames.ts), on bytes: every frame type survives an
// encode/decode round trip; a valid byte stream gives the same frames and the same DATA bytes
// whether it arrives whole, split at any byte boundary, or one byte at a time; and a protocol error
// (an unknown type, a control payload over MAX_CONTROL_PAYLOAD, a DATA frame over maxData) is
// reported exactly once, with nothing delivered after it, however the bytes are split.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  decodeCoded,
  decodeHello,
  encodeCoded,
  encodeFrame,
  encodeHeader,
  encodeHello,
  encodeWindow,
  FLAG,
  FRAME,
  FrameDecoder,
  HEADER_BYTES,
  MAX_CONTROL_PAYLOAD,
  MIN_MAX_DATA,
  MUX_CODE,
  MUX_VERSION,
} from "../../src/tunnel/mux-frames.ts";

type Event =
  | { kind: "frame"; type: number; flags: number; id: number; payload: string }
  | { kind: "data"; id: number; bytes: string; fin: boolean }
  | { kind: "error"; message: string };

/** A decoder that records what it hands on; DATA slices are kept as they came (see merged()). */
function recorder(maxData = MIN_MAX_DATA) {
  const events: Event[] = [];
  const decoder = new FrameDecoder(
    {
      frame: (type, flags, id, payload) =>
        events.push({ kind: "frame", type, flags, id, payload: payload.toString("hex") }),
      data: (id, chunk, fin) => events.push({ kind: "data", id, bytes: chunk.toString("hex"), fin }),
      error: (message) => events.push({ kind: "error", message }),
    },
    { maxData },
  );
  return { decoder, events };
}

/**
 * The events with the DATA slices of one frame joined: how a stream is sliced is the decoder's
 * business, the bytes and where FIN falls are not. A slice after a FIN starts a new frame.
 */
function merged(events: Event[]): Event[] {
  const out: Event[] = [];
  for (const e of events) {
    const last = out.at(-1);
    if (e.kind === "data" && last?.kind === "data" && last.id === e.id && !last.fin && e.bytes !== "") {
      last.bytes += e.bytes;
      last.fin = e.fin;
    } else out.push({ ...e });
  }
  return out;
}

function dataFrame(id: number, payload: Buffer, fin = false): Buffer {
  return Buffer.concat([encodeHeader(FRAME.DATA, fin ? FLAG.FIN : 0, id, payload.length), payload]);
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

function feed(bytes: Buffer, pieces: number[]): Event[] {
  const { decoder, events } = recorder();
  let at = 0;
  for (const size of pieces) {
    decoder.push(bytes.subarray(at, at + size));
    at += size;
  }
  decoder.push(bytes.subarray(at));
  return events;
}

test("every frame type survives an encode/decode round trip, with its flags, stream id and payload", () => {
  const ping = Buffer.from("0102030405060708", "hex");
  const cases: Array<{ bytes: Buffer; want: Event }> = [
    {
      // version 1, window 0x00080000, largest DATA 0x00010000
      bytes: encodeHello({ version: MUX_VERSION, window: 512 * 1024, maxData: 64 * 1024 }),
      want: { kind: "frame", type: FRAME.HELLO, flags: 0, id: 0, payload: "0001" + "00080000" + "00010000" },
    },
    {
      bytes: encodeFrame(FRAME.OPEN, 0, 1, Buffer.from("desktop")),
      want: {
        kind: "frame",
        type: FRAME.OPEN,
        flags: 0,
        id: 1,
        payload: Buffer.from("desktop").toString("hex"),
      },
    },
    {
      bytes: encodeFrame(FRAME.OPENED, 0, 0xfffffffd, Buffer.from("127.0.0.1:8080")),
      want: {
        kind: "frame",
        type: FRAME.OPENED,
        flags: 0,
        id: 0xfffffffd,
        payload: Buffer.from("127.0.0.1:8080").toString("hex"),
      },
    },
    {
      bytes: dataFrame(7, Buffer.from("hello"), true),
      want: { kind: "data", id: 7, bytes: Buffer.from("hello").toString("hex"), fin: true },
    },
    {
      bytes: encodeWindow(9, 0xffffffff),
      want: { kind: "frame", type: FRAME.WINDOW, flags: 0, id: 9, payload: "ffffffff" },
    },
    {
      bytes: encodeCoded(FRAME.RESET, 11, MUX_CODE.UNREACHABLE, "connect ECONNREFUSED"),
      want: {
        kind: "frame",
        type: FRAME.RESET,
        flags: 0,
        id: 11,
        payload: Buffer.concat([u32(3), Buffer.from("connect ECONNREFUSED")]).toString("hex"),
      },
    },
    {
      bytes: encodeFrame(FRAME.PING, FLAG.ACK, 0, ping),
      want: { kind: "frame", type: FRAME.PING, flags: FLAG.ACK, id: 0, payload: ping.toString("hex") },
    },
    {
      bytes: encodeCoded(FRAME.GOAWAY, 0, MUX_CODE.NONE, "evicted: revoked; retry-after=60"),
      want: {
        kind: "frame",
        type: FRAME.GOAWAY,
        flags: 0,
        id: 0,
        payload: Buffer.concat([u32(0), Buffer.from("evicted: revoked; retry-after=60")]).toString("hex"),
      },
    },
  ];
  for (const { bytes, want } of cases) {
    assert.equal(bytes.readUInt32BE(6), bytes.length - HEADER_BYTES, "the length field is the payload's");
    const { decoder, events } = recorder();
    decoder.push(bytes);
    assert.deepEqual(events, [want]);
  }
});

test("the payload helpers decode what the encoders wrote, and a short payload safely", () => {
  const hello = { version: MUX_VERSION, window: 16 * 1024, maxData: 0xffffffff };
  assert.deepEqual(decodeHello(encodeHello(hello).subarray(HEADER_BYTES)), hello);
  assert.equal(decodeHello(Buffer.alloc(9)), null, "a HELLO payload under 10 bytes is not a HELLO");

  const coded = encodeCoded(FRAME.RESET, 3, MUX_CODE.REFUSED, "target \u00e9 not allowed");
  assert.deepEqual(decodeCoded(coded.subarray(HEADER_BYTES)), {
    code: MUX_CODE.REFUSED,
    message: "target \u00e9 not allowed",
  });
  assert.deepEqual(decodeCoded(Buffer.alloc(3)), { code: MUX_CODE.PROTOCOL, message: "" });

  // A long reason is cut so the frame stays a valid control frame.
  const long = encodeCoded(FRAME.GOAWAY, 0, MUX_CODE.INTERNAL, "x".repeat(10_000));
  assert.equal(long.length - HEADER_BYTES, MAX_CONTROL_PAYLOAD);
  const { decoder, events } = recorder();
  decoder.push(long);
  assert.equal(events.length, 1);
  assert.equal(events[0].kind, "frame");
  assert.equal(
    decodeCoded(Buffer.from((events[0] as { payload: string }).payload, "hex")).message.length,
    4092,
  );

  // The header alone, for DATA written as header + payload buffers.
  assert.equal(
    encodeHeader(FRAME.DATA, FLAG.FIN, 0x01020304, 0x0a0b0c0d).toString("hex"),
    "0301010203040a0b0c0d",
  );
});

/** A stream with every frame type, empty and full-size DATA, FIN, and frames on several streams. */
function validStream(): Buffer {
  const big = Buffer.alloc(MIN_MAX_DATA);
  for (let i = 0; i < big.length; i++) big[i] = (i * 31 + 7) & 0xff;
  return Buffer.concat([
    encodeHello({ version: MUX_VERSION, window: 512 * 1024, maxData: MIN_MAX_DATA }),
    encodeFrame(FRAME.OPEN, 0, 1, Buffer.from("desktop")),
    encodeFrame(FRAME.OPENED, 0, 1, Buffer.from("127.0.0.1:6080")),
    dataFrame(1, Buffer.from("GET / HTTP/1.1\r\nhost: x\r\n\r\n")),
    encodeFrame(FRAME.PING, 0, 0, Buffer.from("abcdefgh")),
    dataFrame(3, Buffer.alloc(0)),
    dataFrame(1, big),
    encodeWindow(1, 65536),
    dataFrame(1, Buffer.from("tail"), true),
    dataFrame(3, Buffer.alloc(0), true),
    encodeFrame(FRAME.OPEN, 0, 5, Buffer.alloc(0)),
    encodeCoded(FRAME.RESET, 5, MUX_CODE.CANCEL, ""),
    encodeFrame(FRAME.PING, FLAG.ACK, 0, Buffer.from("abcdefgh")),
    dataFrame(7, Buffer.from([0])),
    encodeCoded(FRAME.GOAWAY, 0, MUX_CODE.NONE, "agent stopping"),
  ]);
}

test("a valid stream split at every byte boundary gives the same frames and DATA bytes as whole", () => {
  const bytes = validStream();
  const whole = merged(feed(bytes, []));
  assert.equal(whole.length, 15, "one event per frame");
  assert.ok(!whole.some((e) => e.kind === "error"));
  for (let at = 0; at <= bytes.length; at++) {
    const events = feed(bytes, [at]);
    assert.deepEqual(merged(events), whole, `split at byte ${at}`);
    // A slice carries FIN only if it is the last of its frame: nothing of stream 1 after its FIN.
    const fins = events.filter((e) => e.kind === "data" && e.id === 1 && e.fin);
    assert.equal(fins.length, 1, `split at byte ${at}: FIN of stream 1 exactly once`);
  }
});

test("the same stream one byte at a time, and in pieces of every size from 2 to 23, is unchanged", () => {
  const bytes = validStream();
  const whole = merged(feed(bytes, []));
  assert.deepEqual(merged(feed(bytes, Array(bytes.length).fill(1))), whole, "one byte at a time");
  for (let size = 2; size < 24; size++) {
    assert.deepEqual(
      merged(feed(bytes, Array(Math.ceil(bytes.length / size)).fill(size))),
      whole,
      `size ${size}`,
    );
  }
});

test("DATA slices are handed on as they arrive: a large frame is never held back until complete", () => {
  const { decoder, events } = recorder();
  const payload = Buffer.alloc(MIN_MAX_DATA, 0x61);
  const frame = dataFrame(1, payload, true);
  decoder.push(frame.subarray(0, HEADER_BYTES + 100));
  assert.deepEqual(events, [
    { kind: "data", id: 1, bytes: payload.subarray(0, 100).toString("hex"), fin: false },
  ]);
  decoder.push(frame.subarray(HEADER_BYTES + 100));
  assert.equal(events.length, 2);
  assert.equal((events[1] as { fin: boolean }).fin, true);
});

const BAD: Array<{ name: string; frame: Buffer; message: RegExp }> = [
  {
    name: "an unknown frame type (8)",
    frame: encodeFrame(8, 0, 0, Buffer.alloc(4)),
    message: /unknown frame type 8/,
  },
  {
    name: "an unknown frame type (255)",
    frame: encodeHeader(255, 0xff, 0xffffffff, 0xffffffff),
    message: /unknown frame type 255/,
  },
  {
    name: "a control payload one byte over the limit",
    frame: encodeFrame(FRAME.OPEN, 0, 1, Buffer.alloc(MAX_CONTROL_PAYLOAD + 1, 0x61)),
    message: /4097 bytes of payload/,
  },
  {
    name: "a control frame announcing 4 GiB",
    frame: encodeHeader(FRAME.PING, 0, 0, 0xffffffff),
    message: /bytes of payload/,
  },
  {
    name: "DATA one byte over maxData",
    frame: dataFrame(1, Buffer.alloc(MIN_MAX_DATA + 1)),
    message: new RegExp(`DATA frame of ${MIN_MAX_DATA + 1} bytes over ${MIN_MAX_DATA}`),
  },
  {
    name: "DATA announcing 4 GiB",
    frame: encodeHeader(FRAME.DATA, 0, 1, 0xffffffff),
    message: /DATA frame of 4294967295 bytes/,
  },
];

test("the limits themselves are accepted: a 4096-byte control payload, a maxData DATA frame", () => {
  const { decoder, events } = recorder();
  decoder.push(encodeFrame(FRAME.OPEN, 0, 1, Buffer.alloc(MAX_CONTROL_PAYLOAD, 0x61)));
  decoder.push(dataFrame(1, Buffer.alloc(MIN_MAX_DATA)));
  assert.deepEqual(
    merged(events).map((e) => e.kind),
    ["frame", "data"],
  );
});

for (const bad of BAD) {
  test(`${bad.name} is reported once and nothing is delivered after it, however it is split`, () => {
    const before = Buffer.concat([
      encodeHello({ version: MUX_VERSION, window: 512 * 1024, maxData: MIN_MAX_DATA }),
      dataFrame(1, Buffer.from("ok")),
    ]);
    const after = Buffer.concat([
      encodeFrame(FRAME.PING, 0, 0, Buffer.alloc(8)),
      dataFrame(1, Buffer.from("must not arrive"), true),
    ]);
    const bytes = Buffer.concat([before, bad.frame, after]);
    // Every split around the bad frame's header, then byte by byte through it.
    const splits = Array.from({ length: before.length + HEADER_BYTES + 2 }, (_, i) => i);
    for (const at of splits) {
      const { decoder, events } = recorder();
      decoder.push(bytes.subarray(0, at));
      decoder.push(bytes.subarray(at));
      // The decoder is told nothing more once it failed: later pushes are ignored too.
      decoder.push(after);
      const m = merged(events);
      assert.deepEqual(
        m.slice(0, 2).map((e) => e.kind),
        ["frame", "data"],
        `split at ${at}: what came before the bad frame is delivered`,
      );
      assert.equal(m.length, 3, `split at ${at}: ${JSON.stringify(m.slice(2))}`);
      assert.equal(m[2].kind, "error");
      assert.match((m[2] as { message: string }).message, bad.message);
    }
    const { decoder, events } = recorder();
    for (let i = 0; i < bytes.length; i++) decoder.push(bytes.subarray(i, i + 1));
    assert.equal(events.filter((e) => e.kind === "error").length, 1, "one byte at a time: one error");
    assert.equal(events.at(-1)?.kind, "error", "one byte at a time: nothing after the error");
  });
}
