// What this checkout can run, decided before any process starts: which protocols `revdial agent`
// offers (read from its --help, so the bench follows the agent instead of guessing), whether the
// Go-like v1 client (bench/fixtures/v1-agent.ts) and the Go reference (bench/fixtures/go-reference/)
// are there. Everything asked for but missing becomes a note that the report prints: the bench runs
// what exists and says what it left out, rather than failing.

import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { type GoManifest, readGoManifest } from "./tunnel-go-reference.ts";
import type { Options } from "./tunnel-options.ts";
import { CLI, ROOT, V1_AGENT } from "./tunnel-paths.ts";

export type AgentProtocol = "v2" | "v3";

export interface Plan {
  /** The `revdial agent` protocols to run, in order. */
  agentProtocols: AgentProtocol[];
  /** Whether the agent takes `--protocol` (before it did, its one protocol was v2 and no flag existed). */
  protocolFlag: boolean;
  /** bench/fixtures/v1-agent.ts when v1 is asked for and the file exists. */
  v1Agent: string | null;
  /** The Go reference's manifest when v1 is asked for and it is built. */
  go: GoManifest | null;
  /** What was asked for and cannot run, one sentence each. */
  notes: string[];
}

/** The values `revdial agent --protocol` takes, from its --help; null when it has no such option. */
export function agentProtocolChoices(): string[] | null {
  return protocolChoices(execFileSync(process.execPath, [CLI, "agent", "--help"], { encoding: "utf8" }));
}

/** From commander's help text: `--protocol <v2|v3>` gives ["v2", "v3"]; a bare `--protocol <p>`, v2 and v3. */
export function protocolChoices(help: string): string[] | null {
  const line = help.split("\n").find((l) => /^\s*--protocol\b/.test(l));
  if (!line) return null;
  const choices = (/--protocol\s+<([^>]+)>/.exec(line)?.[1] ?? "").split("|").map((c) => c.trim());
  return choices.length > 1 && choices.every((c) => /^v\d+$/.test(c)) ? choices : ["v2", "v3"];
}

export function makePlan(o: Options): Plan {
  const notes: string[] = [];
  const asked = o.protocols.filter((p): p is AgentProtocol => p !== "v1");
  const choices = agentProtocolChoices();
  let agentProtocols: AgentProtocol[];
  if (choices === null) {
    // The agent before --protocol: v2 is all it speaks.
    const instead = asked.includes("v2") ? "" : "; v2, its one protocol, runs instead";
    for (const p of asked.filter((p) => p !== "v2"))
      notes.push(`${p}: not run (revdial agent has no --protocol option yet${instead})`);
    agentProtocols = asked.length > 0 ? ["v2"] : [];
  } else {
    agentProtocols = asked.filter((p) => choices.includes(p));
    for (const p of asked.filter((p) => !choices.includes(p)))
      notes.push(`${p}: not run (revdial agent --protocol takes ${choices.join("|")})`);
  }
  let v1Agent: string | null = null;
  let go: GoManifest | null = null;
  if (o.protocols.includes("v1")) {
    if (existsSync(V1_AGENT)) v1Agent = V1_AGENT;
    else notes.push("v1: skipped (bench/fixtures/v1-agent.ts not present)");
    const manifest = readGoManifest(ROOT);
    if ("skip" in manifest) notes.push(manifest.skip);
    else go = manifest;
  } else if (o.only.has("req")) {
    notes.push("v1 figure (v1 client vs the Go server): not run (add --protocol v1, or all)");
  }
  return { agentProtocols, protocolFlag: choices !== null, v1Agent, go, notes };
}
