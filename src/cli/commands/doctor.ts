// `revdial doctor`: checks, in order, what a working set-up needs from where the command runs:
// the server's address answers, its certificate verifies (naming the failure), /healthz answers,
// the API key works, and a WebSocket upgrade reaches the tunnel endpoint (a proxy that drops
// upgrades is the usual fault). One line per check, `ok`, `FAIL` or `skip`; exit 1 on any FAIL.
// Honours REVDIAL_URL, REVDIAL_API_KEY, --ca-file / REVDIAL_CA_FILE and --insecure.

import { randomBytes } from "node:crypto";
import http, { type IncomingMessage } from "node:http";
import https from "node:https";
import net from "node:net";
import tls from "node:tls";
import type { Command } from "commander";
import { TUNNEL_PATH } from "../../tunnel/constants.ts";
import { type ClientTls, classifyTlsError, hostOf } from "../../tunnel/tls.ts";
import { ApiClient, clientOptionsFromEnv } from "../api-client.ts";
import { durationOption } from "../env.ts";

type Outcome = "ok" | "FAIL" | "skip";

export interface CheckResult {
  name: string;
  outcome: Outcome;
  detail: string;
}

interface Target {
  url: URL;
  host: string;
  port: number;
  tls: ClientTls | undefined;
  client: ApiClient;
  apiKey: string | null;
  timeoutMs: number;
}

export function register(program: Command): void {
  program
    .command("doctor")
    .description("check the server URL, TLS, health, API key and WebSocket upgrades from here")
    .option("--timeout <duration>", "deadline of each check", "10s")
    .action(async (flags: { timeout: string }) => {
      const results = await runDoctor(durationOption("--timeout", flags.timeout));
      if (results.some((r) => r.outcome === "FAIL")) process.exitCode = 1;
    });
}

/** Runs every check, printing each line as it completes; later checks skip once one fails. */
export async function runDoctor(
  timeoutMs: number,
  print: (line: string) => void = (line) => process.stdout.write(`${line}\n`),
): Promise<CheckResult[]> {
  const options = clientOptionsFromEnv();
  const url = new URL(options.baseUrl);
  const secure = url.protocol === "https:";
  const target: Target = {
    url,
    host: url.hostname.replace(/^\[|\]$/g, ""),
    port: Number(url.port) || (secure ? 443 : 80),
    tls: options.tls,
    client: new ApiClient({ ...options, timeoutMs }),
    apiKey: options.apiKey,
    timeoutMs,
  };
  const checks: Array<[string, (t: Target) => Promise<Omit<CheckResult, "name">>]> = [
    ["reachable", checkReachable],
    ["tls", checkTls],
    ["healthz", checkHealth],
    ["api key", checkApiKey],
    ["websocket", checkWebSocket],
  ];
  const results: CheckResult[] = [];
  let blocked = false;
  for (const [name, check] of checks) {
    const result: CheckResult = blocked
      ? { name, outcome: "skip", detail: "an earlier check failed" }
      : { name, ...(await check(target).catch((err: Error) => fail(err.message))) };
    // Without a connection or a trusted certificate nothing further can be learnt.
    if (result.outcome === "FAIL" && (name === "reachable" || name === "tls")) blocked = true;
    results.push(result);
    print(`${result.outcome.padEnd(4)}  ${name.padEnd(9)}  ${result.detail}`);
  }
  return results;
}

const ok = (detail: string) => ({ outcome: "ok" as const, detail });
const fail = (detail: string) => ({ outcome: "FAIL" as const, detail });

function checkReachable(t: Target): Promise<Omit<CheckResult, "name">> {
  const started = Date.now();
  return new Promise((resolve) => {
    const socket = net.connect({ host: t.host, port: t.port, timeout: t.timeoutMs });
    socket.once("connect", () => {
      socket.destroy();
      resolve(ok(`${t.host}:${t.port} answers (${Date.now() - started} ms)`));
    });
    socket.once("timeout", () => {
      socket.destroy();
      resolve(fail(`${t.host}:${t.port}: no answer within ${t.timeoutMs} ms`));
    });
    socket.once("error", (err) => resolve(fail(`${t.host}:${t.port}: ${err.message}`)));
  });
}

function checkTls(t: Target): Promise<Omit<CheckResult, "name">> {
  if (t.url.protocol !== "https:")
    return Promise.resolve({ outcome: "skip", detail: "plain http (no TLS on this URL)" });
  return new Promise((resolve) => {
    const socket = tls.connect({
      host: t.host,
      port: t.port,
      servername: net.isIP(t.host) ? undefined : t.host,
      ca: t.tls?.ca,
      rejectUnauthorized: t.tls?.rejectUnauthorized ?? true,
      timeout: t.timeoutMs,
    });
    socket.once("secureConnect", () => {
      const cert = socket.getPeerCertificate();
      const about = `subject ${cert.subject?.CN ?? "?"}, issuer ${cert.issuer?.CN ?? "?"}, valid until ${cert.valid_to}`;
      socket.destroy();
      if (socket.authorized) resolve(ok(`certificate verified (${about})`));
      else resolve(ok(`NOT verified (--insecure): ${socket.authorizationError} (${about})`));
    });
    socket.once("timeout", () => {
      socket.destroy();
      resolve(fail(`no TLS handshake within ${t.timeoutMs} ms`));
    });
    socket.once("error", (err) => {
      const tlsError = classifyTlsError(err, hostOf(t.url));
      resolve(fail(tlsError ? tlsError.message : `TLS handshake failed: ${err.message}`));
    });
  });
}

async function checkHealth(t: Target): Promise<Omit<CheckResult, "name">> {
  const health = await t.client.get<{ status?: string; tunnels?: number }>("/healthz");
  if (health?.status !== "ok") return fail(`/healthz answered ${JSON.stringify(health)}`);
  return ok(`/healthz ok (${health.tunnels ?? "?"} tunnels)`);
}

async function checkApiKey(t: Target): Promise<Omit<CheckResult, "name">> {
  if (!t.apiKey) return fail("no API key (set REVDIAL_API_KEY, or run where ./data/admin.key is)");
  const me = await t.client.get<{ name: string | null; admin: boolean }>("/api/v1/users/me");
  return ok(`key accepted${me.name ? ` for ${me.name}` : ""}${me.admin ? " (admin)" : ""}`);
}

/**
 * Offers an upgrade with an invalid runner id: the tunnel endpoint answers 400 with its own error
 * code before upgrading, which proves the request reached it as an upgrade. Sends no token.
 */
function checkWebSocket(t: Target): Promise<Omit<CheckResult, "name">> {
  const url = new URL(`${t.url.href.replace(/\/+$/, "")}${TUNNEL_PATH}?runnerid=`);
  const secure = url.protocol === "https:";
  return new Promise((resolve) => {
    const req = (secure ? https : http).request(url, {
      headers: {
        connection: "Upgrade",
        upgrade: "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": randomBytes(16).toString("base64"),
      },
      ...(secure ? { ca: t.tls?.ca, rejectUnauthorized: t.tls?.rejectUnauthorized ?? true } : {}),
      agent: false,
      timeout: t.timeoutMs,
    });
    req.once("upgrade", (_res, socket) => {
      socket.destroy();
      resolve(ok(`${TUNNEL_PATH} upgraded`));
    });
    req.once("response", (res) => void readAnswer(res).then((answer) => resolve(judgeUpgrade(answer))));
    req.once("timeout", () => {
      req.destroy();
      resolve(fail(`no answer to the upgrade within ${t.timeoutMs} ms`));
    });
    req.once("error", (err) => resolve(fail(`upgrade failed: ${err.message}`)));
    req.end();
  });
}

async function readAnswer(res: IncomingMessage): Promise<{ status: number; text: string }> {
  let text = "";
  for await (const chunk of res) {
    if (text.length < 4096) text += chunk;
  }
  return { status: res.statusCode ?? 0, text };
}

function judgeUpgrade({ status, text }: { status: number; text: string }): Omit<CheckResult, "name"> {
  let code = "";
  try {
    code = JSON.parse(text).error?.code ?? "";
  } catch {
    // Not our JSON: something else answered.
  }
  if (status === 400 && code === "RD_ERR_TUNNEL_INVALID_RUNNER_ID")
    return ok(`${TUNNEL_PATH} accepts WebSocket upgrades (tunnel endpoint answered)`);
  const snippet = text.trim().replace(/\s+/g, " ").slice(0, 120);
  return fail(
    `the upgrade to ${TUNNEL_PATH} got HTTP ${status}${snippet ? ` (${snippet})` : ""}, not the tunnel ` +
      "endpoint's answer: a proxy in between may not pass WebSocket upgrades (see docs/tls.md)",
  );
}
