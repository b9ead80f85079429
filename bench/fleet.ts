// `npm run bench -- fleet --agents 5000`: one real `revdial server` process with a fleet of idle
// agents (simulated a thousand to a process) connected at once. Prints the time until all are
// connected, the server's resident memory per tunnel (after a full GC, triggered through the
// inspector so the server needs no bench-only code), whether every tunnel was pinged and answered
// within one ping interval, the tunnel count /metrics reports, and the latency of calls through
// random tunnels while the fleet is connected. The bar (issue 10): at most 24 KB of RSS per tunnel.
// Options: --agents 5000, --per-process 1000, --transport ws|raw, --calls 500, --ping-wait 18s,
// --store postgres|pglite (default postgres: a throwaway database on REVDIAL_BENCH_DATABASE_URL,
// default postgres://postgres@127.0.0.1:5432/test, dropped afterwards; PGlite runs inside the
// server and leaves hundreds of MB of freed-but-resident pages that new tunnels reuse, which hides
// most of their cost from an RSS delta; without a Postgres server the bench says so and uses PGlite).
//
// The agents register as `fleet{g}-{i}` with the admin key (kind "other": no host reconciliation
// runs per connect, so the figures are the tunnel layer's own) and serve bench/fixtures/target.ts.

import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import pg from "pg";
import WebSocket from "ws";
import { parseDuration } from "../src/common/duration.ts";
import { type Proc, startNode } from "./procs.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const CLI = join(ROOT, "src/cli/main.ts");
const BAR_BYTES_PER_TUNNEL = 24 * 1024;
/** The server's ping interval (DEFAULT_TIMINGS.pingIntervalMs; `revdial server` has no flag for it). */
const PING_INTERVAL_MS = 15_000;

interface Options {
  agents: number;
  perProcess: number;
  transport: "ws" | "raw";
  calls: number;
  pingWaitMs: number;
  store: "postgres" | "pglite";
}

function parseArgs(args: string[]): Options {
  const o: Options = {
    agents: 5000,
    perProcess: 1000,
    transport: "ws",
    calls: 500,
    pingWaitMs: 18_000,
    store: "postgres",
  };
  for (let i = 0; i < args.length; i += 2) {
    const [flag, value] = [args[i], args[i + 1] ?? ""];
    if (flag === "--agents") o.agents = Number(value);
    else if (flag === "--per-process") o.perProcess = Number(value);
    else if (flag === "--transport") o.transport = value === "raw" ? "raw" : "ws";
    else if (flag === "--calls") o.calls = Number(value);
    else if (flag === "--ping-wait") o.pingWaitMs = parseDuration(value);
    else if (flag === "--store") o.store = value === "pglite" ? "pglite" : "postgres";
    else throw new Error(`unknown option ${flag}`);
  }
  return o;
}

// ---- the server process ------------------------------------------------------------------------

export interface ServerProc {
  child: ChildProcess;
  url: string;
  /** The inspector's WebSocket URL when started with inspect, else null. */
  inspectorUrl: string | null;
  stop(): Promise<void>;
}

/**
 * Starts `revdial server` on `listen` with `dataDir`; resolves once it prints its URL. With
 * `inspect`, the inspector listens on a free loopback port (the GC trigger of measureServer).
 */
export function startServer(
  dataDir: string,
  listen: string,
  options: { inspect?: boolean; extra?: string[] } = {},
): Promise<ServerProc> {
  const nodeArgs = options.inspect ? ["--inspect=127.0.0.1:0"] : [];
  // The fleet registers every tunnel with the admin's key: the per-user tunnel quota (a tenant
  // limit, not a tunnel-layer one) is lifted so the bench measures the tunnel layer alone.
  const args = [
    ...nodeArgs,
    CLI,
    "server",
    "--listen",
    listen,
    "--data-dir",
    dataDir,
    "--quota-tunnels",
    "1000000",
  ];
  const child = spawn(process.execPath, [...args, "--log-level", "warn", ...(options.extra ?? [])], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let inspectorUrl: string | null = null;
  let stderr = "";
  createInterface({ input: child.stderr! }).on("line", (line) => {
    const m = /Debugger listening on (ws:\/\/\S+)/.exec(line);
    if (m) inspectorUrl = m[1];
    else stderr = `${stderr}${line}\n`.slice(-4000);
  });
  const stop = () =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once("exit", () => resolve());
      child.kill("SIGTERM");
      setTimeout(() => child.kill("SIGKILL"), 5000).unref();
    });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      void stop();
      reject(new Error(`server not ready in 60 s\n${stderr}`));
    }, 60_000);
    createInterface({ input: child.stdout! }).on("line", (line) => {
      const m = /listening on (http\S+)/.exec(line);
      if (!m) return;
      clearTimeout(timer);
      resolve({ child, url: m[1], inspectorUrl, stop });
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code ?? signal})\n${stderr}`));
    });
  });
}

/** A minimal Chrome DevTools Protocol client: enough to collect garbage and read memoryUsage(). */
export class Inspector {
  readonly #ws: WebSocket;
  #id = 0;
  readonly #waiting = new Map<number, (result: unknown) => void>();

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.on("message", (data) => {
      const msg = JSON.parse(data.toString()) as { id?: number; result?: unknown };
      if (msg.id !== undefined) this.#waiting.get(msg.id)?.(msg.result);
    });
  }

  static connect(url: string): Promise<Inspector> {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    return new Promise((resolve, reject) => {
      ws.once("open", () => resolve(new Inspector(ws)));
      ws.once("error", reject);
    });
  }

  call(method: string, params: Record<string, unknown> = {}): Promise<unknown> {
    const id = ++this.#id;
    return new Promise((resolve) => {
      this.#waiting.set(id, resolve);
      this.#ws.send(JSON.stringify({ id, method, params }));
    });
  }

  /** Three full GCs a little apart (finalizers free native memory between them), then the figures. */
  async measure(): Promise<{ rss: number; heap: number }> {
    for (let i = 0; i < 3; i++) {
      await this.call("HeapProfiler.collectGarbage");
      await new Promise((r) => setTimeout(r, 300));
    }
    const r = (await this.call("Runtime.evaluate", {
      expression: "JSON.stringify(process.memoryUsage())",
      returnByValue: true,
    })) as { result: { value: string } };
    const m = JSON.parse(r.result.value) as { rss: number; heapUsed: number; external: number };
    return { rss: m.rss, heap: m.heapUsed + m.external };
  }

  close(): void {
    this.#ws.close();
  }
}

const POSTGRES_ADMIN_URL =
  process.env.REVDIAL_BENCH_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";

/** A throwaway database on the Postgres server: its URL and a function that drops it. Null if none. */
export async function throwawayDatabase(): Promise<{ url: string; drop(): Promise<void> } | null> {
  const name = `revdial_bench_${process.pid}_${Date.now()}`;
  const admin = new pg.Client({ connectionString: POSTGRES_ADMIN_URL, connectionTimeoutMillis: 2000 });
  try {
    await admin.connect();
    await admin.query(`CREATE DATABASE ${name}`);
  } catch (err) {
    console.log(`(no Postgres server at ${POSTGRES_ADMIN_URL}: ${(err as Error).message}; using PGlite)`);
    return null;
  } finally {
    await admin.end().catch(() => {});
  }
  const url = new URL(POSTGRES_ADMIN_URL);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    async drop() {
      const c = new pg.Client({ connectionString: POSTGRES_ADMIN_URL });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => {});
      await c.end();
    },
  };
}

/**
 * The server holds a descriptor per tunnel, so it needs `ulimit -n` above the fleet (children inherit
 * the limit; Node cannot raise it). Says so before starting rather than failing with EMFILE midway.
 */
export function checkDescriptorLimit(agents: number): void {
  const text = readFileSync("/proc/self/limits", "utf8");
  const soft = Number(/^Max open files\s+(\d+)/m.exec(text)?.[1] ?? Number.POSITIVE_INFINITY);
  if (soft < agents + 1024) {
    throw new Error(
      `ulimit -n is ${soft}: the server needs about ${agents + 1024}; raise it (ulimit -n ${agents + 4096})`,
    );
  }
}

// ---- the fleet ---------------------------------------------------------------------------------

/** Starts `count` agents in processes of `perProcess`; resolves once each process has them connected. */
export async function startAgents(
  serverUrl: string,
  token: string,
  count: number,
  o: { perProcess: number; transport: "ws" | "raw"; local: string; attemptLogDir?: string },
): Promise<Proc[]> {
  const waits: Promise<Proc>[] = [];
  for (let g = 0; g < Math.ceil(count / o.perProcess); g++) {
    const n = Math.min(o.perProcess, count - g * o.perProcess);
    const log = o.attemptLogDir ? join(o.attemptLogDir, `attempts-${g}.json`) : "";
    const args = [join(ROOT, "bench/fixtures/idle-agents.ts"), serverUrl, token, String(n), `fleet${g}`];
    waits.push(startNode([...args, o.transport, o.local, log], /^connected/, 300_000));
  }
  return Promise.all(waits);
}

/** The runner id of agent `i` of the fleet (as startAgents names them). */
export function runnerIdOf(i: number, perProcess: number): string {
  return `fleet${Math.floor(i / perProcess)}-${i % perProcess}`;
}

/** The tunnel count /healthz reports, or null when the server does not answer. */
export async function healthzTunnels(serverUrl: string): Promise<number | null> {
  try {
    const res = await fetch(`${serverUrl}/healthz`, { signal: AbortSignal.timeout(5000) });
    if (!res.ok) return null;
    return ((await res.json()) as { tunnels: number }).tunnels;
  } catch {
    return null;
  }
}

export async function waitForTunnels(serverUrl: string, n: number, timeoutMs = 300_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (((await healthzTunnels(serverUrl)) ?? 0) >= n) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`fewer than ${n} tunnels within ${timeoutMs} ms`);
}

export function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** One call through a tunnel to the target's /small; resolves with [status, ms]. */
export async function callThrough(
  serverUrl: string,
  key: string,
  runnerId: string,
): Promise<[number, number]> {
  const started = performance.now();
  try {
    const res = await fetch(`${serverUrl}/api/v1/revdial/${runnerId}/proxy/small`, {
      headers: { authorization: `Bearer ${key}` },
      signal: AbortSignal.timeout(60_000),
    });
    await res.arrayBuffer();
    return [res.status, performance.now() - started];
  } catch {
    return [0, performance.now() - started];
  }
}

// ---- the figures ---------------------------------------------------------------------------------

interface ConnStats {
  runner_id: string;
  rtt_ms: number | null;
  bytes_in: number;
  bytes_out: number;
}

async function connections(serverUrl: string, key: string): Promise<Map<string, ConnStats>> {
  const res = await fetch(`${serverUrl}/api/v1/revdial/connections`, {
    headers: { authorization: `Bearer ${key}` },
  });
  const list = (await res.json()) as ConnStats[];
  return new Map(list.map((c) => [c.runner_id, c]));
}

/**
 * Pings on schedule: every tunnel's link counters, read twice `waitMs` (more than one ping interval)
 * apart, must both have grown: the server sent its PING (bytes out) and the agent answered (bytes in).
 */
async function reportPings(serverUrl: string, key: string, waitMs: number, n: number): Promise<void> {
  const first = await connections(serverUrl, key);
  await new Promise((r) => setTimeout(r, waitMs));
  const second = await connections(serverUrl, key);
  let pinged = 0;
  let answered = 0;
  const rtts: number[] = [];
  for (const [id, b] of second) {
    const a = first.get(id);
    if (!a) continue;
    if (b.bytes_out > a.bytes_out) pinged++;
    if (b.bytes_in > a.bytes_in) answered++;
    if (b.rtt_ms !== null) rtts.push(b.rtt_ms);
  }
  rtts.sort((x, y) => x - y);
  const ok = pinged === n && answered === n;
  if (waitMs <= PING_INTERVAL_MS) console.log("(--ping-wait is not longer than the ping interval: no check)");
  console.log(
    `pings (interval ${PING_INTERVAL_MS / 1000} s), link counters read ${(waitMs / 1000).toFixed(0)} s apart`,
  );
  console.log(
    `  pinged ${pinged} / ${n}, answered ${answered} / ${n}: ${ok ? "on schedule" : "NOT on schedule"}; ` +
      `last ping RTT p50 ${pct(rtts, 50)?.toFixed(2)} ms, p99 ${pct(rtts, 99)?.toFixed(2)} ms, max ${rtts.at(-1)?.toFixed(2)} ms`,
  );
}

/**
 * Idle tunnels that have carried one call each: what a fleet costs once used (HPACK tables hold
 * the call's headers, buffers have been touched). Printed beside the idle figure; the bar is idle.
 */
async function reportUsedMemory(
  serverUrl: string,
  key: string,
  o: Options,
  inspector: Inspector,
  before: { rss: number; heap: number },
): Promise<void> {
  let next = 0;
  let failed = 0;
  const started = Date.now();
  const workers = Array.from({ length: 16 }, async () => {
    while (next < o.agents) {
      const [status] = await callThrough(serverUrl, key, runnerIdOf(next++, o.perProcess));
      if (status !== 200) failed++;
    }
  });
  await Promise.all(workers);
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  const after = await inspector.measure();
  const rss = (after.rss - before.rss) / o.agents;
  const heap = (after.heap - before.heap) / o.agents;
  console.log(
    `memory after one call through every tunnel (${seconds} s, ${failed} failed): ${(rss / 1024).toFixed(1)} KB per tunnel ` +
      `(JS heap + external ${(heap / 1024).toFixed(1)} KB)`,
  );
}

async function reportMetrics(serverUrl: string, n: number): Promise<void> {
  const text = await (await fetch(`${serverUrl}/metrics`)).text();
  const value = Number(/^revdial_tunnels_connected (\d+)/m.exec(text)?.[1] ?? Number.NaN);
  console.log(
    `/metrics revdial_tunnels_connected ${value} (expected ${n}: ${value === n ? "right" : "WRONG"})`,
  );
}

async function reportCalls(serverUrl: string, key: string, o: Options): Promise<void> {
  const times: number[] = [];
  const failures = new Map<number, number>();
  for (let i = 0; i < o.calls + 50; i++) {
    const id = runnerIdOf(Math.floor(Math.random() * o.agents), o.perProcess);
    const [status, ms] = await callThrough(serverUrl, key, id);
    if (i < 50) continue; // warm-up
    times.push(ms);
    if (status !== 200) failures.set(status, (failures.get(status) ?? 0) + 1);
  }
  times.sort((a, b) => a - b);
  const failed = [...failures].map(([s, c]) => `${c} x ${s || "error"}`).join(", ") || "none failed";
  console.log(`${o.calls} sequential 100-byte GETs, each through a random tunnel (after 50 of warm-up)`);
  console.log(
    `  p50 ${pct(times, 50).toFixed(2)} ms   p99 ${pct(times, 99).toFixed(2)} ms   max ${times.at(-1)?.toFixed(2)} ms   (${failed})`,
  );
}

export async function main(args: string[]): Promise<void> {
  const o = parseArgs(args);
  checkDescriptorLimit(o.agents);
  const dataDir = mkdtempSync(join(tmpdir(), "revdial-fleet-"));
  const procs: Proc[] = [];
  let server: ServerProc | null = null;
  let inspector: Inspector | null = null;
  const db = o.store === "postgres" ? await throwawayDatabase() : null;
  try {
    const target = await startNode([join(ROOT, "bench/fixtures/target.ts")], /^ready \d+/);
    procs.push(target);
    const extra = db ? ["--database-url", db.url] : [];
    server = await startServer(dataDir, "127.0.0.1:0", { inspect: true, extra });
    const key = readFileSync(join(dataDir, "admin.key"), "utf8").trim();
    if (!server.inspectorUrl) throw new Error("the server's inspector did not start");
    inspector = await Inspector.connect(server.inspectorUrl);
    // One call through the API first, so the baseline includes the routes' lazily built parts.
    await healthzTunnels(server.url);
    await connections(server.url, key);
    const before = await inspector.measure();

    const started = Date.now();
    const local = `127.0.0.1:${target.line.split(" ")[1]}`;
    procs.push(...(await startAgents(server.url, key, o.agents, { ...o, local })));
    await waitForTunnels(server.url, o.agents);
    const connectMs = Date.now() - started;
    const processes = Math.ceil(o.agents / o.perProcess);
    console.log(
      `revdial fleet benchmark (node ${process.versions.node}, ${o.agents} idle agents, ${o.transport}, ${processes} processes, store ${db ? "postgres" : "pglite"})`,
    );
    console.log(`connect: all ${o.agents} connected in ${(connectMs / 1000).toFixed(1)} s (started at once)`);

    await new Promise((r) => setTimeout(r, 2000));
    const after = await inspector.measure();
    const rss = (after.rss - before.rss) / o.agents;
    const heap = (after.heap - before.heap) / o.agents;
    console.log(
      `memory: server RSS ${(before.rss / 1e6).toFixed(1)} MB -> ${(after.rss / 1e6).toFixed(1)} MB after GC: ` +
        `${(rss / 1024).toFixed(1)} KB per tunnel (JS heap + external ${(heap / 1024).toFixed(1)} KB) ` +
        `(bar <= ${BAR_BYTES_PER_TUNNEL / 1024} KB: ${rss <= BAR_BYTES_PER_TUNNEL ? "met" : "NOT met"})`,
    );
    await reportUsedMemory(server.url, key, o, inspector, before);
    await reportMetrics(server.url, o.agents);
    await reportPings(server.url, key, o.pingWaitMs, o.agents);
    await reportCalls(server.url, key, o);
  } finally {
    inspector?.close();
    await Promise.all(procs.reverse().map((p) => p.stop()));
    await server?.stop();
    await db?.drop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

if (import.meta.main) await main(process.argv.slice(2));
