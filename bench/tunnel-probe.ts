// A lean sequential HTTP/1.1 client for latency samples that must be timed one by one (the
// head-of-line rows keep only the calls made while a 64 MiB body was flowing, so wrk's aggregate
// percentiles cannot do): one keep-alive socket, one fixed request written as a single buffer, the
// response parsed only as far as its length. node:http's client adds ~0.15 ms to every call here;
// this adds a few microseconds, so its figures sit beside wrk's.
//
// Contract: one call at a time (call() rejects if one is in flight); every call has a deadline
// (CALL_TIMEOUT_MS); a connection the server closes is reopened on the next call. Bodies must be
// small: they are buffered.

import net from "node:net";
import type { Path } from "./tunnel-paths.ts";

const CALL_TIMEOUT_MS = 10_000;
const HEADER_END = Buffer.from("\r\n\r\n");
const CHUNKED_END = Buffer.from("0\r\n\r\n");

export interface Sample {
  /** performance.now() when the request was written and when the response was complete. */
  start: number;
  end: number;
  /** HTTP status; 0 when the call failed (connection error, deadline). */
  status: number;
}

export class SequentialProbe {
  readonly #url: URL;
  readonly #request: Buffer;
  #socket: net.Socket | null = null;
  #buf: Buffer = Buffer.alloc(0);
  #pending: { resolve(status: number): void; reject(err: Error): void; timer: NodeJS.Timeout } | null = null;

  /** GET {path.base}{target} with the path's headers. */
  constructor(path: Path, target = "/small") {
    this.#url = new URL(`${path.base}${target}`);
    const lines = [`GET ${this.#url.pathname}${this.#url.search} HTTP/1.1`, `host: ${this.#url.host}`];
    for (const [k, v] of Object.entries(path.headers)) lines.push(`${k}: ${v}`);
    this.#request = Buffer.from(`${lines.join("\r\n")}\r\n\r\n`, "latin1");
  }

  /** One call; never rejects: a failure is a sample with status 0. */
  async call(): Promise<Sample> {
    const start = performance.now();
    try {
      const status = await this.#send();
      return { start, end: performance.now(), status };
    } catch {
      this.#drop();
      return { start, end: performance.now(), status: 0 };
    }
  }

  /**
   * Calls one after another: `warmup` calls not kept, then until `calls` are kept, `stop()` says so,
   * or `maxMs` has passed, whichever comes first.
   */
  async run(o: { warmup?: number; calls: number; maxMs: number; stop?: () => boolean }): Promise<Sample[]> {
    for (let i = 0; i < (o.warmup ?? 0); i++) await this.call();
    const samples: Sample[] = [];
    const deadline = performance.now() + o.maxMs;
    while (samples.length < o.calls && performance.now() < deadline && !o.stop?.()) {
      samples.push(await this.call());
    }
    return samples;
  }

  close(): void {
    this.#drop();
  }

  #send(): Promise<number> {
    if (this.#pending) return Promise.reject(new Error("a call is in flight"));
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => this.#fail(new Error("call deadline")), CALL_TIMEOUT_MS);
      this.#pending = { resolve, reject, timer };
      this.#buf = Buffer.alloc(0);
      this.#connected().write(this.#request);
    });
  }

  #connected(): net.Socket {
    if (this.#socket && !this.#socket.destroyed) return this.#socket;
    const socket = net.connect({ host: this.#url.hostname, port: Number(this.#url.port) || 80 });
    socket.setNoDelay(true);
    socket.on("data", (chunk: Buffer) => this.#onData(chunk));
    // A socket dropped earlier may report late: only the current one fails the call in flight.
    socket.on("error", (err) => {
      if (this.#socket === socket) this.#fail(err);
    });
    socket.on("close", () => {
      if (this.#socket !== socket) return;
      this.#socket = null;
      this.#fail(new Error("connection closed"));
    });
    this.#socket = socket;
    return socket;
  }

  #onData(chunk: Buffer): void {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    const headEnd = this.#buf.indexOf(HEADER_END);
    if (headEnd < 0 || !this.#pending) return;
    const head = this.#buf.subarray(0, headEnd).toString("latin1");
    const bodyBytes = this.#buf.length - headEnd - HEADER_END.length;
    const length = /\r\ncontent-length:\s*(\d+)/i.exec(head);
    const complete = length
      ? bodyBytes >= Number(length[1])
      : /\r\ntransfer-encoding:\s*chunked/i.test(head) &&
        this.#buf.subarray(this.#buf.length - CHUNKED_END.length).equals(CHUNKED_END);
    if (!complete) return;
    const { resolve, timer } = this.#pending;
    clearTimeout(timer);
    this.#pending = null;
    if (/\r\nconnection:\s*close/i.test(head)) this.#drop();
    resolve(Number(head.slice(9, 12)));
  }

  #fail(err: Error): void {
    const pending = this.#pending;
    if (!pending) return;
    this.#pending = null;
    clearTimeout(pending.timer);
    pending.reject(err);
  }

  #drop(): void {
    const socket = this.#socket;
    this.#socket = null;
    socket?.destroy();
  }
}

/** Percentile of sorted values (nearest rank, as the other benches take it). */
export function pct(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

export interface Latency {
  p50: number;
  p99: number;
  max: number;
  /** Samples kept, and how many of them failed (status other than 200). */
  n: number;
  failed: number;
}

export function latency(samples: readonly Sample[]): Latency {
  const ms = samples.map((s) => s.end - s.start).sort((a, b) => a - b);
  return {
    p50: pct(ms, 50),
    p99: pct(ms, 99),
    max: ms.at(-1) ?? Number.NaN,
    n: samples.length,
    failed: samples.filter((s) => s.status !== 200).length,
  };
}
