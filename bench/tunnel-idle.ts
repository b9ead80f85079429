// Server memory per idle tunnel, per protocol and transport: N idle agents (bench/fixtures/idle-agents.ts,
// 500 to a process) on a bare tunnel server (bench/fixtures/tunnel-server.ts: the server's endpoint and
// registry, no store), resident memory read after a full GC before and after they connect. The bare
// server because the embedded database's heap moves by more than thousands of tunnels cost and would
// drown the figure; `npm run bench -- fleet` takes the same figure on the real server (GC through the
// inspector), with Postgres as the store.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { type Proc, type ProcWithStdin, startNode, startNodeWithStdin } from "./procs.ts";
import type { Report } from "./tunnel-figures.ts";
import { ROOT, type Transport } from "./tunnel-paths.ts";
import type { AgentProtocol, Plan } from "./tunnel-plan.ts";
import { SERVER_PROTOCOL_NAMES, waitForTunnelCount } from "./tunnel-rig.ts";

const RUNNER_TOKEN = "bench-runner-token-0123456789";
const PER_PROCESS = 500;
/** After the last agent connects: long enough for handshake garbage to become collectable. */
const SETTLE_MS = 2000;

/** The server needs a descriptor per tunnel; null when the limit allows `count`, else why not. */
export function descriptorShortfall(count: number): string | null {
  const text = readFileSync("/proc/self/limits", "utf8");
  const soft = Number(/^Max open files\s+(\d+)/m.exec(text)?.[1] ?? Number.POSITIVE_INFINITY);
  return soft >= count + 1024 ? null : `ulimit -n is ${soft}; ${count} tunnels need about ${count + 1024}`;
}

/** Starts `count` idle agents in processes of PER_PROCESS; resolves once each process has them connected. */
export function startIdleAgents(
  serverUrl: string,
  token: string,
  count: number,
  o: { prefix: string; transport: Transport; protocol: AgentProtocol | null },
): Promise<Proc[]> {
  const waits: Promise<Proc>[] = [];
  for (let g = 0; g < Math.ceil(count / PER_PROCESS); g++) {
    const n = Math.min(PER_PROCESS, count - g * PER_PROCESS);
    const args = [
      join(ROOT, "bench/fixtures/idle-agents.ts"),
      serverUrl,
      token,
      String(n),
      `${o.prefix}${g}`,
    ];
    args.push(o.transport, "", "", o.protocol ?? "");
    waits.push(startNode(args, /^connected/, 180_000));
  }
  return Promise.all(waits);
}

async function measure(server: ProcWithStdin): Promise<{ rss: number; heap: number }> {
  const line = await server.ask("measure", /^rss /);
  const [, rss, , heap] = line.split(" ");
  return { rss: Number(rss), heap: Number(heap) };
}

/** The protocols and transports the bare server's registry holds, e.g. { "h2 ws": 2000 }. */
async function protocolsSeen(serverUrl: string): Promise<Record<string, number>> {
  const res = await fetch(`${serverUrl}/?protocols`, { signal: AbortSignal.timeout(10_000) });
  return ((await res.json()) as { protocols: Record<string, number> }).protocols;
}

async function idleMemory(
  count: number,
  transport: Transport,
  protocol: AgentProtocol,
  plan: Plan,
  report: Report,
) {
  const procs: Proc[] = [];
  const name = `${protocol} ${transport}`;
  try {
    const server = await startNodeWithStdin(
      ["--expose-gc", join(ROOT, "bench/fixtures/tunnel-server.ts"), RUNNER_TOKEN],
      /^listening on /,
    );
    procs.push(server);
    const serverUrl = server.line.slice("listening on ".length).trim();
    const before = await measure(server);
    const started = Date.now();
    const flag = plan.protocolFlag ? protocol : null;
    procs.push(
      ...(await startIdleAgents(serverUrl, RUNNER_TOKEN, count, {
        prefix: "idle",
        transport,
        protocol: flag,
      })),
    );
    await waitForTunnelCount(serverUrl, count);
    const connectS = (Date.now() - started) / 1000;
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const after = await measure(server);
    const seen = await protocolsSeen(serverUrl);
    const seenText = Object.entries(seen)
      .map(([k, v]) => `${v} ${k}`)
      .join(", ");
    const expected = `${protocol} ${transport}`;
    const right = SERVER_PROTOCOL_NAMES[protocol].some((n) => seen[`${n} ${transport}`] === count);
    const kb = (after.rss - before.rss) / count / 1024;
    const heapKb = (after.heap - before.heap) / count / 1024;
    report.add({
      figure: "server memory per idle tunnel",
      path: name,
      value: right ? kb : null,
      unit: "KB",
      bar: "idleMemory",
      detail: {
        tunnels: count,
        rss_before: before.rss,
        rss_after: after.rss,
        heap_kb: heapKb,
        connect_s: connectS,
      },
      note:
        `${count} agents, connected in ${connectS.toFixed(1)} s; RSS ${(before.rss / 1e6).toFixed(1)} -> ` +
        `${(after.rss / 1e6).toFixed(1)} MB after GC; JS heap + external ${heapKb.toFixed(1)} KB per tunnel` +
        (right ? "" : `; NOT COUNTED: the server holds ${seenText}, expected ${count} ${expected}`),
    });
  } finally {
    await Promise.all(procs.reverse().map((p) => p.stop()));
  }
}

export async function reportIdle(count: number, plan: Plan, report: Report): Promise<void> {
  console.log(
    `server memory per idle tunnel: ${count} idle agents on a bare tunnel server, full GC before each reading`,
  );
  const short = descriptorShortfall(count);
  if (plan.agentProtocols.length === 0) {
    report.skip(
      "memory per idle tunnel: no revdial agent protocol asked for (v1 agents are not simulated by the thousand)",
    );
  } else if (short) {
    report.skip(`memory per idle tunnel: ${short} (raise it: ulimit -n ${count + 4096})`);
  } else {
    for (const protocol of plan.agentProtocols) {
      for (const transport of ["ws", "raw"] as const)
        await idleMemory(count, transport, protocol, plan, report);
    }
  }
  console.log("");
}
