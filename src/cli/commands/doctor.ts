// `revdial doctor [--server URL] [--token T | --token-file F]`: checks, in order, what a working
// set-up needs from where the command runs, and prints one line per step, `ok`, `FAIL`, `warn` or
// `skip`, with the fix under each failure; exit 1 on any FAIL. The steps: DNS, TCP, TLS, HTTP
// (/healthz), the WebSocket upgrade to the tunnel endpoint (naming a proxy that strips the Upgrade
// headers) and the raw transport's, authentication, and a round trip through a temporary tunnel
// with its RTT (doctor-round-trip.ts). A step that cannot run because an earlier one failed is
// skipped. Honours REVDIAL_URL, REVDIAL_API_KEY, --ca-file / REVDIAL_CA_FILE and --insecure.

import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { ApiClient, clientOptionsFromEnv } from "../api-client.ts";
import {
  checkDns,
  checkHttp,
  checkRawUpgrade,
  checkTcp,
  checkTls,
  checkWebSocket,
  type DoctorTarget,
  type StepOutcome,
} from "../doctor-checks.ts";
import { checkAuth, checkRoundTrip, type Identity } from "../doctor-round-trip.ts";
import { CliUsageError, durationOption } from "../env.ts";

export interface StepResult extends StepOutcome {
  name: string;
}

interface DoctorFlags {
  server?: string;
  token?: string;
  tokenFile?: string;
  timeout: string;
}

export interface DoctorOptions {
  /** API base URL; default REVDIAL_URL, else http://127.0.0.1:8080. */
  serverUrl?: string;
  /** API key; default REVDIAL_API_KEY, else ./data/admin.key. */
  apiKey?: string | null;
  /** Deadline of each step. */
  timeoutMs: number;
  print?: (line: string) => void;
}

export function register(program: Command): void {
  program
    .command("doctor")
    .description(
      "check DNS, TCP, TLS, HTTP, the tunnel upgrade (and proxies that strip it), the key, and a round trip through a temporary tunnel",
    )
    .option("--server <url>", "API URL (env REVDIAL_URL)")
    .option("--token <key>", "API key to check and open the temporary tunnel with (env REVDIAL_API_KEY)")
    .option("--token-file <file>", "read the API key from FILE (keeps it off the command line)")
    .option("--timeout <duration>", "deadline of each step", "10s")
    .action(async (flags: DoctorFlags) => {
      const results = await runDoctor({
        serverUrl: flags.server,
        apiKey: flags.token ?? (flags.tokenFile ? readTokenFile(flags.tokenFile) : undefined),
        timeoutMs: durationOption("--timeout", flags.timeout),
      });
      if (results.some((r) => r.outcome === "FAIL")) process.exitCode = 1;
    });
}

function readTokenFile(file: string): string {
  let key: string;
  try {
    key = readFileSync(file, "utf8").trim();
  } catch (err) {
    throw new CliUsageError(`--token-file: ${(err as Error).message}`);
  }
  if (!key) throw new CliUsageError(`--token-file: ${file} is empty`);
  return key;
}

type Step = [name: string, run: (t: DoctorTarget, state: RunState) => Promise<StepOutcome>];

interface RunState {
  identity?: Identity;
}

/** Steps after which nothing further can be learnt when they fail. */
const BLOCKING = new Set(["dns", "tcp", "tls", "http"]);

const STEPS: Step[] = [
  ["dns", checkDns],
  ["tcp", checkTcp],
  ["tls", checkTls],
  ["http", checkHttp],
  ["websocket", checkWebSocket],
  ["raw", checkRawUpgrade],
  [
    "auth",
    async (t, state) => {
      const { identity, ...result } = await checkAuth(t);
      state.identity = identity;
      return result;
    },
  ],
  ["tunnel", (t, state) => checkRoundTrip(t, state.identity)],
];

/** Runs every step, printing each line as it completes. */
export async function runDoctor(options: DoctorOptions): Promise<StepResult[]> {
  const print = options.print ?? ((line: string) => process.stdout.write(`${line}\n`));
  const target = targetFor(options);
  const results: StepResult[] = [];
  const runState: RunState = {};
  let blockedBy: string | null = null;
  for (const [name, run] of STEPS) {
    const result: StepResult = {
      name,
      ...(await stepOutcome(name, run, target, runState, blockedBy, results)),
    };
    if (result.outcome === "FAIL" && BLOCKING.has(name)) blockedBy ??= name;
    results.push(result);
    print(`${result.outcome.padEnd(4)}  ${name.padEnd(9)}  ${result.detail}`);
    if (result.fix && (result.outcome === "FAIL" || result.outcome === "warn"))
      print(`${" ".repeat(17)}fix: ${result.fix}`);
  }
  return results;
}

async function stepOutcome(
  name: string,
  run: Step[1],
  target: DoctorTarget,
  runState: RunState,
  blockedBy: string | null,
  earlier: StepResult[],
): Promise<StepOutcome> {
  if (blockedBy) return { outcome: "skip", detail: `the ${blockedBy} step failed` };
  // The round trip needs an accepted key and a passable upgrade.
  if (name === "tunnel") {
    const failed = earlier.find((r) => (r.name === "auth" || r.name === "websocket") && r.outcome === "FAIL");
    if (failed) return { outcome: "skip", detail: `the ${failed.name} step failed` };
  }
  try {
    return await run(target, runState);
  } catch (err) {
    return { outcome: "FAIL", detail: (err as Error).message, fix: "see the message above" };
  }
}

function targetFor(options: DoctorOptions): DoctorTarget {
  const env = clientOptionsFromEnv();
  const baseUrl = (options.serverUrl ?? env.baseUrl).replace(/\/+$/, "");
  let url: URL;
  try {
    url = new URL(baseUrl);
  } catch {
    throw new CliUsageError(`--server: not a URL: "${baseUrl}"`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    throw new CliUsageError(`--server must be an http:// or https:// URL, got ${url.protocol}`);
  const apiKey = options.apiKey === undefined ? env.apiKey : options.apiKey;
  return {
    url,
    host: url.hostname.replace(/^\[|\]$/g, ""),
    port: Number(url.port) || (url.protocol === "https:" ? 443 : 80),
    tls: env.tls,
    client: new ApiClient({ baseUrl, apiKey, tls: env.tls, timeoutMs: options.timeoutMs }),
    apiKey,
    timeoutMs: options.timeoutMs,
  };
}
