// The tunnel benchmark's options: defaults in one frozen object, every value checked here with the
// option's name in the error, so a typo fails before any process starts.

import { parseDuration } from "../src/common/duration.ts";

export const PARTS = ["req", "seq", "bulk", "hol", "cpu", "idle"] as const;
export type Part = (typeof PARTS)[number];

/** v2 = HTTP/2 over the link, v3 = the lean multiplexer, v1 = the Go-like client (bench/fixtures/v1-agent.ts). */
export const PROTOCOLS = ["v2", "v3", "v1"] as const;
export type Protocol = (typeof PROTOCOLS)[number];

export interface Options {
  /** One wrk run (req/s and CPU per call). */
  durationMs: number;
  /** An unmeasured wrk run on each path just before its measured one (JIT, pools); 0 skips it. */
  warmupMs: number;
  connections: number;
  /** Idle agents for the memory figure; 0 skips it. */
  idle: number;
  /** Idle agents that ping while the second head-of-line row runs; 0 skips that row. */
  holIdle: number;
  /** The ping interval of the server the idle head-of-line row runs on. */
  holPingMs: number;
  /** How long 64 MiB bodies flow back to back while the first head-of-line row samples. */
  holWindowMs: number;
  /** 64 MiB GETs per path, interleaved with direct. */
  bulkRuns: number;
  only: ReadonlySet<Part>;
  protocols: readonly Protocol[];
  json: string | null;
}

export const DEFAULTS: Readonly<Omit<Options, "only" | "protocols" | "json">> = Object.freeze({
  durationMs: 10_000,
  warmupMs: 2000,
  connections: 32,
  idle: 2000,
  holIdle: 1000,
  holPingMs: 1000,
  holWindowMs: 4000,
  bulkRuns: 5,
});

export const USAGE = `usage: npm run bench -- tunnel [options]
  --duration 10s        each wrk run (req/s, CPU per call)
  --warmup 2s           an unmeasured wrk run on each path before its measured one (0 skips it)
  --connections 32      wrk connections
  --protocol v3         v2|v3|v1|all, or a comma list (all = v2,v3,v1)
  --bulk-runs 5         64 MiB GETs per path, interleaved with direct
  --idle 2000           idle agents for the memory figure (0 skips it)
  --hol-idle 1000       idle agents pinging during the head-of-line row (0 skips it)
  --hol-ping 1s         their server's ping interval
  --hol-window 4s       how long 64 MiB bodies flow during the head-of-line row
  --only PART           req|seq|bulk|hol|cpu|idle (repeatable or a comma list)
  --json FILE           also write the figures as JSON`;

function count(flag: string, text: string, min: number): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) throw new Error(`${flag} must be an integer >= ${min}, got "${text}"`);
  return n;
}

function duration(flag: string, text: string): number {
  try {
    return parseDuration(text);
  } catch (err) {
    throw new Error(`${flag}: ${(err as Error).message}`);
  }
}

function list<T extends string>(flag: string, text: string, allowed: readonly T[]): T[] {
  const items = text.split(",").map((s) => s.trim());
  for (const item of items) {
    if (!(allowed as readonly string[]).includes(item))
      throw new Error(`${flag} must be one of ${allowed.join("|")}, got "${item}"`);
  }
  return items as T[];
}

export function parseOptions(args: string[]): Options {
  const o = { ...DEFAULTS, json: null as string | null };
  const only = new Set<Part>();
  let protocols: Protocol[] = ["v3"];
  for (let i = 0; i < args.length; i += 2) {
    const [flag, value] = [args[i], args[i + 1]];
    if (flag === "--help" || flag === "-h") throw new Error(USAGE);
    if (value === undefined) throw new Error(`${flag} needs a value\n${USAGE}`);
    if (flag === "--duration") o.durationMs = duration(flag, value);
    else if (flag === "--warmup") o.warmupMs = value === "0" ? 0 : duration(flag, value);
    else if (flag === "--connections") o.connections = count(flag, value, 1);
    else if (flag === "--idle") o.idle = count(flag, value, 0);
    else if (flag === "--hol-idle") o.holIdle = count(flag, value, 0);
    else if (flag === "--hol-ping") o.holPingMs = duration(flag, value);
    else if (flag === "--hol-window") o.holWindowMs = duration(flag, value);
    else if (flag === "--bulk-runs") o.bulkRuns = count(flag, value, 1);
    else if (flag === "--only") for (const p of list(flag, value, PARTS)) only.add(p);
    else if (flag === "--protocol")
      protocols = value === "all" ? [...PROTOCOLS] : list(flag, value, PROTOCOLS);
    else if (flag === "--json") o.json = value;
    else throw new Error(`unknown option ${flag}\n${USAGE}`);
  }
  if (o.durationMs < 1000) throw new Error("--duration must be at least 1s (wrk counts whole seconds)");
  if (o.warmupMs > 0 && o.warmupMs < 1000)
    throw new Error("--warmup must be 0 or at least 1s (wrk counts whole seconds)");
  if (o.holPingMs < 100) throw new Error("--hol-ping must be at least 100ms");
  if (o.holWindowMs < 500 || o.holWindowMs > 60_000) throw new Error("--hol-window must be 500ms..60s");
  return {
    ...o,
    only: only.size > 0 ? only : new Set(PARTS),
    protocols: [...new Set(protocols)],
  };
}
