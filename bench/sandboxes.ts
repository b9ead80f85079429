// `npm run bench -- sandboxes [--driver docker|process|both] [--starts 10] [--docker-host URL]`:
// how long a sandbox takes to start, and what an idle one costs, per driver. A real server
// (embedded store, 127.0.0.1) and one real host per driver; `--starts` sessions one after another,
// each timed from the start call (what `spectask start` sends: POST start-planning) until the API
// sees the sandbox's tunnel connected (`sandbox-{session}` in its registry); p50 and max. Then, with
// all of them up and idle for 3 s, the memory per sandbox: the PSS (proportional set size, shared
// pages split among their users) of every process of the sandbox, read from /proc/PID/smaps_rollup,
// the same way for both drivers; for containers, the engine's cgroup figure too (its memory usage
// less inactive file cache). Both drivers run the same desktop program (xterm) where the host has
// it. Default: both drivers (docker skipped with a note where no engine answers or the image is
// missing; `revdial image build` makes it). Prints figures; asserts nothing.

import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type RunningServer, startServer } from "../src/api/server.ts";
import { silentLogger } from "../src/common/logger.ts";
import { DockerDriver } from "../src/host/docker-driver.ts";
import { DockerEngine } from "../src/host/docker-engine.ts";
import { which } from "../src/host/isolation.ts";
import type { ProcessDriver } from "../src/host/process-driver.ts";
import { DEFAULT_IMAGE } from "../src/host/sandbox-image.ts";
import { WolfHost } from "../src/host/wolf-host.ts";

interface Figures {
  driver: string;
  startsMs: number[];
  pssKb: number[];
  cgroupKb: number[];
  note: string;
}

function flag(args: string[], name: string, fallback: string): string {
  const i = args.indexOf(name);
  if (i >= 0 && args[i + 1]) return args[i + 1];
  const eq = args.find((a) => a.startsWith(`${name}=`));
  return eq ? eq.slice(name.length + 1) : fallback;
}

/** PSS in KiB of one process (0 when it is gone or unreadable). */
function pssKb(pid: number): number {
  try {
    const text = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
    return Number(/^Pss:\s+(\d+) kB/m.exec(text)?.[1] ?? 0);
  } catch {
    return 0;
  }
}

function pidsOfGroup(pgid: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(rest[2]) === pgid) out.push(Number(entry));
    } catch {}
  }
  return out;
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function until(check: () => boolean, what: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function call(server: RunningServer, method: string, path: string, key: string, body?: unknown) {
  const res = await fetch(server.url + path, {
    method,
    headers: { authorization: `Bearer ${key}`, ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = (await res.json().catch(() => ({}))) as Record<string, unknown>;
  if (res.status >= 300) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

async function measure(
  driverName: "process" | "docker",
  starts: number,
  dockerHost: string,
): Promise<Figures> {
  const dataDir = await mkdtemp(join(tmpdir(), "revdial-bench-sandboxes-"));
  const server = await startServer({ listen: "127.0.0.1:0", dataDir, logger: silentLogger() });
  const adminKey = server.adminKey as string;
  const hostId = `bench-${driverName}-${process.pid}`;
  const created = await call(server, "POST", "/api/v1/wolf-instances", adminKey, {
    id: hostId,
    max_sandboxes: starts,
  });
  const xterm = which("xterm", "/usr/local/bin:/usr/bin:/bin");
  const host = new WolfHost({
    serverUrl: server.url,
    token: created.key as string,
    id: hostId,
    maxSandboxes: starts,
    driver: driverName,
    stateDir: join(dataDir, "host"),
    allowSharedFallback: true,
    app: driverName === "process" ? (xterm ? "exec xterm" : null) : null,
    docker: { endpoint: dockerHost, image: DEFAULT_IMAGE },
    logger: silentLogger(),
  });
  const figures: Figures = { driver: driverName, startsMs: [], pssKb: [], cgroupKb: [], note: "" };
  try {
    await host.start();
    await until(() => server.registry.isConnected(`wolf-${hostId}`), "host connected", 20_000);
    figures.note =
      driverName === "process"
        ? `isolation ${(host.driver as ProcessDriver).describeIsolation()}, app ${xterm ? "xterm" : "none (no xterm here)"}`
        : `${(host.driver as DockerDriver).describeEngine()}, image ${DEFAULT_IMAGE}, app xterm`;
    const { user, apiKey } = await server.auth.createUser({ name: `bench-${driverName}` });
    const project = await server.store.projects.create({ ownerId: user.id, name: "bench" });
    for (let i = 0; i < starts; i++) {
      const task = await server.store.specTasks.create({ projectId: project.id, name: `task ${i}` });
      const t0 = performance.now();
      const answer = await call(server, "POST", `/api/v1/spec-tasks/${task.id}/start-planning`, apiKey, {});
      const sid = answer.session_id as string;
      await until(() => server.registry.isConnected(`sandbox-${sid}`), `sandbox ${i} connected`, 90_000);
      figures.startsMs.push(performance.now() - t0);
      process.stderr.write(
        `  ${driverName} start ${i + 1}/${starts}: ${figures.startsMs.at(-1)?.toFixed(0)} ms\n`,
      );
    }
    await new Promise((r) => setTimeout(r, 3_000));
    for (const lobby of host.driver.list()) {
      if (host.driver instanceof DockerDriver) {
        const engine = host.driver.engine;
        const id = host.driver.containerOf(lobby.lobbyId) as string;
        // The container's processes on this machine: those in its init's PID namespace.
        const init = (await engine.inspectContainer(id)).State.Pid;
        const ns = readlinkSync(`/proc/${init}/ns/pid`);
        const pids = readdirSync("/proc")
          .filter((e) => /^\d+$/.test(e))
          .map(Number)
          .filter((pid) => {
            try {
              return readlinkSync(`/proc/${pid}/ns/pid`) === ns;
            } catch {
              return false;
            }
          });
        figures.pssKb.push(pids.reduce((sum, pid) => sum + pssKb(pid), 0));
        figures.cgroupKb.push((await host.driver.memoryOf(lobby.lobbyId)) / 1024);
      } else if (lobby.pid)
        figures.pssKb.push(pidsOfGroup(lobby.pid).reduce((sum, pid) => sum + pssKb(pid), 0));
    }
  } finally {
    await host.close();
    await server.close();
    await rm(dataDir, { recursive: true, force: true });
  }
  return figures;
}

function report(f: Figures): void {
  const mb = (kb: number) => `${(kb / 1024).toFixed(1)} MB`;
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  console.log(`${f.driver} driver (${f.note})`);
  console.log(
    `  start to connected, ${f.startsMs.length} starts: p50 ${percentile(f.startsMs, 50).toFixed(0)} ms, max ${Math.max(...f.startsMs).toFixed(0)} ms`,
  );
  console.log(
    `  memory per idle sandbox (PSS): mean ${mb(mean(f.pssKb))}, max ${mb(Math.max(...f.pssKb))} over ${f.pssKb.length}`,
  );
  if (f.cgroupKb.length)
    console.log(
      `  memory per idle sandbox (container cgroup, less inactive file): mean ${mb(mean(f.cgroupKb))}`,
    );
}

export async function main(args: string[]): Promise<void> {
  const driver = flag(args, "--driver", "both");
  const starts = Number(flag(args, "--starts", "10"));
  const dockerHost = flag(args, "--docker-host", process.env.DOCKER_HOST ?? "unix:///var/run/docker.sock");
  if (!["docker", "process", "both"].includes(driver) || !(starts >= 1)) {
    process.stderr.write(
      "usage: npm run bench -- sandboxes [--driver docker|process|both] [--starts 10] [--docker-host URL]\n",
    );
    process.exit(2);
  }
  const results: Figures[] = [];
  // The process driver beside the docker one, unless only one was asked for.
  const order: ("process" | "docker")[] = driver === "both" ? ["process", "docker"] : [driver as "docker"];
  if (driver === "docker") order.unshift("process");
  for (const d of order) {
    if (d === "docker") {
      const engine = new DockerEngine(dockerHost);
      try {
        await engine.ping();
        if (!(await engine.image(DEFAULT_IMAGE)))
          throw new Error(`no image ${DEFAULT_IMAGE}: run \`revdial image build\``);
      } catch (err) {
        console.log(`docker driver: skipped (${(err as Error).message}; engine ${dockerHost})`);
        continue;
      }
    }
    process.stderr.write(`${d} driver: ${starts} starts\n`);
    results.push(await measure(d, starts, dockerHost));
  }
  console.log("");
  for (const f of results) report(f);
  const [p, dk] = [results.find((r) => r.driver === "process"), results.find((r) => r.driver === "docker")];
  if (p && dk)
    console.log(
      `docker / process: start p50 ${(percentile(dk.startsMs, 50) / percentile(p.startsMs, 50)).toFixed(2)}x, ` +
        `memory (PSS) ${(dk.pssKb.reduce((a, b) => a + b, 0) / dk.pssKb.length / (p.pssKb.reduce((a, b) => a + b, 0) / p.pssKb.length)).toFixed(2)}x`,
    );
}
