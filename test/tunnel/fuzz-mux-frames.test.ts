// Hostile protocol-v3 frames from an agent that passed a valid handshake, from the attacker's side,
// on both transports: a WebSocket offering `revdial.mux` (masked frames, cut at random frame
// boundaries, message boundaries meaning nothing) and the raw `Upgrade: revdial.mux` socket. A
// seeded run of sessions per transport, each sending a HELLO (mostly valid), then frames while the
// server has calls open on it: valid types with wrong lengths, unknown stream ids, WINDOW overflows,
// OPEN with even or decreasing ids (the API accepts no OPEN at all), huge lengths, unknown types,
// PING floods, answers to the server's OPENs (real, broken or garbage HTTP), and random bytes; on
// ws also WebSocket-level faults (text, unmasked, RSV bits, bad opcodes, oversized frames).
// Proves the server process never crashes; a session that ends in a frame v3 forbids is closed by
// the server itself (WebSocket 1002/1003/1009, or GOAWAY(protocol error) and FIN on raw); the
// server's descriptors and registry return to baseline after every batch, its memory stays bounded,
// and a real agent's tunnel on the same server keeps answering calls throughout. And a peer that
// floods PINGs while never reading the answers cannot make the server buffer them without bound.
// The seed is printed; REVDIAL_FUZZ_SEED replays a run.

import assert from "node:assert/strict";
import net from "node:net";
import { after, before, test } from "node:test";
import { RAW_UPGRADE_MUX, SUBPROTOCOL_MUX, TUNNEL_PATH } from "../../src/tunnel/constants.ts";
import {
  encodeCoded,
  encodeFrame,
  encodeHeader,
  encodeHello,
  encodeWindow,
  FLAG,
  FRAME,
  FrameDecoder,
  MUX_CODE,
  MUX_VERSION,
} from "../../src/tunnel/mux-frames.ts";
import { acceptKey, encodeWsFrame, WS_OPCODE, WsReader } from "../../src/tunnel/ws-codec.ts";
import {
  FUZZ_TOKEN,
  type FuzzTarget,
  fuzzSeed,
  inParallel,
  Prng,
  startFuzzTarget,
} from "./fixtures/fuzz-harness.ts";

const BATCHES = 8;
const PER_BATCH = 30;
const MAX_FRAMES = 30;
/** How long the server may take to close a link after a frame v3 forbids. */
const CLOSE_BOUND_MS = 5000;

let server: FuzzTarget;
before(async () => {
  server = await startFuzzTarget();
});
after(async () => {
  await server.close();
});

type Transport = "ws" | "raw";

/** What the attacker saw of the server's side of one link. */
interface Seen {
  /** Stream ids the server opened (OPEN frames), in order. */
  opens: number[];
  goaway: { code: number; message: string } | null;
  /** The WebSocket close code the server sent (ws only). */
  wsClose: number | null;
  /** The server's bytes were not valid (a bug on the server's side). */
  garbage: string | null;
}

/** The attacker's end of one v3 link after the handshake. */
interface Link {
  transport: Transport;
  seen: Seen;
  /** Sends v3 bytes (on ws, in masked binary frames cut where `cuts` says). */
  send(bytes: Buffer): void;
  /** Sends bytes as they are (WebSocket-level faults). */
  sendRaw(bytes: Buffer): void;
  /** The server closed its side (FIN) or the socket closed. */
  serverEnded: Promise<void>;
  closed: Promise<void>;
  onOpen(fn: (id: number) => void): void;
  /** The link's own PRNG, for what it does when the server's frames come. */
  prng: Prng;
  pause(): void;
  cut(): void;
}

function handshake(runnerId: string, transport: Transport, key: string): string {
  const common = `GET ${TUNNEL_PATH}?runnerid=${runnerId} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nAuthorization: Bearer ${FUZZ_TOKEN}\r\n`;
  return transport === "raw"
    ? `${common}Upgrade: ${RAW_UPGRADE_MUX}\r\n\r\n`
    : `${common}Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Protocol: ${SUBPROTOCOL_MUX}\r\n\r\n`;
}

/** Opens a link with the real v3 handshake; null if the server refused it. */
function openLink(runnerId: string, transport: Transport, seed: Prng): Promise<Link | null> {
  // The link's own PRNG (frame cuts, answers to the server's OPENs): those happen when the server's
  // frames come, and must not shift the session's sequence.
  const r = new Prng(seed.int(2 ** 32));
  return new Promise((resolve) => {
    const key = r.bytes(16).toString("base64");
    const socket = net.connect(server.port, "127.0.0.1");
    socket.on("error", () => {});
    const closed = new Promise<void>((res) =>
      socket.once("close", () => {
        resolve(null); // before the 101: refused (a settled promise ignores it after)
        res();
      }),
    );
    const serverEnded = new Promise<void>((res) => {
      socket.once("end", () => res());
      socket.once("close", () => res());
    });
    const seen: Seen = { opens: [], goaway: null, wsClose: null, garbage: null };
    const openFns: Array<(id: number) => void> = [];
    let link: Link | null = null;
    const decoder = new FrameDecoder(
      {
        frame: (type, flags, id, payload) => {
          if (type === FRAME.OPEN) {
            seen.opens.push(id);
            for (const fn of openFns) fn(id);
          } else if (type === FRAME.PING && !(flags & FLAG.ACK)) {
            // As a live agent does: the server's PINGs are answered, so it never drops the link
            // as dead (which would hide whether it refused a fault).
            link?.send(encodeFrame(FRAME.PING, FLAG.ACK, 0, payload));
          } else if (type === FRAME.GOAWAY) {
            seen.goaway = { code: payload.readUInt32BE(0), message: payload.subarray(4).toString() };
          }
        },
        data: () => {},
        error: (message) => {
          seen.garbage ??= `v3: ${message}`;
        },
      },
      { maxData: 16 * 1024 * 1024 },
    );
    const wsReader = new WsReader(
      {
        data: (chunk) => decoder.push(chunk),
        ping: () => {},
        pong: () => {},
        close: (code) => {
          seen.wsClose = code;
        },
        error: (_code, message) => {
          seen.garbage ??= `ws: ${message}`;
        },
      },
      { expectMasked: false, maxFrameBytes: 64 * 1024 * 1024 },
    );
    const push = (c: Buffer) => (transport === "ws" ? wsReader.push(c) : decoder.push(c));
    let head = Buffer.alloc(0);
    const onData = (c: Buffer) => {
      head = Buffer.concat([head, c]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      socket.off("data", onData);
      const text = head.subarray(0, end).toString("latin1");
      const ok =
        text.startsWith("HTTP/1.1 101") &&
        (transport === "raw"
          ? new RegExp(`\r\nUpgrade: ${RAW_UPGRADE_MUX}`, "i").test(text)
          : text.includes(`Sec-WebSocket-Accept: ${acceptKey(key)}`) &&
            text.includes(`Sec-WebSocket-Protocol: ${SUBPROTOCOL_MUX}`));
      if (!ok) {
        socket.destroy();
        resolve(null);
        return;
      }
      link = {
        transport,
        seen,
        send: (bytes) => {
          if (socket.destroyed) return;
          if (transport === "raw") return void socket.write(bytes);
          // Message boundaries mean nothing: cut the bytes into frames anywhere.
          for (let at = 0; at < bytes.length; ) {
            const size = r.chance(0.5) ? bytes.length - at : 1 + r.int(bytes.length - at);
            const part = bytes.subarray(at, at + size);
            at += size;
            for (const b of encodeWsFrame(WS_OPCODE.BINARY, [part], part.length, true)) socket.write(b);
          }
        },
        sendRaw: (bytes) => {
          if (!socket.destroyed) socket.write(bytes);
        },
        serverEnded,
        closed,
        onOpen: (fn) => openFns.push(fn),
        prng: r,
        pause: () => socket.pause(),
        cut: () => socket.destroy(),
      };
      socket.on("data", push);
      const rest = head.subarray(end + 4);
      if (rest.length > 0) push(rest);
      resolve(link);
    };
    socket.on("data", onData);
    socket.write(handshake(runnerId, transport, key));
  });
}

function validHello(r: Prng): Buffer {
  return encodeHello({
    version: MUX_VERSION,
    window: r.pick([16 * 1024, 512 * 1024, 2 ** 32 - 1]),
    maxData: r.pick([16 * 1024, 64 * 1024, 2 ** 32 - 1]),
  });
}

/** A first frame that is not a valid HELLO; `fatal` when it is a whole frame the server must refuse. */
function badHello(r: Prng): { kind: string; bytes: Buffer; fatal: boolean } {
  return r.pick([
    () => ({
      kind: "HELLO of another version",
      bytes: encodeHello({ version: r.pick([0, 2, 0xffff]), window: 512 * 1024, maxData: 64 * 1024 }),
      fatal: true,
    }),
    () => ({
      kind: "HELLO with a window under 16 KiB",
      bytes: encodeHello({ version: MUX_VERSION, window: r.int(16 * 1024), maxData: 64 * 1024 }),
      fatal: true,
    }),
    () => ({
      kind: "HELLO with a largest DATA under 16 KiB",
      bytes: encodeHello({ version: MUX_VERSION, window: 512 * 1024, maxData: r.int(16 * 1024) }),
      fatal: true,
    }),
    () => ({
      kind: "HELLO too short",
      bytes: encodeFrame(FRAME.HELLO, 0, 0, r.bytes(r.int(10))),
      fatal: true,
    }),
    () => ({ kind: "PING before HELLO", bytes: encodeFrame(FRAME.PING, 0, 0, r.bytes(8)), fatal: true }),
    () => ({ kind: "DATA before HELLO", bytes: encodeFrame(FRAME.DATA, 0, 1, r.bytes(10)), fatal: true }),
    () => ({ kind: "garbage before HELLO", bytes: r.bytes(1 + r.int(40)), fatal: false }),
  ])();
}

/** A stream id: the server's (odd, low), unknown, even, zero, or the largest. */
function streamId(r: Prng, opens: number[]): number {
  return r.pick([
    () => {
      // One draw whatever the server has opened, so the run's sequence does not depend on timing.
      const k = r.int(1 << 30);
      return opens.length > 0 ? opens[k % opens.length] : 1 + 2 * (k % 3);
    },
    () => 1 + 2 * r.int(50),
    () => 2 * r.int(50),
    () => 0,
    () => 2 ** 32 - 1,
    () => r.int(2 ** 32),
  ])();
}

/** A complete frame that v3 allows from an agent (or ignores): the session must survive it. */
function harmlessFrame(r: Prng, opens: number[]): Buffer {
  const id = streamId(r, opens);
  return r.pick([
    () => encodeFrame(FRAME.PING, r.pick([0, FLAG.ACK]), 0, r.bytes(8)),
    () => encodeWindow(id, r.pick([0, 1, 2 ** 31, 2 ** 32 - 1, r.int(2 ** 32)])),
    () => Buffer.concat(Array.from({ length: 2 + r.int(50) }, () => encodeWindow(id, 2 ** 32 - 1))),
    () => encodeCoded(FRAME.RESET, id, r.int(10), r.text(r.int(30), "abc def")),
    () => encodeFrame(FRAME.RESET, 0, id, r.bytes(r.int(4))), // a RESET too short to carry a code
    () => encodeFrame(FRAME.OPENED, 0, id, r.bytes(r.int(100))),
    () => Buffer.concat([encodeHeader(FRAME.DATA, r.pick([0, FLAG.FIN]), id, 100), r.bytes(100)]),
    () => encodeHeader(FRAME.DATA, FLAG.FIN, id, 0),
    () => {
      const n = 1 + r.int(64 * 1024);
      return Buffer.concat([encodeHeader(FRAME.DATA, 0, id, n), r.bytes(n)]);
    },
    () => encodeFrame(FRAME.DATA, r.int(256), id, Buffer.from(httpAnswer(r))),
    () =>
      Buffer.concat(
        Array.from({ length: 100 + r.int(2000) }, () => encodeFrame(FRAME.PING, 0, 0, r.bytes(8))),
      ),
    () => encodeCoded(FRAME.GOAWAY, r.pick([0, id]), r.int(10), r.text(r.int(50), "evicted replaced")),
  ])();
}

/** A frame an agent must not send: the server must close the link (GOAWAY protocol error, 1002). */
function fatalFrame(r: Prng, opens: number[]): { kind: string; bytes: Buffer } {
  const id = streamId(r, opens);
  return r.pick([
    () => ({ kind: "unknown type", bytes: encodeFrame(8 + r.int(248), r.int(256), id, r.bytes(r.int(20))) }),
    () => ({
      kind: "control over 4 KiB",
      bytes: encodeHeader(r.pick([1, 2, 4, 5, 6, 7]), 0, id, 4097 + r.int(2 ** 31)),
    }),
    () => ({
      kind: "control over 4 KiB, sent",
      bytes: encodeFrame(FRAME.OPENED, 0, id, r.bytes(4097)),
    }),
    () => ({
      kind: "DATA over 64 KiB",
      bytes: encodeHeader(FRAME.DATA, 0, id, 64 * 1024 + 1 + r.int(2 ** 31)),
    }),
    () => ({ kind: "DATA of 4 GiB", bytes: encodeHeader(FRAME.DATA, 0, id, 2 ** 32 - 1) }),
    () => ({
      kind: "OPEN (odd id)",
      bytes: encodeFrame(FRAME.OPEN, 0, 1 + 2 * r.int(100), Buffer.from("desktop")),
    }),
    () => ({
      kind: "OPEN (even id)",
      bytes: encodeFrame(FRAME.OPEN, 0, 2 * r.int(100), Buffer.from("desktop")),
    }),
    () => ({
      kind: "OPEN (decreasing ids)",
      bytes: Buffer.concat([9, 7, 3].map((n) => encodeFrame(FRAME.OPEN, 0, n, Buffer.from("x")))),
    }),
    () => ({ kind: "second HELLO", bytes: validHello(r) }),
    () => ({
      kind: "WINDOW of wrong length",
      bytes: encodeFrame(FRAME.WINDOW, 0, id, r.bytes(r.pick([0, 1, 3, 5, 8]))),
    }),
    () => ({
      kind: "PING of wrong length",
      bytes: encodeFrame(FRAME.PING, 0, 0, r.bytes(r.pick([0, 1, 7, 9, 64]))),
    }),
  ])();
}

/** WebSocket-level faults: the server must close with 1002, 1003 or 1009. */
function fatalWsFrame(r: Prng): { kind: string; bytes: Buffer; codes: number[] } {
  const masked = (opcode: number, payload: Buffer, first = 0x80) => {
    const [head, body] = encodeWsFrame(opcode, [payload], payload.length, true);
    head[0] = first | opcode;
    return Buffer.concat([head, body]);
  };
  return r.pick([
    () => ({ kind: "text frame", bytes: masked(WS_OPCODE.TEXT, Buffer.from("hello")), codes: [1003] }),
    () => ({
      kind: "unmasked frame",
      bytes: Buffer.concat(encodeWsFrame(WS_OPCODE.BINARY, [r.bytes(10)], 10, false)),
      codes: [1002],
    }),
    () => ({
      kind: "RSV bits",
      bytes: masked(WS_OPCODE.BINARY, r.bytes(5), 0x80 | ((1 + r.int(7)) << 4)),
      codes: [1002],
    }),
    () => ({
      kind: "reserved opcode",
      bytes: masked(r.pick([3, 4, 5, 6, 7, 0xb, 0xc, 0xf]), r.bytes(3)),
      codes: [1002],
    }),
    () => ({ kind: "fragmented ping", bytes: masked(WS_OPCODE.PING, r.bytes(3), 0x00), codes: [1002] }),
    () => ({
      kind: "control frame over 125 bytes",
      bytes: masked(WS_OPCODE.PING, r.bytes(126)),
      codes: [1002],
    }),
    () => {
      // A header announcing 5 MiB, over the server's 4 MiB limit: refused before any payload.
      const head = Buffer.from([0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0x50, 0, 0, 1, 2, 3, 4]);
      return { kind: "frame over maxMessageBytes", bytes: head, codes: [1009] };
    },
  ])();
}

/** What the attacker answers on a stream the server opened. */
function httpAnswer(r: Prng): string {
  const body = r.text(r.int(200), "abc\r\n");
  return r.pick([
    () => `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\nx-echo-path: /fuzz\r\n\r\n${body}`,
    () =>
      `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`,
    () => `HTTP/1.1 ${r.int(1000)} X\r\nContent-Length: ${r.int(10)}\r\n\r\n${body}`,
    () => "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n",
    () => `HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd`,
    () => `HTTP/1.1 200 OK\r\nx-bad: ${r.text(20, "\u0001\u007f\u00ff a")}\r\nContent-Length: 0\r\n\r\n`,
    () => `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffff\r\n${body}`,
    () => `HTTP/1.1 200 OK\r\n${"x-h: v\r\n".repeat(100 + r.int(3000))}\r\n`,
    () => r.text(1 + r.int(300), "HTTP/1.1 200\r\n:abc"),
    () => `HTTP/1.0 200 OK\r\n\r\n${body}`,
  ])();
}

/** Answers the server's OPENs as a broken or hostile agent might. */
function answerOpens(r: Prng, link: Link): void {
  link.onOpen((id) => {
    const out: Buffer[] = [];
    const choice = r.int(10);
    if (choice === 0)
      out.push(encodeCoded(FRAME.RESET, id, r.pick([MUX_CODE.REFUSED, MUX_CODE.UNREACHABLE, 99]), "no"));
    else if (choice === 1)
      return; // never answers
    else {
      if (choice !== 2)
        out.push(encodeFrame(FRAME.OPENED, 0, id, Buffer.from(r.pick(["127.0.0.1:1", "", "\u0000\r\n"]))));
      const answer = Buffer.from(httpAnswer(r), "latin1");
      // The answer in one DATA frame or several, with or without FIN; sometimes past the window.
      for (let at = 0; at < answer.length; ) {
        const n = 1 + r.int(answer.length - at);
        out.push(encodeFrame(FRAME.DATA, 0, id, answer.subarray(at, at + n)));
        at += n;
      }
      if (r.chance(0.5)) out.push(encodeHeader(FRAME.DATA, FLAG.FIN, id, 0));
      if (r.chance(0.05)) {
        // Past the 512 KiB stream window: the server resets the stream (FLOW_CONTROL), no more.
        for (let i = 0; i < 9; i++) out.push(encodeFrame(FRAME.DATA, 0, id, Buffer.alloc(64 * 1024, 0x61)));
      }
      if (r.chance(0.2)) out.push(encodeCoded(FRAME.RESET, id, r.int(8), ""));
    }
    link.send(Buffer.concat(out));
  });
}

/** One fuzz session's frames, after the HELLO: harmless ones, some cut short, maybe garbage. */
function noise(r: Prng, opens: number[], wholeOnly: boolean): Buffer[] {
  const out: Buffer[] = [];
  for (let i = r.int(MAX_FRAMES); i > 0; i--) {
    if (!wholeOnly && r.chance(0.1)) {
      const f = harmlessFrame(r, opens);
      out.push(f.subarray(0, r.int(f.length))); // cut short: what follows is read as its rest
    } else if (!wholeOnly && r.chance(0.05)) out.push(r.bytes(1 + r.int(200)));
    else out.push(harmlessFrame(r, opens));
  }
  return out;
}

async function attack(
  r: Prng,
  transport: Transport,
  n: number,
  stats: { calls: number; closed: Record<string, number> },
  at: { stage: string },
): Promise<void> {
  const runnerId = `fz-mux-${transport}-${n}`;
  const link = await openLink(runnerId, transport, r);
  if (!link) await server.assertAlive();
  assert.ok(link, "a valid v3 handshake should succeed");
  answerOpens(link.prng, link);
  // A third of the sessions end in a frame v3 forbids, after whole frames only, so that the
  // server is sure to read it as a frame: it must close the link itself.
  const fatal = r.chance(0.35);
  const bad = r.chance(0.08) ? badHello(r) : null;
  link.send(bad ? bad.bytes : validHello(r));
  const calls = Array.from({ length: r.int(3) }, () =>
    server.call(runnerId, "/fuzz").then(
      () => stats.calls++,
      () => null,
    ),
  );
  at.stage = "sending";
  for (const bytes of noise(r, link.seen.opens, fatal)) {
    link.send(bytes);
    if (r.chance(0.2)) await new Promise((res) => setImmediate(res));
  }
  /** How the server must end the link: its GOAWAY (v3 faults) and the WebSocket close codes. */
  let ending: { kind: string; goaway: boolean; codes: number[] } | null = null;
  if (bad?.fatal) ending = { kind: bad.kind, goaway: true, codes: [1002] };
  else if (fatal && !bad) {
    if (transport === "ws" && r.chance(0.3)) {
      const f = fatalWsFrame(r);
      link.sendRaw(f.bytes);
      ending = { ...f, goaway: false };
    } else {
      const f = fatalFrame(r, link.seen.opens);
      link.send(f.bytes);
      ending = { kind: f.kind, goaway: true, codes: [1002] };
    }
  }
  if (ending) {
    at.stage = `waiting for the server to close after a ${ending.kind}`;
    // The attacker answers the server's PINGs: only the fault can end this link within the bound.
    const closedInTime = await Promise.race([
      link.serverEnded.then(() => true),
      new Promise<boolean>((res) => setTimeout(() => res(false), CLOSE_BOUND_MS).unref()),
    ]);
    const where = `${transport} session ${n}, after a ${ending.kind}`;
    const goawayOk = !ending.goaway || link.seen.goaway?.code === MUX_CODE.PROTOCOL;
    const wsCloseOk =
      transport !== "ws" || (link.seen.wsClose !== null && ending.codes.includes(link.seen.wsClose));
    // A link that ended without the server's answer may mean the server died: say so first.
    if (!closedInTime || !goawayOk || !wsCloseOk) await server.assertAlive();
    assert.ok(closedInTime, `${where}: the server did not close the link`);
    assert.equal(link.seen.garbage, null, `${where}: the server's own bytes: ${link.seen.garbage}`);
    assert.ok(
      goawayOk,
      `${where}: GOAWAY(protocol error) before the close, got ${JSON.stringify(link.seen.goaway)}`,
    );
    assert.ok(wsCloseOk, `${where}: WebSocket close code ${link.seen.wsClose}, not ${ending.codes}`);
    stats.closed[ending.kind] = (stats.closed[ending.kind] ?? 0) + 1;
  } else if (r.chance(0.5)) {
    await Promise.race([link.closed, new Promise((res) => setImmediate(res))]);
  }
  at.stage = "cutting";
  link.cut();
  await link.closed;
  at.stage = `waiting for ${calls.length} calls`;
  await Promise.all(calls);
}

for (const transport of ["ws", "raw"] as const) {
  test(`hostile v3 frames over ${transport} neither crash the server nor leak, bad links are closed, and other tunnels keep working`, async () => {
    const r = new Prng(
      fuzzSeed(`fuzz-mux-frames (${transport})`, transport === "ws" ? 0x5eed0005 : 0x5eed0006),
    );
    const stats = { calls: 0, closed: {} as Record<string, number> };
    for (let b = 0; b < BATCHES; b++) {
      const ids = Array.from({ length: PER_BATCH }, (_, i) => b * PER_BATCH + i);
      await inParallel(ids, 10, (n) => {
        const at = { stage: "handshake" };
        return bounded(attack(r, transport, n, stats, at), () => `${transport} session ${n} (${at.stage})`);
      });
      await server.checkRecovered(`mux ${transport} batch ${b}`);
    }
    console.log(`# calls through fuzz tunnels that came back (any status): ${stats.calls}`);
    console.log(`# links the server closed, by the frame that broke them: ${JSON.stringify(stats.closed)}`);
    assert.ok(Object.keys(stats.closed).length >= 8, "the run covered most kinds of fatal frame");
  });
}

/** A session that has not ended within a minute is a hang: fail with its name, not the test's timeout. */
function bounded<T>(p: Promise<T>, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what()} did not end within 60 s`)), 60_000);
  });
  return Promise.race([p, limit]).finally(() => clearTimeout(timer));
}

/** Memory the server may hold for one peer that floods PINGs and reads nothing. */
const FLOOD_BOUND = 48 * 1024 * 1024;

for (const transport of ["ws", "raw"] as const) {
  test(`a peer that floods PINGs over ${transport} and never reads the answers cannot make the server buffer them without bound`, async () => {
    const r = new Prng(0x5eed0007);
    const link = await openLink(`fz-mux-flood-${transport}`, transport, r);
    assert.ok(link);
    link.send(validHello(r));
    const before = await server.state();
    link.pause(); // the answers pile up at the server unless it stops reading this peer
    // 16 MiB of PINGs (930,000), each owed an 18-byte ACK; and on ws a WebSocket ping per 16.
    const ping = encodeFrame(FRAME.PING, 0, 0, Buffer.alloc(8, 7));
    const batch = Buffer.concat(Array(16 * 1024).fill(ping));
    const wsPing = Buffer.concat(encodeWsFrame(WS_OPCODE.PING, [Buffer.alloc(4)], 4, true));
    let peak = before.heap;
    let rssPeak = before.rss;
    for (
      let sent = 0;
      sent < 16 * 1024 * 1024 && !(await settledWithin(link.serverEnded, 0));
      sent += batch.length
    ) {
      link.send(batch);
      if (transport === "ws") for (let i = 0; i < 1024; i++) link.sendRaw(wsPing);
      if (sent % (4 * 1024 * 1024) < batch.length) {
        const s = await server.state();
        peak = Math.max(peak, s.heap);
        rssPeak = Math.max(rssPeak, s.rss);
      }
    }
    // Let the server read what it will (bounded), then measure it.
    for (let i = 0; i < 20; i++) {
      const s = await server.state();
      peak = Math.max(peak, s.heap);
      rssPeak = Math.max(rssPeak, s.rss);
      await new Promise((res) => setTimeout(res, 100));
    }
    const closedByServer = await settledWithin(link.serverEnded, 0);
    console.log(
      `# ${transport} PING flood: server heap +${((peak - before.heap) / 1e6).toFixed(1)} MB, ` +
        `RSS +${((rssPeak - before.rss) / 1e6).toFixed(1)} MB, link closed by the server: ${closedByServer}`,
    );
    link.cut();
    await link.closed;
    assert.ok(
      peak - before.heap < FLOOD_BOUND,
      `the server held ${((peak - before.heap) / 1e6).toFixed(1)} MB for one peer's unread PING answers`,
    );
    await server.checkRecovered(`${transport} PING flood`);
  });
}

async function settledWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let done = false;
  void p.then(() => {
    done = true;
  });
  await new Promise((res) => setTimeout(res, ms));
  return done;
}
