// The v1 data connection's WebSocket, on bytes over a loopback socket pair: the 101 leaves with the
// first frame and carries the right accept key; masked frames from the agent are unmasked however
// the bytes are split (byte by byte, a frame across writes, several frames in one write, 16- and
// 64-bit lengths); pings get pongs; a close frame is answered; a text frame closes with 1003, an
// unmasked one with 1002; end() sends a FIN and no close frame.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import type { IncomingMessage } from "node:http";
import net from "node:net";
import { test } from "node:test";
import { WsDataConnection, websocketAccept } from "../../src/api/tunnel/ws-data-connection.ts";

interface Pair {
  conn: WsDataConnection;
  agent: net.Socket;
  /** What the agent has received so far. */
  received(): Buffer;
  data: Buffer[];
  /** socket.write calls the connection made. */
  writes(): number;
  closed: Promise<{ reason: string; err?: Error }>;
  agentEnded: Promise<void>;
}

async function pair(): Promise<Pair> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  const accepted = new Promise<net.Socket>((resolve) => server.once("connection", resolve));
  const agent = net.connect(port, "127.0.0.1");
  const socket = await accepted;
  server.close();
  let writes = 0;
  const write = socket.write.bind(socket) as (...args: unknown[]) => boolean;
  socket.write = ((...args: unknown[]) => {
    writes++;
    return write(...args);
  }) as typeof socket.write;
  let got = Buffer.alloc(0);
  agent.on("data", (c: Buffer) => {
    got = Buffer.concat([got, c]);
  });
  const agentEnded = new Promise<void>((resolve) => agent.once("end", () => resolve()));
  const conn = new WsDataConnection(socket, Buffer.alloc(0), "ACCEPT");
  const data: Buffer[] = [];
  const closed = new Promise<{ reason: string; err?: Error }>((resolve) =>
    conn.attach({
      data: (c) => data.push(Buffer.from(c)),
      drain: () => {},
      close: (reason, err) => resolve({ reason, err }),
    }),
  );
  return { conn, agent, received: () => got, data, writes: () => writes, closed, agentEnded };
}

/** A masked frame as an agent sends it. */
function frame(opcode: number, payload: Buffer, fin = true): Buffer {
  const mask = randomBytes(4);
  const masked = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]));
  let header: Buffer;
  if (payload.length < 126) header = Buffer.from([(fin ? 0x80 : 0) | opcode, 0x80 | payload.length]);
  else if (payload.length < 65536)
    header = Buffer.from([(fin ? 0x80 : 0) | opcode, 0x80 | 126, payload.length >> 8, payload.length & 255]);
  else {
    header = Buffer.alloc(10);
    header[0] = (fin ? 0x80 : 0) | opcode;
    header[1] = 0x80 | 127;
    header.writeBigUInt64BE(BigInt(payload.length), 2);
  }
  return Buffer.concat([header, mask, masked]);
}

async function until(check: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !check(); i++) await new Promise((r) => setTimeout(r, 5));
  assert.ok(check(), "condition not reached");
}

test("the accept key of RFC 6455's example, and refusals of what is not a version-13 handshake", () => {
  const req = (headers: Record<string, string>, method = "GET") =>
    ({ method, headers }) as unknown as IncomingMessage;
  const good = {
    upgrade: "websocket",
    "sec-websocket-version": "13",
    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
  };
  assert.equal(websocketAccept(req(good)), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  assert.equal(websocketAccept(req({ ...good, "sec-websocket-version": "8" })), null);
  assert.equal(websocketAccept(req({ ...good, "sec-websocket-key": "short" })), null);
  assert.equal(websocketAccept(req({ ...good, upgrade: "revdial.h2" })), null);
  assert.equal(websocketAccept(req(good, "POST")), null);
});

test("the 101 leaves in the same write as the first frame; frames are unmasked however they are split", async () => {
  const p = await pair();
  p.conn.write(Buffer.from("request head"));
  assert.equal(p.writes(), 1);
  await until(() => p.received().includes("request head"));
  const text = p.received().toString("latin1");
  assert.match(text, /^HTTP\/1\.1 101 Switching Protocols\r\n/);
  const tail = Buffer.concat([
    Buffer.from("\r\nSec-WebSocket-Accept: ACCEPT\r\n\r\n"),
    Buffer.from([0x82, 12]),
  ]);
  assert.ok(
    p
      .received()
      .subarray(-tail.length - 12)
      .equals(Buffer.concat([tail, Buffer.from("request head")])),
  );
  assert.match(text, /Sec-WebSocket-Accept/);

  const big = randomBytes(70_000);
  const medium = randomBytes(300);
  const bytes = Buffer.concat([
    frame(2, Buffer.from("one"), false),
    frame(0, Buffer.from("two")),
    frame(2, medium),
    frame(2, big),
  ]);
  // Byte by byte for the small frames, then the rest in uneven pieces.
  const cut = 30;
  for (let i = 0; i < cut; i++) p.agent.write(bytes.subarray(i, i + 1));
  for (let at = cut; at < bytes.length; at += 7777) p.agent.write(bytes.subarray(at, at + 7777));
  const expected = Buffer.concat([Buffer.from("onetwo"), medium, big]);
  await until(() => Buffer.concat(p.data).length >= expected.length);
  assert.deepEqual(Buffer.concat(p.data), expected);
  assert.equal(p.conn.bytesIn, expected.length);
  p.conn.destroy();
  p.agent.destroy();
});

test("a ping gets a pong with its payload; a close frame is answered and ends the connection", async () => {
  const p = await pair();
  p.conn.sendAccept();
  p.agent.write(frame(9, Buffer.from("hi")));
  await until(() => p.received().includes(Buffer.from([0x8a, 2, 0x68, 0x69])));
  p.agent.write(frame(8, Buffer.from([0x03, 0xe8])));
  const { reason } = await p.closed;
  assert.equal(reason, "closed by the agent");
  await until(() => p.received().includes(Buffer.from([0x88, 2, 0x03, 0xe8])));
  p.agent.destroy();
});

test("a text frame closes with 1003, an unmasked frame with 1002", async () => {
  for (const [bytes, code] of [
    [frame(1, Buffer.from("text")), 1003],
    [Buffer.from([0x82, 0x01, 0x41]), 1002],
  ] as const) {
    const p = await pair();
    p.conn.sendAccept();
    p.agent.write(bytes);
    const { err } = await p.closed;
    assert.match(err?.message ?? "", /WebSocket protocol error/);
    const closeFrame = Buffer.from([0x88]);
    await until(() => p.received().includes(closeFrame));
    const at = p.received().indexOf(closeFrame);
    assert.equal(p.received().readUInt16BE(at + 2), code);
    assert.equal(p.data.length, 0);
    p.agent.destroy();
  }
});

test("end() sends the FIN and no close frame", async () => {
  const p = await pair();
  p.conn.write(Buffer.from("x"));
  p.conn.end();
  await p.agentEnded;
  assert.equal(p.received().includes(Buffer.from([0x88])), false);
  assert.equal((await p.closed).reason, "ended by the server");
  p.agent.destroy();
});

test("random bytes from the agent never throw: the connection ends or carries them as payload", async () => {
  // Seeded, so a failure replays: valid frame headers with random lengths and flags, cut anywhere.
  let seed = 12345;
  const next = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed;
  };
  for (let round = 0; round < 40; round++) {
    const p = await pair();
    p.conn.sendAccept();
    const parts: Buffer[] = [];
    for (let i = 0; i < 8; i++) {
      const len = next() % 300;
      const payload = Buffer.from(Array.from({ length: len }, () => next() & 255));
      if (next() % 3 === 0) parts.push(payload);
      else parts.push(frame(next() % 16, payload, next() % 2 === 0));
    }
    const bytes = Buffer.concat(parts);
    for (let at = 0; at < bytes.length; ) {
      const n = 1 + (next() % 50);
      p.agent.write(bytes.subarray(at, at + n));
      at += n;
    }
    p.agent.end();
    await p.closed;
    p.agent.destroy();
  }
});
