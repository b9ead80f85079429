// The wrk figures: req/s of 100-byte GETs at --connections (wrk -t2), the CPU each call cost the API
// and the agent process during that same run, and sequential latency on one connection. Each path
// runs on its own, one after another, against the same target.

import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { CpuMeter, commandLine } from "./tunnel-cpu.ts";
import type { Report } from "./tunnel-figures.ts";
import type { Options } from "./tunnel-options.ts";
import { type Path, ROOT } from "./tunnel-paths.ts";
import { latency, SequentialProbe } from "./tunnel-probe.ts";

const run = promisify(execFile);
/** wrk's own deadline per run is --duration; this bounds a wrk that hangs. */
const WRK_SLACK_MS = 30_000;

export interface LoadRun {
  rps: number;
  requests: number;
  p99ms: number;
  /** wrk's non-2xx and socket error lines, empty when none. */
  errors: string;
  /** Microseconds of CPU per call: the API (server) process and the agent process. */
  cpuServer: number | null;
  cpuAgent: number | null;
}

export async function hasWrk(): Promise<boolean> {
  return run("wrk", ["--version"]).then(
    () => true,
    // wrk --version exits 1 after printing its version; only a missing binary is an error here.
    (err: NodeJS.ErrnoException) => err.code !== "ENOENT",
  );
}

function wrkArgs(path: Path, base: string[]): string[] {
  const args = [...base];
  for (const [k, v] of Object.entries(path.headers)) args.push("-H", `${k}: ${v}`);
  return [...args, `${path.base}/small`];
}

/** A latency percentile from wrk --latency output, in ms. */
function wrkPercentile(out: string, label: string): number {
  const match = new RegExp(`${label}\\s+([\\d.]+)(us|ms|s)`).exec(out);
  const unit = match?.[2] === "us" ? 0.001 : match?.[2] === "s" ? 1000 : 1;
  return Number(match?.[1] ?? Number.NaN) * unit;
}

/**
 * One wrk run on `path`, with the CPU of its server and agent process read around it. A shorter
 * unmeasured run goes first (`--warmup`): the processes behind a path measured cold would count
 * their JIT compilation and first connections in its figures (measured here: the first tunnel path
 * of a run came out 20-35% dearer in CPU per call than the same path measured warm).
 */
export async function load(path: Path, o: Options): Promise<LoadRun> {
  const seconds = Math.round(o.durationMs / 1000);
  if (o.warmupMs > 0) {
    const warm = wrkArgs(path, ["-t2", `-c${o.connections}`, `-d${Math.round(o.warmupMs / 1000)}s`]);
    await run("wrk", warm, { timeout: o.warmupMs + WRK_SLACK_MS });
  }
  const args = wrkArgs(path, ["-t2", `-c${o.connections}`, `-d${seconds}s`, "--latency"]);
  const cpu = new CpuMeter([path.serverPid, path.agentPid]);
  const { stdout } = await run("wrk", args, { timeout: o.durationMs + WRK_SLACK_MS });
  const requests = Number(/(\d+) requests in/.exec(stdout)?.[1] ?? 0);
  const [cpuServer, cpuAgent] = cpu.perCall(requests);
  const errors = [/Non-2xx or 3xx responses: \d+/, /Socket errors: [^\n]+/]
    .map((re) => re.exec(stdout)?.[0])
    .filter(Boolean)
    .join("; ");
  return {
    rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(stdout)?.[1] ?? 0),
    requests,
    p99ms: wrkPercentile(stdout, "99%"),
    errors,
    cpuServer,
    cpuAgent,
  };
}

/**
 * One connection, one request at a time, 2,200 requests (the first 200 warm up; wrk's figures count
 * them too): wrk with bench/fixtures/sequential.lua, the C client the reference figures were taken
 * with. Without wrk, the bench's lean client (2,000 after 200 of warm-up).
 */
export async function sequential(path: Path, wrk: boolean): Promise<{ p50: number; p99: number }> {
  if (wrk) {
    const script = join(ROOT, "bench/fixtures/sequential.lua");
    const args = wrkArgs(path, ["-t1", "-c1", "-d5s", "--latency", "-s", script]);
    const { stdout } = await run("wrk", args, { timeout: 5000 + WRK_SLACK_MS });
    return { p50: wrkPercentile(stdout, "50%"), p99: wrkPercentile(stdout, "99%") };
  }
  const probe = new SequentialProbe(path);
  try {
    return latency(await probe.run({ warmup: 200, calls: 2000, maxMs: 30_000 }));
  } finally {
    probe.close();
  }
}

/** The processes a path's CPU figures are read from, for the report: `pid N (argv…)`. */
export function describePids(path: Path): string {
  const show = (pid: number | null) => {
    const argv = commandLine(pid) ?? "gone";
    const short = argv.replace(`${ROOT}`, "").replace(process.execPath, "node");
    return `pid ${pid} (${short.length > 60 ? `${short.slice(0, 57)}...` : short})`;
  };
  return `API ${show(path.serverPid)}, agent ${show(path.agentPid)}`;
}

/**
 * req/s and CPU per call, every path in turn. Prints the sections `o.only` asks for and records
 * their figures; gives back each path's run for the v1 comparison.
 */
export async function reportLoad(paths: Path[], o: Options, report: Report): Promise<Map<Path, LoadRun>> {
  const runs = new Map<Path, LoadRun>();
  for (const path of paths) runs.set(path, await load(path, o));
  const direct = runs.get(paths[0]) as LoadRun;
  if (o.only.has("req")) {
    console.log(`100-byte GET, ${o.connections} connections, ${o.durationMs / 1000} s per path (wrk -t2)`);
    for (const [path, r] of runs) {
      const note = `${r.rps.toFixed(0)} req/s, p99 ${r.p99ms.toFixed(2)} ms${r.errors ? `, ${r.errors}` : ""}`;
      const isDirect = path.kind === "direct";
      report.add({
        figure: `req/s at ${o.connections} connections`,
        path: path.name,
        value: isDirect ? r.rps : r.rps / direct.rps,
        unit: isDirect ? "req/s" : "x direct",
        bar: path.kind === "tunnel" ? "reqRatio" : null,
        detail: { rps: r.rps, requests: r.requests, p99_ms: r.p99ms, errors: r.errors || null },
        note: isDirect ? `p99 ${r.p99ms.toFixed(2)} ms` : note,
      });
    }
    console.log("");
  }
  if (o.only.has("cpu")) reportCpu(runs, report);
  return runs;
}

function reportCpu(runs: Map<Path, LoadRun>, report: Report): void {
  console.log(
    "CPU per call during those runs: utime+stime from /proc/PID/stat, over the requests wrk completed",
  );
  for (const [path, r] of runs) {
    if (path.kind === "direct") continue;
    const bars = path.kind === "tunnel";
    console.log(`  ${path.name}: ${describePids(path)}`);
    report.add({
      figure: "CPU per call, API",
      path: path.name,
      label: "API",
      value: r.cpuServer,
      unit: "us",
      bar: bars ? "cpuApi" : null,
      detail: { requests: r.requests },
    });
    report.add({
      figure: "CPU per call, agent",
      path: path.name,
      label: "agent",
      value: r.cpuAgent,
      unit: "us",
      bar: bars ? "cpuAgent" : null,
      detail: { requests: r.requests },
    });
  }
  console.log("");
}

export async function reportSequential(paths: Path[], wrk: boolean, report: Report): Promise<void> {
  const tool = wrk ? "wrk, 1 connection" : "the bench's keep-alive client, no wrk";
  console.log(`sequential 100-byte GET, 2,000 requests after 200 of warm-up (${tool})`);
  for (const path of paths) {
    const s = await sequential(path, wrk);
    report.add({
      figure: "sequential p50",
      path: path.name,
      value: s.p50,
      unit: "ms",
      bar: path.kind === "tunnel" ? "seqP50" : null,
      detail: { p50_ms: s.p50, p99_ms: s.p99 },
      note: `p99 ${s.p99.toFixed(3)} ms`,
    });
  }
  console.log("");
}

/**
 * The v1 figure: the Go-like client's req/s on revdial over the same client's req/s on the Go
 * reference server, transport by transport. Without the Go reference the row says so.
 */
export function reportV1VsGo(runs: Map<Path, LoadRun>, o: Options, report: Report, why: string | null): void {
  const v1 = [...runs.keys()].filter((p) => p.kind === "v1");
  if (v1.length === 0) return;
  console.log(
    `v1 (the Go-like client) req/s on revdial over the same client on the Go server, ${o.connections} connections`,
  );
  for (const path of v1) {
    const go = [...runs.keys()].find((p) => p.name === `go/${path.name}`);
    const mine = runs.get(path) as LoadRun;
    const theirs = go ? (runs.get(go) as LoadRun) : null;
    report.add({
      figure: "v1 client req/s vs Go server",
      path: path.name,
      value: theirs ? mine.rps / theirs.rps : null,
      unit: "x Go",
      bar: "v1VsGo",
      detail: { rps: mine.rps, go_rps: theirs?.rps ?? null },
      note: theirs
        ? `${mine.rps.toFixed(0)} vs ${theirs.rps.toFixed(0)} req/s`
        : `${mine.rps.toFixed(0)} req/s on revdial; no Go figure: ${why ?? `go/${path.name} did not run`}`,
    });
  }
  console.log("");
}
