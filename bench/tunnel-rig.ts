// The processes under test, started for one part of the tunnel benchmark and stopped together: the
// target, an API server (the real `revdial server`, or bench/fixtures/api-server.ts where a part needs
// a short ping interval), `revdial agent` per protocol and transport, and the Go-like v1 client. Each
// start returns the paths it opens. Every process is spawned directly (no npm, no shell), so the pids
// in a path are the programs' own.
//
// Contract: a Rig owns what it started; stop() stops all of it (newest first) and removes its temporary
// directories, and is safe to call twice. Waits are bounded: a runner that does not connect within
// CONNECT_TIMEOUT_MS is left out of the run, with a note saying so.

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Proc, startFailure, startNode } from "./procs.ts";
import { CLI, type Path, ROOT, TARGET, type Transport } from "./tunnel-paths.ts";
import type { Plan } from "./tunnel-plan.ts";

const CONNECT_TIMEOUT_MS = 60_000;
const TRANSPORTS: readonly Transport[] = ["ws", "raw"];

export interface ApiServer {
  url: string;
  /** The admin's key: every bench agent registers with it, every bench call carries it. */
  key: string;
  keyFile: string;
  pid: number;
}

export interface Target {
  /** host:port, as agents take it in --local. */
  addr: string;
  direct: Path;
}

/** One live tunnel as `GET /api/v1/revdial/connections` describes it. */
export interface Connection {
  runner_id: string;
  protocol: string;
  transport: string;
  bytes_in: number;
  bytes_out: number;
}

/** How the server names each protocol in /connections (v2 is HTTP/2: "h2"; v3 the multiplexer: "mux"). */
export const SERVER_PROTOCOL_NAMES: Readonly<Record<string, readonly string[]>> = Object.freeze({
  v2: ["h2", "v2"],
  v3: ["mux"],
  v1: ["v1"],
});

export class Rig {
  readonly #procs: Proc[] = [];
  readonly #dirs: string[] = [];

  own(proc: Proc): Proc {
    this.#procs.push(proc);
    return proc;
  }

  tempDir(): string {
    const dir = mkdtempSync(join(tmpdir(), "revdial-bench-"));
    this.#dirs.push(dir);
    return dir;
  }

  async stop(): Promise<void> {
    const procs = this.#procs.splice(0).reverse();
    await Promise.all(procs.map((p) => p.stop()));
    for (const dir of this.#dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  }
}

export async function startTarget(rig: Rig): Promise<Target> {
  const target = rig.own(await startNode([TARGET], /^ready \d+/));
  const addr = `127.0.0.1:${target.line.split(" ")[1]}`;
  const direct: Path = {
    name: "direct",
    kind: "direct",
    transport: null,
    base: `http://${addr}`,
    headers: {},
    serverPid: null,
    agentPid: null,
  };
  return { addr, direct };
}

/**
 * `revdial server` on a free port with its embedded store, or with `pingIntervalMs` the bench's
 * api-server fixture (the same startServer, with that ping interval). The per-user tunnel quota is
 * lifted: every bench tunnel uses the admin's key.
 */
export async function startApiServer(
  rig: Rig,
  options: { pingIntervalMs?: number } = {},
): Promise<ApiServer> {
  const dataDir = rig.tempDir();
  const args =
    options.pingIntervalMs === undefined
      ? [CLI, "server", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--quota-tunnels", "1000000"]
      : [join(ROOT, "bench/fixtures/api-server.ts"), dataDir, String(options.pingIntervalMs)];
  const proc = rig.own(await startNode(args, /^listening on /, 60_000));
  const keyFile = join(dataDir, "admin.key");
  return {
    url: proc.line.slice("listening on ".length).trim(),
    key: readFileSync(keyFile, "utf8").trim(),
    keyFile,
    pid: proc.child.pid as number,
  };
}

/** What a start gave: the paths that connected, and a sentence for each that did not. */
export interface Started {
  paths: Path[];
  notes: string[];
}

interface AgentSpec {
  name: string;
  kind: Path["kind"];
  runnerId: string;
  protocol: string;
  transport: Transport;
  args: string[];
  ready: RegExp | null;
}

/** One `revdial agent` per protocol of the plan and per transport, serving the target. */
export function startAgents(rig: Rig, server: ApiServer, target: Target, plan: Plan): Promise<Started> {
  const specs: AgentSpec[] = [];
  for (const protocol of plan.agentProtocols) {
    for (const transport of TRANSPORTS) {
      const runnerId = `bench-${protocol}-${transport}`;
      const args = [CLI, "agent", "--transport", transport, "--server", server.url, "--runner-id", runnerId];
      args.push("--token-file", server.keyFile, "--local", target.addr, "--log-level", "info");
      if (plan.protocolFlag) args.push("--protocol", protocol);
      specs.push({
        name: `${protocol} ${transport}`,
        kind: "tunnel",
        runnerId,
        protocol,
        transport,
        args,
        ready: null,
      });
    }
  }
  return startSpecs(rig, server, specs);
}

/** The Go-like v1 client, once on a WebSocket control connection and once hijacked (`raw`). */
export function startV1Agents(
  rig: Rig,
  server: ApiServer,
  target: Target,
  v1Agent: string,
): Promise<Started> {
  const specs: AgentSpec[] = TRANSPORTS.map((transport) => {
    const runnerId = `bench-v1-${transport}`;
    const args = [v1Agent, "--server", server.url, "--runner-id", runnerId, "--token-file", server.keyFile];
    args.push("--local", target.addr, ...(transport === "raw" ? ["--hijack"] : []));
    const name = transport === "raw" ? "v1 hijack" : "v1 ws";
    return { name, kind: "v1", runnerId, protocol: "v1", transport, args, ready: /^ready/ };
  });
  return startSpecs(rig, server, specs);
}

/**
 * Starts every agent, then waits (bounded) until each is connected and checks that the server sees
 * the protocol (and, for our own agents, the transport) each was started with: an agent that ignored
 * its --protocol would otherwise be measured under the wrong name. One that fails is left out, with
 * a note; the others run.
 */
async function startSpecs(rig: Rig, server: ApiServer, specs: AgentSpec[]): Promise<Started> {
  const notes: string[] = [];
  const started: Array<[AgentSpec, Proc]> = [];
  for (const spec of specs) {
    try {
      started.push([spec, rig.own(await startNode(spec.args, spec.ready))]);
    } catch (err) {
      notes.push(`${spec.name}: skipped (did not start: ${startFailure(err)})`);
    }
  }
  const live = await waitForRunners(server, started);
  const paths: Path[] = [];
  for (const [spec, proc] of started) {
    const problem = mismatch(spec, proc, live.get(spec.runnerId));
    if (problem) {
      notes.push(`${spec.name}: skipped (${problem})`);
      await proc.stop();
      continue;
    }
    paths.push({
      name: spec.name,
      kind: spec.kind,
      transport: spec.transport,
      base: `${server.url}/api/v1/revdial/${spec.runnerId}/proxy`,
      headers: { authorization: `Bearer ${server.key}` },
      serverPid: server.pid,
      agentPid: proc.child.pid as number,
    });
  }
  return { paths, notes };
}

/** Why a started agent cannot be measured (not connected, or not as it was started), or null. */
function mismatch(spec: AgentSpec, proc: Proc, c: Connection | undefined): string | null {
  if (!c) {
    const code = proc.child.exitCode;
    return code !== null
      ? `exited with ${code} before connecting`
      : `did not connect within ${CONNECT_TIMEOUT_MS / 1000} s`;
  }
  if (!(SERVER_PROTOCOL_NAMES[spec.protocol] ?? [spec.protocol]).includes(c.protocol))
    return `started as ${spec.protocol}, the server sees protocol ${c.protocol}`;
  // The server's v1 tunnels report "ws" whatever carries their control connection.
  if (spec.kind === "tunnel" && c.transport !== spec.transport)
    return `started on ${spec.transport}, the server sees transport ${c.transport}`;
  return null;
}

/**
 * The server's connections once every started agent is connected or has exited, or what there is
 * after CONNECT_TIMEOUT_MS.
 */
async function waitForRunners(
  server: ApiServer,
  started: Array<[AgentSpec, Proc]>,
): Promise<Map<string, Connection>> {
  const deadline = Date.now() + CONNECT_TIMEOUT_MS;
  for (;;) {
    const live = await connections(server);
    const settled = started.every(([spec, proc]) => live.has(spec.runnerId) || proc.child.exitCode !== null);
    if (settled || Date.now() > deadline) return live;
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function connections(server: ApiServer): Promise<Map<string, Connection>> {
  const res = await fetch(`${server.url}/api/v1/revdial/connections`, {
    headers: { authorization: `Bearer ${server.key}` },
    signal: AbortSignal.timeout(10_000),
  });
  if (!res.ok) throw new Error(`GET /api/v1/revdial/connections: ${res.status}`);
  const list = (await res.json()) as Connection[];
  return new Map(list.map((c) => [c.runner_id, c]));
}

/** Resolves once at least `n` tunnels are connected (healthz), or throws after `timeoutMs`. */
export async function waitForTunnelCount(serverUrl: string, n: number, timeoutMs = 180_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const res = await fetch(`${serverUrl}/healthz`, { signal: AbortSignal.timeout(5000) }).catch(() => null);
    const body = res?.ok ? ((await res.json()) as { tunnels: number }) : { tunnels: 0 };
    if (body.tunnels >= n) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`fewer than ${n} tunnels connected within ${timeoutMs} ms`);
}
