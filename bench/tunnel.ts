// `npm run bench -- tunnel`: every figure of the hot-path issue, each with its bar, in one run. A
// target HTTP server, `revdial server` and one `revdial agent` per protocol and transport run as
// separate processes on 127.0.0.1; the same load generators (wrk, curl, a lean keep-alive client) hit
// the target directly ("direct") and through /api/v1/revdial/{id}/proxy/…, and every ratio is to
// direct in the same run. bench/README.md says what each figure measures and how.
//
// The parts, in order (--only picks some): req (req/s at --connections) and cpu (CPU per call, read
// during those runs), seq (sequential p50/p99), bulk (64 MiB, interleaved with direct), hol (a small
// call's latency beside a 64 MiB body, and beside 1,000 pinging idle tunnels), idle (server memory
// per idle tunnel). The files: tunnel-options (flags), tunnel-plan (what can run), tunnel-rig (the
// processes), tunnel-load / tunnel-bulk / tunnel-hol / tunnel-idle (the figures), tunnel-figures (the
// bars and the report).

import { loadavg } from "node:os";
import { reportBulk } from "./tunnel-bulk.ts";
import { Report } from "./tunnel-figures.ts";
import { startGoPaths } from "./tunnel-go-reference.ts";
import { reportHol } from "./tunnel-hol.ts";
import { reportIdle } from "./tunnel-idle.ts";
import { hasWrk, reportLoad, reportSequential, reportV1VsGo } from "./tunnel-load.ts";
import { type Options, parseOptions } from "./tunnel-options.ts";
import type { Path } from "./tunnel-paths.ts";
import { makePlan, type Plan } from "./tunnel-plan.ts";
import { Rig, startAgents, startApiServer, startTarget, startV1Agents } from "./tunnel-rig.ts";

function loadAverage(): string {
  return loadavg()
    .map((l) => l.toFixed(2))
    .join(" ");
}

/** The main run's paths: direct, our agents, the v1 client, the Go reference. */
async function startPaths(
  rig: Rig,
  plan: Plan,
  report: Report,
): Promise<{ paths: Path[]; goWhy: string | null }> {
  const target = await startTarget(rig);
  const server = await startApiServer(rig);
  const ours = await startAgents(rig, server, target, plan);
  const paths = [target.direct, ...ours.paths];
  const notes = [...ours.notes];
  if (plan.v1Agent) {
    const v1 = await startV1Agents(rig, server, target, plan.v1Agent);
    paths.push(...v1.paths);
    notes.push(...v1.notes);
  }
  let goWhy: string | null = plan.go ? null : "bench/fixtures/go-reference/ not built";
  if (plan.go) {
    const go = await startGoPaths(rig, target, plan.go, plan.v1Agent);
    paths.push(...go.paths);
    notes.push(...go.notes);
    if (go.paths.length === 0) goWhy = "the Go reference did not run";
  }
  for (const n of notes) report.skip(n);
  if (notes.length > 0) console.log("");
  return { paths, goWhy };
}

function printHeader(o: Options, plan: Plan): void {
  console.log(
    `revdial tunnel benchmark (node ${process.versions.node}, load average ${loadAverage()}, ` +
      `${o.connections} connections, wrk ${o.durationMs / 1000} s, ${o.bulkRuns} bulk runs)`,
  );
  const protocols = [...plan.agentProtocols, ...(plan.v1Agent ? ["v1"] : [])].join(", ") || "none";
  console.log(`protocols: ${protocols}; parts: ${[...o.only].join(", ")}`);
  console.log(
    "direct = the target itself; `vN ws|raw` = through the API and an agent on that protocol and transport",
  );
  console.log("");
}

async function measureMain(paths: Path[], goWhy: string | null, plan: Plan, o: Options, report: Report) {
  const wrk = await hasWrk();
  if (!wrk && (o.only.has("req") || o.only.has("cpu")))
    report.skip("req/s and CPU per call: wrk is not installed");
  if (wrk && (o.only.has("req") || o.only.has("cpu"))) {
    const runs = await reportLoad(paths, o, report);
    if (o.only.has("req")) reportV1VsGo(runs, o, report, goWhy);
  }
  if (o.only.has("seq")) await reportSequential(paths, wrk, report);
  if (o.only.has("bulk")) await reportBulk(paths, o.bulkRuns, report);
  if (o.only.has("hol")) await reportHol(paths, plan, o, report);
}

export async function main(args: string[]): Promise<void> {
  let o: Options;
  try {
    o = parseOptions(args);
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    process.exitCode = 2;
    return;
  }
  const startedAt = Date.now();
  const plan = makePlan(o);
  const report = new Report();
  printHeader(o, plan);
  for (const n of plan.notes) report.skip(n);
  if (plan.notes.length > 0) console.log("");
  const needsMain = ["req", "cpu", "seq", "bulk", "hol"].some((p) => o.only.has(p as never));
  const rig = new Rig();
  try {
    if (needsMain && plan.agentProtocols.length + (plan.v1Agent ? 1 : 0) > 0) {
      const { paths, goWhy } = await startPaths(rig, plan, report);
      await measureMain(paths, goWhy, plan, o, report);
    }
  } finally {
    await rig.stop();
  }
  if (o.only.has("idle")) {
    if (o.idle === 0) report.skip("memory per idle tunnel: --idle 0");
    else await reportIdle(o.idle, plan, report);
  }
  report.printSummary();
  console.log(`(${((Date.now() - startedAt) / 1000).toFixed(0)} s)`);
  if (o.json) {
    report.writeJson(o.json, {
      node: process.versions.node,
      date: new Date(startedAt).toISOString(),
      load_average: loadAverage(),
      options: { ...o, only: [...o.only] },
      protocols_run: [...plan.agentProtocols, ...(plan.v1Agent ? ["v1"] : [])],
      seconds: (Date.now() - startedAt) / 1000,
    });
    console.log(`figures written to ${o.json}`);
  }
}

if (import.meta.main) await main(process.argv.slice(2));
