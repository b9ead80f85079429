// `npm run bench -- storm --agents 5000`: a restart storm. A real `revdial server` with a fleet of
// idle agents connected is killed with SIGKILL and started again on the same data dir and port.
// Prints the reconnect curve (time from /healthz answering again to 50%, 90% and 100% of the agents
// back, read from /healthz), the 429s agents were answered, whether any agent retried sooner than its
// Backoff allows (checked from the agents' own records, see bench/fixtures/idle-agents.ts), and what
// became of the calls made through random tunnels during the restart. Bar (issue 10): all back
// within 10 s of /healthz, and no call made within the grace period lost (the agents register ad-hoc
// runner ids with the admin key, which only the registry snapshot, DATA_DIR/tunnels.snapshot, knows:
// the kill waits until the snapshot lists the whole fleet, which it does within a second).
// Options: --agents 5000, --per-process 1000, --transport ws|raw, --store pglite|postgres
// (default pglite: the data dir is what survives the kill), --admission-rate N (passed to the
// server when its --help lists the flag), --call-every 100ms.

import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AGENT_CLIENT_DEFAULTS } from "../src/agent/tunnel-client.ts";
import { parseSnapshot, SNAPSHOT_FILE_NAME } from "../src/api/tunnel/snapshot-file.ts";
import { parseDuration } from "../src/common/duration.ts";
import {
  callThrough,
  checkDescriptorLimit,
  healthzTunnels,
  pct,
  runnerIdOf,
  type ServerProc,
  startAgents,
  startServer,
  throwawayDatabase,
} from "./fleet.ts";
import { type Proc, startNode } from "./procs.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const BAR_ALL_BACK_MS = 10_000;
/** AgentClient's defaults, the bounds every retry is checked against. */
const BACKOFF = Object.freeze({
  baseMs: AGENT_CLIENT_DEFAULTS.backoffBaseMs,
  capMs: AGENT_CLIENT_DEFAULTS.backoffCapMs,
});
/** How late a retry may start after its drawn delay before it counts as a timer being late, not early. */
const EARLY_SLACK_MS = 2;
/** The server's grace period, passed explicitly so that the calls within it are known. */
const GRACE_MS = 30_000;
/** How long the registry snapshot may take to list the whole fleet (it saves at most once a second). */
const SNAPSHOT_DEADLINE_MS = 10_000;

interface Options {
  agents: number;
  perProcess: number;
  transport: "ws" | "raw";
  store: "pglite" | "postgres";
  admissionRate: string | null;
  callEveryMs: number;
}

function parseArgs(args: string[]): Options {
  const o: Options = {
    agents: 5000,
    perProcess: 1000,
    transport: "ws",
    store: "pglite",
    admissionRate: null,
    callEveryMs: 100,
  };
  for (let i = 0; i < args.length; i += 2) {
    const [flag, value] = [args[i], args[i + 1] ?? ""];
    if (flag === "--agents") o.agents = Number(value);
    else if (flag === "--per-process") o.perProcess = Number(value);
    else if (flag === "--transport") o.transport = value === "raw" ? "raw" : "ws";
    else if (flag === "--store") o.store = value === "postgres" ? "postgres" : "pglite";
    else if (flag === "--admission-rate") o.admissionRate = value;
    else if (flag === "--call-every") o.callEveryMs = parseDuration(value);
    else throw new Error(`unknown option ${flag}`);
  }
  return o;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** The server's admission flag, when this build has one (added by the reliability work). */
function admissionArgs(o: Options): string[] {
  const help = execFileSync(process.execPath, [join(ROOT, "src/cli/main.ts"), "server", "--help"], {
    encoding: "utf8",
  });
  const supported = help.includes("--admission-rate");
  if (!supported) {
    console.log("admission: this server has no --admission-rate flag; measured without admission control");
    return [];
  }
  if (o.admissionRate === null) {
    console.log("admission: --admission-rate at the server's default");
    return [];
  }
  console.log(`admission: --admission-rate ${o.admissionRate}`);
  return ["--admission-rate", o.admissionRate];
}

interface Call {
  sentAt: number;
  doneAt: number;
  status: number;
}

/** Calls through random tunnels every `everyMs` until stopped; each call runs to its own end. */
function callLoop(url: string, key: string, o: Options) {
  const calls: Call[] = [];
  const inFlight = new Set<Promise<void>>();
  const timer = setInterval(() => {
    const sentAt = Date.now();
    const p = callThrough(url, key, runnerIdOf(Math.floor(Math.random() * o.agents), o.perProcess)).then(
      ([status]) => {
        calls.push({ sentAt, doneAt: Date.now(), status });
        inFlight.delete(p);
      },
    );
    inFlight.add(p);
  }, o.callEveryMs);
  return {
    calls,
    async stop() {
      clearInterval(timer);
      await Promise.all(inFlight);
    },
  };
}

type Attempt = [number, string, number | string | null];

interface BackoffCheck {
  agents: number;
  waits: number;
  maxWaitsPerAgent: number;
  early: number;
  outOfBounds: number;
  got429: number;
  /** Failed connects by cause (HTTP status or error), over the whole run. */
  causes: Map<string, number>;
  /** Each agent's own state when the run ended, and its last event before that. */
  finals: Map<string, number>;
  examples: string[];
}

/**
 * Each agent's own record, checked against Backoff's bounds: the n-th wait since the last connect
 * is drawn from [0, min(cap, base * 2^n)] (or is the Retry-After floor, when larger), and the next
 * attempt starts no sooner than that wait.
 */
function checkBackoff(dir: string): BackoffCheck {
  const r: BackoffCheck = {
    agents: 0,
    waits: 0,
    maxWaitsPerAgent: 0,
    early: 0,
    outOfBounds: 0,
    got429: 0,
    causes: new Map(),
    finals: new Map(),
    examples: [],
  };
  for (const file of readdirSync(dir).filter((f) => f.startsWith("attempts-"))) {
    const byAgent = JSON.parse(readFileSync(join(dir, file), "utf8")) as Record<string, Attempt[]>;
    for (const [id, events] of Object.entries(byAgent)) {
      r.agents++;
      let n = 0;
      let floor = 0;
      let waiting: { at: number; ms: number } | null = null;
      let waitsHere = 0;
      for (const [t, kind, value] of events) {
        if (kind === "final") {
          const before = events.at(-2);
          const key = `${value} (last event: ${before ? `${before[1]} ${before[2] ?? ""}`.trim() : "none"})`;
          r.finals.set(key, (r.finals.get(key) ?? 0) + 1);
        } else if (kind === "connected") n = 0;
        else if (kind === "failed") {
          if (value === 429) r.got429++;
          const cause = String(value).slice(0, 60);
          r.causes.set(cause, (r.causes.get(cause) ?? 0) + 1);
        } else if (kind === "retry-after") floor = value as number;
        else if (kind === "waiting") {
          const ms = value as number;
          const ceiling = Math.min(BACKOFF.capMs, BACKOFF.baseMs * 2 ** n);
          if (ms > Math.max(ceiling, floor) || ms < floor) {
            r.outOfBounds++;
            if (r.examples.length < 5)
              r.examples.push(`${id}: wait ${n} drew ${ms} ms (ceiling ${ceiling}, floor ${floor})`);
          }
          waiting = { at: t, ms };
          n++;
          floor = 0;
          r.waits++;
          waitsHere++;
        } else if (kind === "connecting" && waiting) {
          if (t - waiting.at < waiting.ms - EARLY_SLACK_MS) {
            r.early++;
            if (r.examples.length < 5)
              r.examples.push(`${id}: retried ${t - waiting.at} ms after drawing ${waiting.ms} ms`);
          }
          waiting = null;
        }
      }
      r.maxWaitsPerAgent = Math.max(r.maxWaitsPerAgent, waitsHere);
    }
  }
  return r;
}

/** Polls /healthz until it answers, then until all agents are back; returns the curve's times. */
async function reconnectCurve(url: string, n: number, killedAt: number) {
  let healthzAt = 0;
  while (!healthzAt) {
    if ((await healthzTunnels(url)) !== null) healthzAt = Date.now();
    else await new Promise((r) => setTimeout(r, 25));
  }
  const marks = new Map<number, number>();
  const deadline = healthzAt + 120_000;
  let last = 0;
  while (Date.now() < deadline && marks.size < 3) {
    last = (await healthzTunnels(url)) ?? last;
    for (const share of [50, 90, 100]) {
      if (!marks.has(share) && last >= Math.ceil((n * share) / 100)) marks.set(share, Date.now() - healthzAt);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { downMs: healthzAt - killedAt, healthzAt, marks, last };
}

export async function main(args: string[]): Promise<void> {
  const o = parseArgs(args);
  checkDescriptorLimit(o.agents);
  const dataDir = mkdtempSync(join(tmpdir(), "revdial-storm-"));
  const logDir = mkdtempSync(join(tmpdir(), "revdial-storm-attempts-"));
  const procs: Proc[] = [];
  let server: ServerProc | null = null;
  const db = o.store === "postgres" ? await throwawayDatabase() : null;
  try {
    const port = await freePort();
    const extra = [
      ...(db ? ["--database-url", db.url] : []),
      "--grace-period",
      `${GRACE_MS / 1000}s`,
      ...admissionArgs(o),
    ];
    const target = await startNode([join(ROOT, "bench/fixtures/target.ts")], /^ready \d+/);
    procs.push(target);
    server = await startServer(dataDir, `127.0.0.1:${port}`, { extra });
    const url = server.url;
    const key = readFileSync(join(dataDir, "admin.key"), "utf8").trim();
    const local = `127.0.0.1:${target.line.split(" ")[1]}`;
    const agents = await startAgents(url, key, o.agents, { ...o, local, attemptLogDir: logDir });
    procs.push(...agents);
    console.log(
      `revdial restart-storm benchmark (node ${process.versions.node}, ${o.agents} agents, ${o.transport}, ` +
        `${agents.length} processes, store ${db ? "postgres" : "pglite"})`,
    );

    await waitForSnapshot(dataDir, o.agents);
    const caller = callLoop(url, key, o);
    await new Promise((r) => setTimeout(r, 500));
    const killedAt = Date.now();
    server.child.kill("SIGKILL");
    await new Promise((r) => server?.child.once("exit", r));
    const restartedAt = Date.now();
    server = await startServer(dataDir, `127.0.0.1:${port}`, { extra });
    const curve = await reconnectCurve(url, o.agents, killedAt);
    await caller.stop();

    const fmt = (share: number) => {
      const ms = curve.marks.get(share);
      return ms === undefined
        ? `not reached (${curve.last} back after 120 s)`
        : `${(ms / 1000).toFixed(1)} s`;
    };
    const all = curve.marks.get(100);
    console.log(`kill -9 to /healthz answering again: ${(curve.downMs / 1000).toFixed(1)} s`);
    console.log(
      `back after /healthz: 50% ${fmt(50)}   90% ${fmt(90)}   100% ${fmt(100)}   ` +
        `(bar: all within ${BAR_ALL_BACK_MS / 1000} s: ${all !== undefined && all <= BAR_ALL_BACK_MS ? "met" : "NOT met"})`,
    );
    reportCalls(caller.calls, killedAt, curve.healthzAt, restartedAt + GRACE_MS);

    await Promise.all(agents.map((p) => p.stop()));
    const b = checkBackoff(logDir);
    console.log(`429 answers seen by agents: ${b.got429}`);
    console.log(
      `backoff, from the agents' records: ${b.agents} agents, ${b.waits} waits (at most ${b.maxWaitsPerAgent} for one agent); ` +
        `draws out of [0, min(${BACKOFF.capMs}, ${BACKOFF.baseMs}*2^n)] or under Retry-After: ${b.outOfBounds}; ` +
        `retries sooner than drawn: ${b.early} (${b.outOfBounds + b.early === 0 ? "no agent retried faster than its backoff allows" : "VIOLATIONS"})`,
    );
    for (const e of b.examples) console.log(`  ${e}`);
    const causes = [...b.causes].sort((x, y) => y[1] - x[1]).slice(0, 6);
    const finals = [...b.finals].sort((x, y) => y[1] - x[1]).slice(0, 6);
    console.log(`agents' own state at the end: ${finals.map(([c, n]) => `${n} x ${c}`).join("; ")}`);
    console.log(`failed connects by cause: ${causes.map(([c, n]) => `${n} x ${c}`).join("; ") || "none"}`);
    if (b.waits === 0)
      console.log("  NO WAITS RECORDED: did AgentClient's log lines change? (bench/fixtures/idle-agents.ts)");
  } finally {
    await Promise.all(procs.reverse().map((p) => p.stop()));
    await server?.stop();
    await db?.drop();
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(logDir, { recursive: true, force: true });
  }
}

/**
 * Polls the data dir's registry snapshot until it lists `n` runner ids, and says how long that took
 * after the fleet was connected; the kill comes after it (a runner that connected less than a second
 * before a kill -9 may not be in the snapshot yet: the snapshot saves at most once a second).
 */
async function waitForSnapshot(dataDir: string, n: number): Promise<void> {
  const started = Date.now();
  let listed = 0;
  while (Date.now() - started < SNAPSHOT_DEADLINE_MS) {
    let text = "";
    try {
      text = readFileSync(join(dataDir, SNAPSHOT_FILE_NAME), "utf8");
    } catch {
      // Not saved yet.
    }
    const parsed = parseSnapshot(text, Number.MAX_SAFE_INTEGER);
    listed = "ids" in parsed ? parsed.ids.length : 0;
    if (listed >= n) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  console.log(
    `registry snapshot: ${listed} of ${n} runner ids listed ${Date.now() - started} ms after the fleet connected` +
      (listed >= n
        ? ""
        : ` (NOT all within ${SNAPSHOT_DEADLINE_MS / 1000} s: does this server keep ${SNAPSHOT_FILE_NAME}?)`),
  );
}

/** What became of the calls made through random tunnels before, during and after the restart. */
function reportCalls(calls: Call[], killedAt: number, healthzAt: number, graceEndsBy: number): void {
  const phases = [
    ["before the kill", (c: Call) => c.sentAt < killedAt],
    ["while the server was down", (c: Call) => c.sentAt >= killedAt && c.sentAt < healthzAt],
    [
      "after /healthz (within the grace period)",
      (c: Call) => c.sentAt >= healthzAt && c.sentAt < graceEndsBy,
    ],
    ["after the grace period", (c: Call) => c.sentAt >= Math.max(healthzAt, graceEndsBy)],
  ] as const;
  console.log("calls through random tunnels during the restart:");
  for (const [name, inPhase] of phases) {
    const mine = calls.filter(inPhase);
    if (mine.length === 0 && name === "after the grace period") continue;
    const ok = mine.filter((c) => c.status === 200);
    const statuses = new Map<number, number>();
    for (const c of mine) if (c.status !== 200) statuses.set(c.status, (statuses.get(c.status) ?? 0) + 1);
    const lost = [...statuses].map(([s, n]) => `${n} x ${s || "connection error"}`).join(", ");
    const ms = ok.map((c) => c.doneAt - c.sentAt).sort((a, b) => a - b);
    const p99 = ms.length ? `, answered ones p99 ${pct(ms, 99)} ms` : "";
    console.log(
      `  ${name}: ${mine.length} made, ${ok.length} answered 200${lost ? `, lost: ${lost}` : ""}${p99}`,
    );
  }
}

if (import.meta.main) await main(process.argv.slice(2));
