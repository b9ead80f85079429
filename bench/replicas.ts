// `npm run bench -- replicas`: three `revdial server --replica-id` processes on a throwaway Postgres
// database behind nginx (the block of docs/replicas.md; test/replicas/cluster-harness.ts runs it).
// Prints, in one run:
// 1. p50/p99 and req/s of a call through the admin proxy answered by the replica holding the tunnel
//    (local) and by another replica (forwarded over the peer link): the bar is at most 0.3 ms more
//    p50 for the hop. Sequential calls (latency), then --concurrency calls at once (throughput),
//    local and forwarded rounds interleaved so that drift hits both alike.
// 2. kill -9 of the replica holding the most of --tunnels idle tunnels (default 3,000, connected
//    through nginx): the time until every one of them is live again on the two others, from the
//    directory (a tunnel is back when its runner's row names another replica).
// Options: --calls 3000, --concurrency 16, --tunnels 3000, --per-process 1000. Postgres at
// REVDIAL_TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test).

import { readFileSync } from "node:fs";
import http from "node:http";
import { cpus, loadavg } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { TargetMap } from "../src/agent/target-map.ts";
import { AgentClient } from "../src/agent/tunnel-client.ts";
import { silentLogger } from "../src/common/logger.ts";
import { Cluster, clusterUnavailable, type Replica } from "../test/replicas/cluster-harness.ts";
import { type Proc, startNode } from "./procs.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const HOP_BAR_MS = 0.3;

interface Options {
  calls: number;
  concurrency: number;
  tunnels: number;
  perProcess: number;
}

function parseArgs(args: string[]): Options {
  const o: Options = { calls: 3000, concurrency: 16, tunnels: 3000, perProcess: 1000 };
  for (let i = 0; i < args.length; i += 2) {
    const [flag, value] = [args[i], Number(args[i + 1])];
    if (flag === "--calls") o.calls = value;
    else if (flag === "--concurrency") o.concurrency = value;
    else if (flag === "--tunnels") o.tunnels = value;
    else if (flag === "--per-process") o.perProcess = value;
    else throw new Error(`unknown option ${flag}`);
  }
  return o;
}

const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 256 });

function get(url: URL, key: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const req = http.get(url, { agent: keepAlive, headers: { authorization: `Bearer ${key}` } }, (res) => {
      res.resume();
      res.on("end", () => {
        if (res.statusCode !== 200) reject(new Error(`status ${res.statusCode}`));
        else resolve(performance.now() - started);
      });
    });
    req.on("error", reject);
  });
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

interface Figures {
  p50: number;
  p99: number;
  sequentialRps: number;
  concurrentRps: number;
  /** CPU time of the replicas' processes per call, in ms (what the machine's load does not change). */
  cpuPerCallMs: number;
}

/** User + system CPU time of a process so far, in ms (/proc/PID/stat, clock ticks of 10 ms). */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

async function measure(urls: { local: URL; forwarded: URL }, key: string, o: Options, pids: number[]) {
  const samples = { local: [] as number[], forwarded: [] as number[] };
  const busy = { local: 0, forwarded: 0 };
  const cpu = { local: 0, forwarded: 0 };
  const cpuNow = () => pids.reduce((sum, pid) => sum + cpuMs(pid), 0);
  const rounds = 10;
  const per = Math.ceil(o.calls / rounds);
  for (const kind of ["local", "forwarded"] as const)
    for (let i = 0; i < 300; i++) await get(urls[kind], key); // warm-up
  for (let r = 0; r < rounds; r++) {
    for (const kind of ["local", "forwarded"] as const) {
      const cpuBefore = cpuNow();
      for (let i = 0; i < per; i++) samples[kind].push(await get(urls[kind], key));
      // Throughput: `concurrency` callers for the same number of calls.
      const started = performance.now();
      let left = per;
      await Promise.all(
        Array.from({ length: o.concurrency }, async () => {
          while (left-- > 0) await get(urls[kind], key);
        }),
      );
      busy[kind] += performance.now() - started;
      cpu[kind] += cpuNow() - cpuBefore;
    }
  }
  const figures = (kind: "local" | "forwarded"): Figures => {
    const sorted = [...samples[kind]].sort((a, b) => a - b);
    const total = sorted.reduce((a, b) => a + b, 0);
    return {
      p50: quantile(sorted, 0.5),
      p99: quantile(sorted, 0.99),
      sequentialRps: (sorted.length / total) * 1000,
      concurrentRps: ((per * rounds) / busy[kind]) * 1000,
      cpuPerCallMs: cpu[kind] / (2 * per * rounds),
    };
  };
  return { local: figures("local"), forwarded: figures("forwarded") };
}

async function liveOff(db: pg.Client, victim: string, prefix: string): Promise<number> {
  const { rows } = await db.query<{ n: string }>(
    "SELECT count(*) AS n FROM revdial_tunnels WHERE state = 'live' AND replica_id <> $1 AND runner_id LIKE $2",
    [victim, `${prefix}%`],
  );
  return Number(rows[0].n);
}

async function holders(db: pg.Client, prefix: string): Promise<Map<string, number>> {
  const { rows } = await db.query<{ replica_id: string; n: string }>(
    "SELECT replica_id, count(*) AS n FROM revdial_tunnels WHERE state = 'live' AND runner_id LIKE $1 GROUP BY replica_id",
    [`${prefix}%`],
  );
  return new Map(rows.map((r) => [r.replica_id, Number(r.n)]));
}

export async function main(args: string[]): Promise<void> {
  const o = parseArgs(args);
  const why = await clusterUnavailable();
  if (why) {
    console.log(why);
    return;
  }
  const cluster = new Cluster(
    ["--quota-tunnels", String(o.tunnels + 100), "--quota-calls", "1000"],
    2 * o.tunnels + 512,
  );
  const procs: Proc[] = [];
  let latencyAgent: AgentClient | null = null;
  try {
    await cluster.start(3);
    const target = await startNode([join(ROOT, "bench/fixtures/target.ts")], /^ready \d+/);
    procs.push(target);
    const local = `127.0.0.1:${target.line.split(" ")[1]}`;
    const [r1, r2] = cluster.replicas;
    console.log(
      `replicas: ${cluster.replicas.map((r) => `${r.id} ${r.url}`).join(", ")}; load balancer ${cluster.lbUrl}`,
    );

    // 1. Local against forwarded: one agent on r1, called through r1 and through r2.
    latencyAgent = new AgentClient({
      serverUrl: r1.url,
      runnerId: "lat-1",
      token: cluster.adminKey,
      targets: new TargetMap({ desktop: local }, null),
      logger: silentLogger(),
    });
    void latencyAgent.start();
    await waitFor(
      async () => (await cluster.call(r1.url, "GET", "/api/v1/revdial/lat-1/proxy/small")).status === 200,
    );
    const path = "/api/v1/revdial/lat-1/proxy/small";
    const f = await measure(
      { local: new URL(r1.url + path), forwarded: new URL(r2.url + path) },
      cluster.adminKey,
      o,
      [r1, r2].map((r) => r.child?.pid as number),
    );
    const forwardedOut = await cluster.metric(r2, 'revdial_cluster_forwarded_calls_total{direction="out"}');
    console.log(
      `\n1. a 100-byte GET through the admin proxy, ${o.calls} sequential + ${o.calls} at concurrency ${o.concurrency}, each kind`,
    );
    const row = (name: string, x: Figures) =>
      console.log(
        `   ${name.padEnd(10)} p50 ${x.p50.toFixed(3)} ms  p99 ${x.p99.toFixed(3)} ms  sequential ${x.sequentialRps.toFixed(0)} req/s  concurrent ${x.concurrentRps.toFixed(0)} req/s  replicas' CPU ${x.cpuPerCallMs.toFixed(3)} ms/call`,
      );
    row("local", f.local);
    row("forwarded", f.forwarded);
    const hop = f.forwarded.p50 - f.local.p50;
    console.log(
      `   the hop adds ${hop.toFixed(3)} ms p50 (bar ${HOP_BAR_MS} ms: ${hop <= HOP_BAR_MS ? "met" : "NOT met"}); forwarded/local p50 ${(f.forwarded.p50 / f.local.p50).toFixed(2)}x, concurrent req/s ${(f.forwarded.concurrentRps / f.local.concurrentRps).toFixed(2)}x, CPU ${(f.forwarded.cpuPerCallMs / f.local.cpuPerCallMs).toFixed(2)}x; r2 forwarded ${forwardedOut} calls; load average ${loadavg()
        .map((x) => x.toFixed(1))
        .join(" ")} on ${cpus().length} cores`,
    );
    await latencyAgent.close(500);
    latencyAgent = null;

    // 2. kill -9 of one of three replicas holding the fleet.
    console.log(`\n2. ${o.tunnels} idle tunnels through nginx, then kill -9 of the replica holding the most`);
    const startedConnect = Date.now();
    const waits: Promise<Proc>[] = [];
    for (let g = 0, left = o.tunnels; left > 0; g++, left -= o.perProcess) {
      const n = Math.min(o.perProcess, left);
      waits.push(
        startNode(
          [
            join(ROOT, "bench/fixtures/idle-agents.ts"),
            cluster.lbUrl,
            cluster.adminKey,
            String(n),
            `fleet${g}`,
            "ws",
            local,
          ],
          /^connected/,
          300_000,
        ),
      );
    }
    procs.push(...(await Promise.all(waits)));
    const db = new pg.Client({ connectionString: cluster.databaseUrl });
    await db.connect();
    try {
      await waitFor(
        async () => [...(await holders(db, "fleet")).values()].reduce((a, b) => a + b, 0) === o.tunnels,
        120_000,
      );
      const spread = await holders(db, "fleet");
      console.log(
        `   connected in ${((Date.now() - startedConnect) / 1000).toFixed(1)} s: ${[...spread].map(([r, n]) => `${r} ${n}`).join(", ")}`,
      );
      const [victimId, held] = [...spread].sort((a, b) => b[1] - a[1])[0];
      const victim = cluster.replicas.find((r) => r.id === victimId) as Replica;
      const killedAt = Date.now();
      await cluster.stopReplica(victim, "SIGKILL");
      const marks: string[] = [];
      let next = 1000;
      for (;;) {
        const back = await liveOff(db, victimId, "fleet");
        const elapsed = Date.now() - killedAt;
        if (elapsed >= next) {
          marks.push(`${(elapsed / 1000).toFixed(0)} s: ${back}`);
          next += 1000;
        }
        if (back === o.tunnels) break;
        if (elapsed > 120_000) throw new Error(`only ${back} of ${o.tunnels} back after 120 s`);
        await new Promise((r) => setTimeout(r, 50));
      }
      const allBack = Date.now() - killedAt;
      console.log(
        `   killed ${victimId} holding ${held} tunnels; progress (live elsewhere): ${marks.join(", ") || "-"}`,
      );
      console.log(
        `   all ${o.tunnels} tunnels live on the other two ${(allBack / 1000).toFixed(2)} s after the kill (${held} moved; ${(held / (allBack / 1000)).toFixed(0)} re-registrations/s)`,
      );
    } finally {
      await db.end();
    }
  } finally {
    await latencyAgent?.close(100).catch(() => {});
    await Promise.all(procs.map((p) => p.stop()));
    keepAlive.destroy();
    await cluster.close();
  }
}

async function waitFor(check: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 100));
  }
}
