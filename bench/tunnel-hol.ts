// The head-of-line rows: how long a small call waits when something else shares its tunnel.
// 1. A 64 MiB body in flight on the same runner id: curl reads 64 MiB bodies back to back through the
//    tunnel for --hol-window while the bench's lean client makes 100-byte GETs one at a time on the
//    same runner id. Only calls that STARTED while a body was flowing count (from curl's first byte to
//    its last, from curl's own timings), so gaps between bodies do not dilute the figure and a call
//    stuck behind a body until it ends still counts.
// 2. 1,000 idle tunnels pinging: on a server whose ping interval is --hol-ping (bench/fixtures/
//    api-server.ts; `revdial server` has no flag for it and pings every 15 s), 100-byte GETs one at a
//    time through each path while the idle agents are connected, over a few ping intervals; the link
//    counters of the idle tunnels, read before and after, say how many were pinged meanwhile.
// Each row also prints the same client's figure on a quiet tunnel, just before, to read it against.

import { curlBig } from "./tunnel-bulk.ts";
import type { Report } from "./tunnel-figures.ts";
import { descriptorShortfall, startIdleAgents } from "./tunnel-idle.ts";
import type { Options } from "./tunnel-options.ts";
import type { Path, Transport } from "./tunnel-paths.ts";
import type { Plan } from "./tunnel-plan.ts";
import { type Latency, latency, type Sample, SequentialProbe } from "./tunnel-probe.ts";
import {
  type ApiServer,
  connections,
  Rig,
  startAgents,
  startApiServer,
  startTarget,
  waitForTunnelCount,
} from "./tunnel-rig.ts";

/** Bodies per path at most, whatever the window (at 20 MB/s a body takes 3 s). */
const MAX_BODIES = 40;
/** Calls kept for a quiet figure, after QUIET_WARMUP (enough for the JIT: fewer read high). */
const QUIET_CALLS = 500;
const QUIET_WARMUP = 500;
/** The idle row samples each path for this many ping intervals, within [2 s, 10 s]. */
const PING_ROUNDS = 3;

/** The same client on the same path with nothing else going on: QUIET_CALLS, or for `maxMs`. */
async function quiet(probe: SequentialProbe, maxMs?: number): Promise<Latency> {
  const calls = maxMs === undefined ? QUIET_CALLS : 1_000_000;
  return latency(await probe.run({ warmup: QUIET_WARMUP, calls, maxMs: maxMs ?? 20_000 }));
}

function latencyNote(l: Latency): string {
  return `p99 ${l.p99.toFixed(2)} ms, max ${l.max.toFixed(1)} ms, ${l.n} calls${l.failed ? `, ${l.failed} FAILED` : ""}`;
}

/** Bodies back to back for `windowMs` (at least one); the intervals during which each one flowed. */
async function flowBodies(path: Path, windowMs: number) {
  const flows: Array<[number, number]> = [];
  const speeds: number[] = [];
  let failed = 0;
  const until = performance.now() + windowMs;
  while (flows.length + failed < MAX_BODIES && (flows.length + failed === 0 || performance.now() < until)) {
    const r = await curlBig(path);
    if (r.error) failed++;
    else {
      flows.push([r.exitedAt - (r.total - r.firstByte) * 1000, r.exitedAt]);
      speeds.push(r.speed / 1e6);
    }
  }
  return { flows, speeds, failed };
}

async function holBulk(path: Path, o: Options, report: Report): Promise<void> {
  const probe = new SequentialProbe(path);
  try {
    const calm = await quiet(probe);
    let flowing = true;
    const bulk = flowBodies(path, o.holWindowMs).finally(() => {
      flowing = false;
    });
    const samples = await probe.run({
      calls: 1_000_000,
      maxMs: o.holWindowMs + 120_000,
      stop: () => !flowing,
    });
    const { flows, speeds, failed } = await bulk;
    const during = samples.filter((s) => flows.some(([a, b]) => s.start >= a && s.start < b));
    const l = latency(during);
    const mbps = speeds.reduce((a, b) => a + b, 0) / Math.max(1, speeds.length);
    report.add({
      figure: "small-call p50, 64 MiB body in flight",
      path: path.name,
      value: l.n > 0 ? l.p50 : null,
      unit: "ms",
      bar: "holP50",
      detail: { ...l, quiet: calm, bodies: flows.length, failed_bodies: failed, body_mb_s: mbps },
      note:
        `${latencyNote(l)} while a body flowed; ${flows.length} bodies at ${mbps.toFixed(0)} MB/s` +
        `${failed ? `, ${failed} FAILED` : ""}; quiet p50 ${calm.p50.toFixed(3)} ms`,
    });
  } finally {
    probe.close();
  }
}

/** Idle tunnels whose bytes out grew between two readings: the server pinged them. */
function pinged(
  before: Map<string, { bytes_out: number }>,
  after: Map<string, { bytes_out: number }>,
  prefix: string,
) {
  let n = 0;
  for (const [id, b] of after) {
    const a = before.get(id);
    if (id.startsWith(prefix) && a && b.bytes_out > a.bytes_out) n++;
  }
  return n;
}

/** The idle fleet, spread evenly over every protocol and transport the paths use. */
async function startIdleFleet(rig: Rig, server: ApiServer, plan: Plan, count: number): Promise<void> {
  const kinds: Array<[Plan["agentProtocols"][number], Transport]> = [];
  for (const p of plan.agentProtocols) for (const t of ["ws", "raw"] as const) kinds.push([p, t]);
  const procs = await Promise.all(
    kinds.map(([protocol, transport], i) => {
      const n = Math.floor(count / kinds.length) + (i < count % kinds.length ? 1 : 0);
      const o = {
        prefix: `holidle-${protocol}-${transport}-`,
        transport,
        protocol: plan.protocolFlag ? protocol : null,
      };
      return startIdleAgents(server.url, server.key, n, o);
    }),
  );
  for (const p of procs.flat()) rig.own(p);
}

async function holIdle(plan: Plan, o: Options, report: Report): Promise<void> {
  const rig = new Rig();
  try {
    const target = await startTarget(rig);
    const server = await startApiServer(rig, { pingIntervalMs: o.holPingMs });
    const { paths, notes } = await startAgents(rig, server, target, plan);
    for (const n of notes) report.skip(`idle head-of-line: ${n}`);
    const windowMs = Math.min(10_000, Math.max(2000, PING_ROUNDS * o.holPingMs));
    const calm = new Map<Path, Latency>();
    for (const path of paths) {
      const probe = new SequentialProbe(path);
      calm.set(path, await quiet(probe, windowMs));
      probe.close();
    }
    await startIdleFleet(rig, server, plan, o.holIdle);
    await waitForTunnelCount(server.url, o.holIdle + paths.length);
    // One interval so that every idle tunnel's pings are under way before sampling starts.
    await new Promise((r) => setTimeout(r, o.holPingMs));
    for (const path of paths) {
      const before = await connections(server);
      const probe = new SequentialProbe(path);
      const samples: Sample[] = await probe.run({ calls: 1_000_000, maxMs: windowMs });
      probe.close();
      const after = await connections(server);
      const l = latency(samples);
      const q = calm.get(path) as Latency;
      const seen = pinged(before, after, "holidle-");
      report.add({
        figure: `small-call p50, ${o.holIdle} idle tunnels pinging`,
        path: path.name,
        value: l.n > 0 ? l.p50 : null,
        unit: "ms",
        bar: "holP50",
        detail: {
          ...l,
          quiet: q,
          idle: o.holIdle,
          ping_interval_ms: o.holPingMs,
          pinged: seen,
          window_ms: windowMs,
        },
        note:
          `${latencyNote(l)} in ${(windowMs / 1000).toFixed(0)} s; ${seen} of ${o.holIdle} idle tunnels pinged ` +
          `meanwhile (every ${o.holPingMs} ms); quiet p50 ${q.p50.toFixed(3)} ms`,
      });
    }
  } finally {
    await rig.stop();
  }
}

/** Both rows: row 1 on the main run's tunnel paths, row 2 on a server of its own. */
export async function reportHol(paths: Path[], plan: Plan, o: Options, report: Report): Promise<void> {
  const tunnels = paths.filter((p) => p.kind === "tunnel");
  console.log(
    `head-of-line 1: 100-byte GETs one at a time on the same runner id while 64 MiB bodies flow (curl, back to back for ${o.holWindowMs / 1000} s)`,
  );
  for (const path of tunnels) await holBulk(path, o, report);
  if (paths.some((p) => p.kind === "v1"))
    console.log("  (v1: not measured; each call has a connection of its own)");
  console.log("");
  console.log(
    `head-of-line 2: 100-byte GETs one at a time while ${o.holIdle} idle agents are connected and pinged every ${o.holPingMs} ms (bench/fixtures/api-server.ts)`,
  );
  const short = descriptorShortfall(o.holIdle);
  if (o.holIdle === 0) report.skip("idle head-of-line: --hol-idle 0");
  else if (short) report.skip(`idle head-of-line: ${short} (raise it: ulimit -n ${o.holIdle + 4096})`);
  else if (tunnels.length > 0) await holIdle(plan, o, report);
  console.log("");
}
