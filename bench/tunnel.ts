// `npm run bench -- tunnel`: the tunnel path against the direct path, side by side in one run.
// A target HTTP server, the revdial server and an agent run as separate processes on 127.0.0.1;
// the same load generators (wrk, curl, a keep-alive Node client) hit the target directly and
// through /api/v1/revdial/{id}/proxy/…. Prints figures, ratios and the bars.
// Options: --duration 10s (wrk run), --connections 32, --idle 2000 (idle agents; 0 skips),
// --only idle (just the memory figure).

import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseDuration } from "../src/common/duration.ts";
import { type Proc, type ProcWithStdin, startNode, startNodeWithStdin } from "./procs.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const CLI = join(ROOT, "src/cli/main.ts");
const RUNNER_TOKEN = "bench-runner-token-0123456789";

interface Options {
  durationMs: number;
  connections: number;
  idle: number;
  only: string | null;
}

function parseArgs(args: string[]): Options {
  const o: Options = { durationMs: 10_000, connections: 32, idle: 2000, only: null };
  for (let i = 0; i < args.length; i += 2) {
    const [flag, value] = [args[i], args[i + 1] ?? ""];
    if (flag === "--duration") o.durationMs = parseDuration(value);
    else if (flag === "--connections") o.connections = Number(value);
    else if (flag === "--idle") o.idle = Number(value);
    else if (flag === "--only") o.only = value;
    else throw new Error(`unknown option ${flag}`);
  }
  return o;
}

interface Path {
  name: string;
  base: string;
  headers: Record<string, string>;
}

export async function main(args: string[]): Promise<void> {
  const o = parseArgs(args);
  if (o.only === "idle") {
    for (const transport of ["ws", "raw"] as const) await reportIdle(o.idle, transport);
    return;
  }
  const dataDir = mkdtempSync(join(tmpdir(), "revdial-bench-"));
  const procs: Proc[] = [];
  try {
    const target = await startNode([join(ROOT, "bench/fixtures/target.ts")], /^ready \d+/);
    procs.push(target);
    const targetPort = Number(target.line.split(" ")[1]);
    const server = await startServerProc(dataDir);
    procs.push(server);
    const serverUrl = server.line.slice("listening on ".length).trim();
    const adminKey = readFileSync(join(dataDir, "admin.key"), "utf8").trim();
    for (const transport of ["ws", "raw"] as const) {
      procs.push(
        await startAgentProc(serverUrl, `127.0.0.1:${targetPort}`, transport, join(dataDir, "admin.key")),
      );
    }
    await waitForTunnels(serverUrl, adminKey, 2);

    const direct: Path = { name: "direct", base: `http://127.0.0.1:${targetPort}`, headers: {} };
    const tunnels: Path[] = (["ws", "raw"] as const).map((transport) => ({
      name: `tunnel ${transport}`,
      base: `${serverUrl}/api/v1/revdial/wolf-bench-${transport}/proxy`,
      headers: { authorization: `Bearer ${adminKey}` },
    }));
    console.log(
      `revdial tunnel benchmark (node ${process.versions.node}, ${o.connections} connections, wrk ${o.durationMs / 1000}s)`,
    );
    console.log(
      "direct = the target itself; tunnel ws / raw = through the API and an agent on each transport",
    );
    console.log("");
    await reportSequential(direct, tunnels);
    reportThroughput(direct, tunnels, o);
    reportLargeBody(direct, tunnels);
    if (o.idle > 0) {
      for (const transport of ["ws", "raw"] as const) await reportIdle(o.idle, transport);
    }
  } finally {
    await Promise.all(procs.reverse().map((p) => p.stop()));
    rmSync(dataDir, { recursive: true, force: true });
  }
}

function startServerProc(dataDir: string): Promise<Proc> {
  // Its idle-memory part registers thousands of tunnels with the admin's key: no per-user quota here.
  const args = ["server", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--quota-tunnels", "1000000"];
  return startNode([CLI, ...args, "--log-level", "warn"], /^listening on /);
}

/** An agent registering `wolf-bench-*` with the admin's key (read from its file, not argv). */
function startAgentProc(
  serverUrl: string,
  local: string,
  transport: "ws" | "raw",
  keyFile: string,
): Promise<Proc> {
  return startNode(
    [
      CLI,
      "agent",
      "--transport",
      transport,
      "--server",
      serverUrl,
      "--runner-id",
      `wolf-bench-${transport}`,
      "--token-file",
      keyFile,
      "--local",
      local,
      "--log-level",
      "info",
    ],
    null,
  );
}

async function waitForTunnels(
  serverUrl: string,
  adminKey: string,
  n: number,
  timeoutMs = 120_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const res = await fetch(`${serverUrl}/healthz`).catch(() => null);
    const body = res ? ((await res.json()) as { tunnels: number }) : { tunnels: 0 };
    if (body.tunnels >= n) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(
    `only some of ${n} tunnels connected within ${timeoutMs} ms (key ${adminKey.slice(0, 3)}…)`,
  );
}

// ---- sequential latency ----------------------------------------------------------------------

/**
 * One connection, one request at a time, 2,200 requests (the first 200 warm up; wrk reports them
 * all): wrk with bench/fixtures/sequential.lua, the C client the reference figures were taken with.
 * Without wrk, a keep-alive Node client (which adds its own ~0.15 ms to every figure).
 */
async function sequential(path: Path): Promise<{ p50: number; p99: number; tool: string }> {
  if (!spawnSync("wrk", ["--version"]).error) {
    const args = ["-t1", "-c1", "-d5s", "--latency", "-s", join(ROOT, "bench/fixtures/sequential.lua")];
    for (const [k, v] of Object.entries(path.headers)) args.push("-H", `${k}: ${v}`);
    const out = execFileSync("wrk", [...args, `${path.base}/small`], { encoding: "utf8" });
    return { p50: wrkPercentile(out, "50%"), p99: wrkPercentile(out, "99%"), tool: "wrk, 1 connection" };
  }
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const times: number[] = [];
  for (let i = 0; i < 2200; i++) {
    const started = process.hrtime.bigint();
    await new Promise<void>((resolve, reject) => {
      http
        .get(`${path.base}/small`, { agent, headers: path.headers }, (res) => {
          res.resume();
          res.on("end", resolve);
        })
        .on("error", reject);
    });
    if (i >= 200) times.push(Number(process.hrtime.bigint() - started) / 1e6);
  }
  agent.destroy();
  times.sort((a, b) => a - b);
  return { p50: pct(times, 50), p99: pct(times, 99), tool: "Node keep-alive client" };
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** A latency percentile from wrk --latency output, in ms. */
function wrkPercentile(out: string, label: string): number {
  const match = new RegExp(`${label}\\s+([\\d.]+)(us|ms|s)`).exec(out);
  const unit = match?.[2] === "us" ? 0.001 : match?.[2] === "s" ? 1000 : 1;
  return Number(match?.[1] ?? Number.NaN) * unit;
}

async function reportSequential(direct: Path, tunnels: Path[]): Promise<void> {
  const d = await sequential(direct);
  const ts: Array<{ p50: number; p99: number }> = [];
  for (const t of tunnels) ts.push(await sequential(t));
  console.log(`sequential 100-byte GET, 2,000 requests after 200 of warm-up (${d.tool})`);
  row(
    "p50",
    [d, ...ts].map((x) => `${x.p50.toFixed(3)} ms`),
    `${ts.map((x) => (x.p50 <= 0.35 ? "met" : "NOT met")).join(" / ")} (bar <= 0.35 ms)`,
  );
  row(
    "p99",
    [d, ...ts].map((x) => `${x.p99.toFixed(3)} ms`),
    "",
  );
  console.log("");
}

// ---- concurrent load (wrk) ---------------------------------------------------------------------

interface WrkResult {
  rps: number;
  p99ms: number;
  errors: string;
}

function wrk(path: Path, o: Options): WrkResult | null {
  const which = spawnSync("wrk", ["--version"]);
  if (which.error) return null;
  const args = ["-t2", `-c${o.connections}`, `-d${Math.round(o.durationMs / 1000)}s`, "--latency"];
  for (const [k, v] of Object.entries(path.headers)) args.push("-H", `${k}: ${v}`);
  const out = execFileSync("wrk", [...args, `${path.base}/small`], { encoding: "utf8" });
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? 0);

  const errors = /Non-2xx or 3xx responses: (\d+)|Socket errors: ([^\n]+)/.exec(out)?.[0] ?? "";
  return { rps, p99ms: wrkPercentile(out, "99%"), errors };
}

function reportThroughput(direct: Path, tunnels: Path[], o: Options): void {
  const d = wrk(direct, o);
  const ts = tunnels.map((t) => wrk(t, o));
  console.log(`100-byte GET, ${o.connections} connections, ${o.durationMs / 1000} s (wrk)`);
  if (!d || ts.some((t) => !t)) {
    console.log("  wrk is not installed (apt-get install wrk); skipped");
    console.log("");
    return;
  }
  const results = ts as WrkResult[];
  const ratios = results.map((t) => t.rps / d.rps);
  row(
    "req/s",
    [d, ...results].map((x) => x.rps.toFixed(0)),
    `ratio ${ratios.map((r) => r.toFixed(3)).join(" / ")} (bar >= 0.15: ${ratios.map((r) => (r >= 0.15 ? "met" : "NOT met")).join(" / ")})`,
  );
  row(
    "p99",
    [d, ...results].map((x) => `${x.p99ms.toFixed(2)} ms`),
    "",
  );
  for (const [i, x] of [d, ...results].entries()) {
    if (x.errors) console.log(`  errors (${["direct", ...tunnels.map((t) => t.name)][i]}): ${x.errors}`);
  }
  console.log("");
}

// ---- one large body ------------------------------------------------------------------------------

function curlSpeed(path: Path): number {
  const args = ["-s", "-o", "/dev/null", "-w", "%{speed_download}"];
  for (const [k, v] of Object.entries(path.headers)) args.push("-H", `${k}: ${v}`);
  const runs: number[] = [];
  for (let i = 0; i < 3; i++)
    runs.push(Number(execFileSync("curl", [...args, `${path.base}/big`], { encoding: "utf8" })));
  return runs.sort((a, b) => a - b)[1] / 1e6;
}

function reportLargeBody(direct: Path, tunnels: Path[]): void {
  const d = curlSpeed(direct);
  const ts = tunnels.map((t) => curlSpeed(t));
  const ratios = ts.map((t) => t / d);
  console.log("one 64 MiB GET (curl, median of 3)");
  row(
    "MB/s",
    [d, ...ts].map((x) => x.toFixed(0)),
    `ratio ${ratios.map((r) => r.toFixed(3)).join(" / ")} (bar >= 0.10: ${ratios.map((r) => (r >= 0.1 ? "met" : "NOT met")).join(" / ")})`,
  );
  console.log("");
}

// ---- idle tunnels -----------------------------------------------------------------------------------

/**
 * Server memory per idle tunnel, measured on a bare tunnel server (bench/fixtures/tunnel-server.ts:
 * the same endpoint and registry, no store), with a full GC before each reading: the embedded
 * database's heap moves by more than thousands of tunnels cost, and would drown the figure.
 */
async function reportIdle(count: number, transport: "ws" | "raw"): Promise<void> {
  const procs: Proc[] = [];
  try {
    const server = await startNodeWithStdin(
      ["--expose-gc", join(ROOT, "bench/fixtures/tunnel-server.ts"), RUNNER_TOKEN],
      /^listening on /,
    );
    procs.push(server);
    const serverUrl = server.line.slice("listening on ".length).trim();
    const before = await measure(server);
    const perProc = 500;
    const started = Date.now();
    const waits: Promise<Proc>[] = [];
    for (let g = 0; g < Math.ceil(count / perProc); g++) {
      const n = Math.min(perProc, count - g * perProc);
      const args = [
        join(ROOT, "bench/fixtures/idle-agents.ts"),
        serverUrl,
        RUNNER_TOKEN,
        String(n),
        `wolf-idle${g}`,
        transport,
      ];
      waits.push(startNode(args, /^connected/, 180_000));
    }
    procs.push(...(await Promise.all(waits)));
    await waitForTunnels(serverUrl, "", count);
    const connectMs = Date.now() - started;
    await new Promise((r) => setTimeout(r, 2000));
    const after = await measure(server);
    const rss = (after.rss - before.rss) / count;
    const heap = (after.heap - before.heap) / count;
    console.log(
      `${count} idle agents (${transport}) in ${waits.length} processes, connected in ${(connectMs / 1000).toFixed(1)} s`,
    );
    console.log(
      `  server RSS ${(before.rss / 1e6).toFixed(1)} MB -> ${(after.rss / 1e6).toFixed(1)} MB: ${(rss / 1024).toFixed(1)} KB per tunnel (JS heap + buffers ${(heap / 1024).toFixed(1)} KB) (bar <= 32 KB: ${rss <= 32 * 1024 ? "met" : "NOT met"})`,
    );
  } finally {
    await Promise.all(procs.reverse().map((p) => p.stop()));
  }
}

async function measure(server: ProcWithStdin): Promise<{ rss: number; heap: number }> {
  const line = await server.ask("measure", /^rss /);
  const [, rss, , heap] = line.split(" ");
  return { rss: Number(rss), heap: Number(heap) };
}

function row(label: string, cells: string[], note: string): void {
  const names = ["direct", "tunnel ws", "tunnel raw"];
  const text = cells.map((c, i) => `${names[i] ?? ""} ${c.padStart(11)}`).join("   ");
  console.log(`  ${label.padEnd(6)} ${text}   ${note}`);
}

if (import.meta.main) await main(process.argv.slice(2));
