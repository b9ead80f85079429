// The ways a request reaches the target in the tunnel benchmark ("paths"), and where the programs
// under test live. Every figure is taken per path; the paths of one run share one target process.

import { join } from "node:path";

export const ROOT = new URL("..", import.meta.url).pathname;
export const CLI = join(ROOT, "src/cli/main.ts");
export const V1_AGENT = join(ROOT, "bench/fixtures/v1-agent.ts");
export const TARGET = join(ROOT, "bench/fixtures/target.ts");

export type Transport = "ws" | "raw";

export interface Path {
  /** As the report prints it: "direct", "v2 ws", "v3 raw", "v1 hijack", "go/v1 ws"… */
  name: string;
  /**
   * direct: the target itself; tunnel: `revdial server` + `revdial agent`; v1: `revdial server` + the
   * Go-like v1 client; go: the Go reference server (with the v1 client or the Go client).
   */
  kind: "direct" | "tunnel" | "v1" | "go";
  /** What carries the tunnel: ws, or raw (the upgraded socket; for v1 the hijacked control connection). */
  transport: Transport | null;
  /** http://host:port/prefix; the target's /small and /big are below it. */
  base: string;
  headers: Readonly<Record<string, string>>;
  /** The process that runs the server (the API), for CPU per call; null for direct. */
  serverPid: number | null;
  /** The process that runs the agent; null for direct. */
  agentPid: number | null;
}

/** A tunnel path of one of the server's own agents (the ones the bars are for). */
export function isTunnel(path: Path): boolean {
  return path.kind === "tunnel";
}
