// `npm run bench -- client [--calls 64000] [--concurrency 32] [--rounds 3]`: the CPU the API's own
// HTTP/1.1 client over protocol v3 costs per call, in one process and without sockets: a
// MuxHttpClient over a MuxSession, an in-memory link to an agent-side MuxSession that answers every
// request on its stream with the same 100-byte answer a node:http target gives. What it counts is
// revdial's JavaScript alone (the client, its parser and both multiplexer ends); the kernel, Node's
// HTTP server and the target are left out, which makes it the figure to watch while changing the
// hot path: it moves by a few percent between runs, where the end-to-end CPU per call of
// `npm run bench -- tunnel` moves by 20-30% on a shared 2-core machine.

import { MuxHttpClient } from "../src/api/tunnel/mux-http-client.ts";
import type { MuxLink } from "../src/tunnel/mux-link.ts";
import { MuxSession } from "../src/tunnel/mux-session.ts";

const USAGE = "usage: npm run bench -- client [--calls 64000] [--concurrency 32] [--rounds 3]";
const TARGET = "127.0.0.1:1";
/** What the bench target (fixtures/target.ts) answers to /small, head and body. */
const ANSWER = Buffer.from(
  "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n" +
    "Date: Tue, 01 Dec 2026 22:00:00 GMT\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n" +
    "x".repeat(100),
);
/** The headers the admin proxy forwards for a wrk request. */
const HEADERS = { "x-forwarded-for": "127.0.0.1" };

/** One end of an in-memory link: each batch reaches the other end on the next turn, as a read would. */
class MemoryLink implements MuxLink {
  readonly transport = "raw" as const;
  readonly bytesIn = 0;
  readonly bytesOut = 0;
  readonly closeCode = null;
  readonly writableLength = 0;
  closeReason: string | null = null;
  peer: MemoryLink | null = null;
  #onBytes: (chunk: Buffer) => void = () => {};

  onBytes(fn: (chunk: Buffer) => void): void {
    this.#onBytes = fn;
  }

  deliver(chunk: Buffer): void {
    this.#onBytes(chunk);
  }

  onActivity(): void {}
  onClose(): void {}
  onWritten(): void {}
  ping(): void {}
  close(): void {}
  terminate(): void {}

  write(chunks: Buffer[], length: number): void {
    const batch = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, length);
    const peer = this.peer as MemoryLink;
    setImmediate(() => peer.deliver(batch));
  }
}

function numberOf(args: string[], flag: string, fallback: number): number {
  const at = args.indexOf(flag);
  if (at < 0) return fallback;
  const n = Number(args[at + 1]);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} must be a positive integer\n${USAGE}`);
  return n;
}

/** The client and an agent side that answers every request with ANSWER, over one in-memory link. */
function pair(): MuxHttpClient {
  const apiLink = new MemoryLink();
  const agentLink = new MemoryLink();
  apiLink.peer = agentLink;
  agentLink.peer = apiLink;
  const api = new MuxSession({ link: apiLink, role: "api" });
  const agent: MuxSession = new MuxSession({
    link: agentLink,
    role: "agent",
    onOpen: (stream) => {
      let pending = "";
      stream.onData = (chunk) => {
        stream.consumed(chunk.length);
        pending += chunk.toString("latin1");
        for (let end = pending.indexOf("\r\n\r\n"); end >= 0; end = pending.indexOf("\r\n\r\n")) {
          pending = pending.slice(end + 4);
          stream.write(Buffer.from(ANSWER));
        }
      };
      agent.opened(stream, TARGET);
    },
  });
  return new MuxHttpClient({
    runnerId: "bench-client",
    callTimeoutMs: 30_000,
    now: Date.now,
    openStream: (target) => api.open(target),
    closing: () => false,
    closeReason: () => "",
    failure: (code, message) => new Error(`stream failed (${code}): ${message}`),
  });
}

async function calls(client: MuxHttpClient, n: number, concurrency: number): Promise<void> {
  const worker = async (count: number) => {
    for (let i = 0; i < count; i++) {
      const res = await client.request(
        { method: "GET", path: "/small", headers: HEADERS, body: null },
        TARGET,
      );
      if (res.status !== 200 || res.whole?.length !== 100) throw new Error(`bad answer: ${res.status}`);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, () => worker(Math.ceil(n / concurrency))));
}

export async function main(args: string[] = []): Promise<void> {
  if (args.includes("--help")) {
    console.log(USAGE);
    return;
  }
  const n = numberOf(args, "--calls", 64_000);
  const concurrency = numberOf(args, "--concurrency", 32);
  const rounds = numberOf(args, "--rounds", 3);
  const client = pair();
  await calls(client, 4000, concurrency); // warm-up: JIT, the pool's connections
  console.log(`revdial client benchmark (node ${process.versions.node}, one process, in-memory link)`);
  console.log(
    `${n} 100-byte GETs at concurrency ${concurrency} per round: CPU of the client and both v3 ends`,
  );
  const perCall: number[] = [];
  for (let round = 1; round <= rounds; round++) {
    const cpu = process.cpuUsage();
    const started = performance.now();
    await calls(client, n, concurrency);
    const used = process.cpuUsage(cpu);
    const us = (used.user + used.system) / n;
    perCall.push(us);
    const rate = n / ((performance.now() - started) / 1000);
    console.log(`  round ${round}: ${us.toFixed(2)} us CPU per call, ${rate.toFixed(0)} calls/s`);
  }
  const sorted = [...perCall].sort((a, b) => a - b);
  console.log(`median ${sorted[Math.floor(sorted.length / 2)].toFixed(2)} us CPU per call`);
}
