// Hostile handshakes, from the attacker's side: a seeded run of 1,200 raw HTTP requests at the
// tunnel endpoint, with random paths, query strings (runner ids, v1 dialer and request ids),
// headers (Upgrade and Connection variants, WebSocket keys and versions, subprotocols, tokens),
// garbage before the request line, after the headers or instead of them, and requests cut short.
// Proves the server process never crashes, its descriptors and registry return to baseline after
// every batch, its memory stays bounded, and a tunnel opened before the fuzz still answers calls.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { TUNNEL_PATH } from "../../src/tunnel/constants.ts";
import {
  exchange,
  FUZZ_TOKEN,
  type FuzzTarget,
  fuzzSeed,
  inParallel,
  Prng,
  startFuzzTarget,
} from "./fixtures/fuzz-harness.ts";

const BATCHES = 12;
const PER_BATCH = 100;
const ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789._:-%/?&=# \u00e9\u0000+";

let server: FuzzTarget;
before(async () => {
  server = await startFuzzTarget();
});
after(async () => {
  await server.close();
});

function runnerId(r: Prng): string {
  return r.pick([
    () => `fz-${r.int(1e6)}`,
    () => "",
    () => r.text(1 + r.int(20), ID_CHARS),
    () => `fz-${"a".repeat(120 + r.int(20))}`,
    () => encodeURIComponent(`fz/${r.text(5, ID_CHARS)}`),
    () => `sandbox-${r.text(26, "0123456789ABCDEFGHJKMNPQRSTVWXYZ")}`,
  ])();
}

function query(r: Prng): string {
  const params: string[] = [];
  for (let i = r.int(4); i >= 0; i--) {
    params.push(
      r.pick([
        () => `runnerid=${runnerId(r)}`,
        () => `revdial.dialer=${r.chance(0.5) ? r.bytes(16).toString("hex") : runnerId(r)}`,
        () => `revdial.req=${r.bytes(r.int(20)).toString("hex")}`,
        () => r.text(r.int(30), ID_CHARS),
        () => `runnerid=${runnerId(r)}&runnerid=${runnerId(r)}`,
      ])(),
    );
  }
  return params.join("&");
}

function path(r: Prng): string {
  return r.pick([
    () => `${TUNNEL_PATH}?${query(r)}`,
    () => `${TUNNEL_PATH}?${query(r)}`,
    () => `${TUNNEL_PATH}?runnerid=fz-${r.int(1e6)}`,
    () => TUNNEL_PATH,
    () => `${TUNNEL_PATH}/${r.text(r.int(10), ID_CHARS)}`,
    () => `/${r.text(r.int(40), ID_CHARS)}`,
    () => "*",
    () => `${TUNNEL_PATH}?${"x".repeat(8000 + r.int(10_000))}`,
  ])();
}

function headers(r: Prng): string[] {
  const h: string[] = ["Host: 127.0.0.1"];
  const maybe = (p: number, line: () => string) => {
    if (r.chance(p)) h.push(line());
  };
  maybe(
    0.85,
    () => `Connection: ${r.pick(["Upgrade", "upgrade", "keep-alive, Upgrade", "close", "", "\u00ff"])}`,
  );
  maybe(
    0.9,
    () =>
      `Upgrade: ${r.pick(["websocket", "WebSocket", "revdial.h2", "REVDIAL.H2", " revdial.h2 ", "h2c", "", "websocket, revdial.h2", r.text(8, ID_CHARS)])}`,
  );
  maybe(
    0.7,
    () =>
      `Sec-WebSocket-Key: ${r.pick([r.bytes(16).toString("base64"), r.bytes(r.int(40)).toString("base64"), "", "!!!!"])}`,
  );
  maybe(0.7, () => `Sec-WebSocket-Version: ${r.pick(["13", "8", "", "13, 8", r.text(3, ID_CHARS)])}`);
  maybe(
    0.6,
    () =>
      `Sec-WebSocket-Protocol: ${r.pick(["revdial.h2", "revdial.h2, revdial.h2", "revdial.dialer", "", "a,,b", "revdial.h2,x", `revdial.h2, ${"p,".repeat(200)}q`, r.text(20, ID_CHARS)])}`,
  );
  maybe(
    0.5,
    () =>
      `Sec-WebSocket-Extensions: ${r.pick(["permessage-deflate", "permessage-deflate; client_max_window_bits=8", "x", ""])}`,
  );
  maybe(
    0.8,
    () =>
      `Authorization: ${r.pick([`Bearer ${FUZZ_TOKEN}`, `Bearer ${FUZZ_TOKEN}`, "Bearer", "Basic Zm9vOmJhcg==", `Bearer ${"t".repeat(r.int(9000))}`, ""])}`,
  );
  maybe(0.2, () => `Authorization: Bearer ${FUZZ_TOKEN}`); // a duplicate
  maybe(0.15, () => `Content-Length: ${r.pick(["0", "5", "-1", "99999999999", "x"])}`);
  maybe(0.1, () => "Transfer-Encoding: chunked");
  maybe(0.15, () => `${r.text(1 + r.int(10), ID_CHARS)}: ${r.text(r.int(30), ID_CHARS)}`);
  maybe(0.05, () => `X-Big: ${"b".repeat(20_000)}`);
  return h;
}

/** Bytes after the headers: nothing, random bytes, an HTTP/2 preface, or WebSocket-looking frames. */
function trailer(r: Prng): Buffer {
  return r.pick([
    () => Buffer.alloc(0),
    () => Buffer.alloc(0),
    () => r.bytes(1 + r.int(200)),
    () => Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    () => Buffer.concat([Buffer.from([0x82, 0x80 | 5]), r.bytes(4 + 5)]),
    () => Buffer.from([0x81, 0x85, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
    () => Buffer.from("GET / HTTP/1.1\r\n\r\n"),
  ])();
}

/** A handshake an agent would send (WebSocket v2, WebSocket v1, or raw), then one or two mutations. */
function nearlyValid(r: Prng): { path: string; headers: string[] } {
  const id = r.chance(0.8) ? `fz-${r.int(1e6)}` : runnerId(r);
  const h = ["Host: 127.0.0.1", `Authorization: Bearer ${FUZZ_TOKEN}`];
  const kind = r.pick(["ws-v2", "ws-v1", "raw"]);
  if (kind === "raw") h.push("Connection: Upgrade", "Upgrade: revdial.h2");
  else {
    h.push("Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13");
    h.push(`Sec-WebSocket-Key: ${r.bytes(16).toString("base64")}`);
    if (kind === "ws-v2") h.push("Sec-WebSocket-Protocol: revdial.h2");
  }
  for (let m = r.int(3); m > 0; m--) {
    const i = 1 + r.int(h.length - 1);
    r.pick([
      () => h.splice(i, 1),
      () => {
        h[i] = `${h[i].split(":")[0]}: ${r.text(r.int(12), ID_CHARS)}`;
      },
      () => h.push(...headers(r).slice(1, 1 + r.int(3))),
    ])();
  }
  return { path: r.chance(0.8) ? `${TUNNEL_PATH}?runnerid=${id}` : path(r), headers: h };
}

function request(r: Prng): Buffer[] {
  const method = r.chance(0.85) ? "GET" : r.pick(["POST", "PUT", "G ET", "", "CONNECT", r.text(5, ID_CHARS)]);
  const version = r.chance(0.9) ? "HTTP/1.1" : r.pick(["HTTP/1.0", "HTTP/2.0", "HTTP/9", "", "http/1.1"]);
  const before = r.chance(0.1)
    ? r.pick([() => r.bytes(1 + r.int(30)), () => Buffer.from("\r\n\r\n")])()
    : Buffer.alloc(0);
  const base = r.chance(0.6) ? nearlyValid(r) : { path: path(r), headers: headers(r) };
  const head = Buffer.from(`${method} ${base.path} ${version}\r\n${base.headers.join("\r\n")}\r\n\r\n`);
  const whole = Buffer.concat([before, head, trailer(r)]);
  // Some requests are cut short; some arrive a byte at a time at the start.
  const cut = r.chance(0.1) ? whole.subarray(0, r.int(whole.length)) : whole;
  if (r.chance(0.1) && cut.length > 8) return [cut.subarray(0, 1), cut.subarray(1, 5), cut.subarray(5)];
  return [cut];
}

test("hostile handshakes neither crash the server nor leak, and other tunnels keep working", async () => {
  const r = new Prng(fuzzSeed("fuzz-handshake", 0x5eed0001));
  const statuses = new Map<string, number>();
  for (let b = 0; b < BATCHES; b++) {
    const cases = Array.from({ length: PER_BATCH }, () => request(r));
    await inParallel(cases, 25, async (chunks) => {
      const got = await exchange(server.port, chunks, 1500);
      const status =
        /^HTTP\/1\.1 (\d{3})/.exec(got.toString("latin1"))?.[1] ?? (got.length ? "other" : "none");
      statuses.set(status, (statuses.get(status) ?? 0) + 1);
    });
    await server.checkRecovered(`handshake batch ${b}`);
  }
  console.log(`# answers by status: ${JSON.stringify(Object.fromEntries(statuses))}`);
  // The run must reach past the checks into live tunnels (101) as well as each refusal.
  for (const status of ["101", "400", "401"])
    assert.ok(statuses.get(status), `no case was answered ${status}`);
});
