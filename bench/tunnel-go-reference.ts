// The Go reference (the seed's revdial server, and optionally its client), when someone has built it
// in bench/fixtures/go-reference/: the yardstick of the v1 figure ("the Go-like client's req/s on
// revdial, against the Go server with the same client"). The bench knows nothing of Go; the
// directory describes how to run it in bench.json (bench/README.md, "The Go reference"):
//
//   { "server": ["./revdial-server", "-listen", "{listen}", "-token-file", "{tokenFile}"],
//     "ready": "listening",                       a regex one stdout line of the server matches
//     "proxy": "/api/v1/revdial/{runnerId}/proxy", where the target is reached through a runner
//     "headers": { "authorization": "Bearer {token}" },
//     "hijack": true,                             the server takes a hijacked v1 control connection
//     "client": ["./revdial-client", "-server", "{server}", "-runner-id", "{runnerId}",
//                "-token-file", "{tokenFile}", "-local", "{local}"] }     optional: the Go client
//
// Placeholders: {listen} 127.0.0.1:PORT, {server} http://127.0.0.1:PORT, {token}, {tokenFile},
// {runnerId}, {local} (the target's host:port). Commands starting with ./ are the directory's own.

import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { startFailure, startNode, startProcess } from "./procs.ts";
import type { Path, Transport } from "./tunnel-paths.ts";
import type { Rig, Started, Target } from "./tunnel-rig.ts";

export interface GoManifest {
  dir: string;
  server: string[];
  ready: string;
  proxy: string;
  headers: Record<string, string>;
  hijack: boolean;
  client: string[] | null;
}

const REACHABLE_TIMEOUT_MS = 30_000;

/** The manifest of bench/fixtures/go-reference/, or why there is none. Never throws. */
export function readGoManifest(root: string): GoManifest | { skip: string } {
  const dir = join(root, "bench/fixtures/go-reference");
  const file = join(dir, "bench.json");
  if (!existsSync(dir)) return { skip: "go reference: skipped (bench/fixtures/go-reference/ not present)" };
  if (!existsSync(file))
    return {
      skip: "go reference: skipped (bench/fixtures/go-reference/ has no bench.json; see bench/README.md)",
    };
  try {
    const m = JSON.parse(readFileSync(file, "utf8")) as Partial<GoManifest>;
    if (!Array.isArray(m.server) || m.server.length === 0)
      throw new Error('"server" must be a command array');
    if (typeof m.ready !== "string") throw new Error('"ready" must be a regex string');
    if (typeof m.proxy !== "string") throw new Error('"proxy" must be a path with {runnerId}');
    return {
      dir,
      server: m.server,
      ready: m.ready,
      proxy: m.proxy,
      headers: m.headers ?? {},
      hijack: m.hijack === true,
      client: Array.isArray(m.client) && m.client.length > 0 ? m.client : null,
    };
  } catch (err) {
    return { skip: `go reference: skipped (bench.json: ${(err as Error).message})` };
  }
}

function fill(text: string, values: Record<string, string>): string {
  return text.replace(/\{(\w+)\}/g, (all, name: string) => values[name] ?? all);
}

/** A command of the manifest: ./x is the directory's own program. */
function command(m: GoManifest, argv: string[], values: Record<string, string>): [string, string[]] {
  const [cmd, ...args] = argv.map((a) => fill(a, values));
  return [cmd.startsWith("./") ? join(m.dir, cmd) : cmd, args];
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
    s.once("error", reject);
  });
}

/** Resolves once GET {base}/small answers 200; false after REACHABLE_TIMEOUT_MS. */
async function reachable(path: Path): Promise<boolean> {
  const deadline = Date.now() + REACHABLE_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const res = await fetch(`${path.base}/small`, {
      headers: path.headers,
      signal: AbortSignal.timeout(5000),
    }).catch(() => null);
    await res?.arrayBuffer().catch(() => null);
    if (res?.status === 200) return true;
    await new Promise((r) => setTimeout(r, 200));
  }
  return false;
}

/**
 * Starts the Go server, then the v1 client against it (each transport the server takes) and the Go
 * client when the manifest has one; gives back the paths that answer.
 */
export async function startGoPaths(
  rig: Rig,
  target: Target,
  m: GoManifest,
  v1Agent: string | null,
): Promise<Started> {
  const notes: string[] = [];
  const token = randomBytes(16).toString("hex");
  const tokenFile = join(rig.tempDir(), "token");
  writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
  const port = await freePort();
  const values = { listen: `127.0.0.1:${port}`, server: `http://127.0.0.1:${port}`, token, tokenFile };
  const [cmd, args] = command(m, m.server, values);
  let server: Awaited<ReturnType<typeof startProcess>>;
  try {
    server = rig.own(await startProcess(cmd, args, new RegExp(m.ready), { cwd: m.dir }));
  } catch (err) {
    return {
      paths: [],
      notes: [`go reference: skipped (its server did not start: ${startFailure(err)})`],
    };
  }
  const paths: Path[] = [];
  const add = async (name: string, transport: Transport, runnerId: string, start: () => Promise<number>) => {
    const headers = Object.fromEntries(Object.entries(m.headers).map(([k, v]) => [k, fill(v, values)]));
    const base = `${values.server}${fill(m.proxy, { runnerId })}`;
    try {
      const agentPid = await start();
      const path: Path = {
        name,
        kind: "go",
        transport,
        base,
        headers,
        serverPid: server.child.pid as number,
        agentPid,
      };
      if (await reachable(path)) paths.push(path);
      else
        notes.push(
          `${name}: skipped (GET ${base}/small did not answer 200 within ${REACHABLE_TIMEOUT_MS / 1000} s)`,
        );
    } catch (err) {
      notes.push(`${name}: skipped (did not start: ${startFailure(err)})`);
    }
  };
  if (v1Agent) {
    for (const transport of m.hijack ? (["ws", "raw"] as const) : (["ws"] as const)) {
      const runnerId = `go-v1-${transport}`;
      await add(transport === "raw" ? "go/v1 hijack" : "go/v1 ws", transport, runnerId, async () => {
        const a = [v1Agent, "--server", values.server, "--runner-id", runnerId, "--token-file", tokenFile];
        a.push("--local", target.addr, ...(transport === "raw" ? ["--hijack"] : []));
        return rig.own(await startNode(a, /^ready/)).child.pid as number;
      });
    }
  }
  if (m.client) {
    const client = m.client;
    await add("go/go", "ws", "go-go", async () => {
      const [c, a] = command(m, client, { ...values, runnerId: "go-go", local: target.addr });
      return rig.own(await startProcess(c, a, null, { cwd: m.dir })).child.pid as number;
    });
  }
  return { paths, notes };
}
