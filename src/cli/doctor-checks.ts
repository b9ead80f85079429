// The network steps of `revdial doctor`, in the order a connection goes through them: DNS, TCP,
// TLS, HTTP (/healthz), and the two tunnel upgrades (WebSocket and the raw `Upgrade: revdial.h2`).
// Each step returns passed or failed with the fix for a failure; none throws. A failed upgrade is
// classified by src/tunnel/upgrade-diagnosis.ts, which tells a proxy that strips the Upgrade headers
// from the tunnel endpoint's own refusal.

import { randomBytes } from "node:crypto";
import { lookup } from "node:dns/promises";
import http, { type IncomingMessage } from "node:http";
import https from "node:https";
import net from "node:net";
import tls from "node:tls";
import { type ClientTls, classifyTlsError, hostOf, type TlsFailureReason } from "../common/tls.ts";
import { RAW_UPGRADE, TUNNEL_PATH } from "../tunnel/constants.ts";
import { diagnoseUpgradeAnswer } from "../tunnel/upgrade-diagnosis.ts";
import type { ApiClient } from "./api-client.ts";

/** `warn` is shown but does not fail the run (something only some set-ups use). */
export type Outcome = "ok" | "FAIL" | "warn" | "skip";

export interface StepOutcome {
  outcome: Outcome;
  detail: string;
  /** What to change, for FAIL and warn. */
  fix?: string;
}

/** What every step needs to know about the server, built once by the doctor command. */
export interface DoctorTarget {
  url: URL;
  host: string;
  port: number;
  tls: ClientTls | undefined;
  client: ApiClient;
  apiKey: string | null;
  /** Deadline of each network step. */
  timeoutMs: number;
}

export const ok = (detail: string): StepOutcome => ({ outcome: "ok", detail });
export const fail = (detail: string, fix: string): StepOutcome => ({ outcome: "FAIL", detail, fix });
export const skip = (detail: string): StepOutcome => ({ outcome: "skip", detail });

export async function checkDns(t: DoctorTarget): Promise<StepOutcome> {
  if (net.isIP(t.host)) return ok(`${t.host} is an IP address (nothing to resolve)`);
  const started = Date.now();
  try {
    const found = await lookup(t.host, { all: true });
    const list = found.map((a) => a.address).join(", ");
    return ok(`${t.host} resolves to ${list} (${Date.now() - started} ms)`);
  } catch (err) {
    return fail(
      `${t.host} does not resolve: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      "check the host name in --server / REVDIAL_URL, and this machine's resolver (/etc/resolv.conf)",
    );
  }
}

const TCP_FIXES: Record<string, string> = {
  ECONNREFUSED:
    "nothing listens there: start the server (`revdial server --listen HOST:PORT`), or fix the port in --server",
  ETIMEDOUT: "no answer: a firewall drops the packets, or the address is not the server's",
  EHOSTUNREACH: "no route to the host: check the network between here and the server",
  ENETUNREACH: "no route to the network: check the network between here and the server",
};

export function checkTcp(t: DoctorTarget): Promise<StepOutcome> {
  const started = Date.now();
  const where = `${t.host}:${t.port}`;
  return new Promise((resolve) => {
    const socket = net.connect({ host: t.host, port: t.port, timeout: t.timeoutMs });
    socket.once("connect", () => {
      socket.destroy();
      resolve(ok(`connected to ${where} (${Date.now() - started} ms)`));
    });
    socket.once("timeout", () => {
      socket.destroy();
      resolve(fail(`${where}: no connection within ${t.timeoutMs} ms`, TCP_FIXES.ETIMEDOUT));
    });
    socket.once("error", (err: NodeJS.ErrnoException) => {
      const fix = TCP_FIXES[err.code ?? ""] ?? "check the address and port in --server / REVDIAL_URL";
      resolve(fail(`${where}: ${err.code ?? err.message}`, fix));
    });
  });
}

const TLS_FIXES: Record<TlsFailureReason, string> = {
  "unknown authority": "pass --ca-file with the CA that issued the certificate, or serve the full chain",
  expired: "renew the certificate, then `kill -HUP` the server (see docs/tls.md)",
  "not yet valid": "check the clocks of this machine and the server",
  "name mismatch": "use the name the certificate was issued for in --server, or add it to the certificate",
  revoked: "issue a new certificate",
  "invalid certificate": "serve a valid chain (certificate, then intermediates)",
};

export function checkTls(t: DoctorTarget): Promise<StepOutcome> {
  if (t.url.protocol !== "https:") return Promise.resolve(skip("plain http:// (no TLS on this URL)"));
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
      resolve(fail(`no TLS handshake within ${t.timeoutMs} ms`, "is this port TLS? use http:// if not"));
    });
    socket.once("error", (err) => {
      const tlsError = classifyTlsError(err, hostOf(t.url));
      if (tlsError) resolve(fail(tlsError.message, TLS_FIXES[tlsError.reason]));
      else resolve(fail(`TLS handshake failed: ${err.message}`, "is this port TLS? use http:// if not"));
    });
  });
}

export async function checkHttp(t: DoctorTarget): Promise<StepOutcome> {
  const fix =
    '--server must point at the revdial API (its /healthz answers {"status":"ok"}); behind a proxy, check where it forwards to';
  try {
    const health = await t.client.get<{ status?: string; tunnels?: number }>("/healthz");
    if (health?.status !== "ok") return fail(`/healthz answered ${JSON.stringify(health)}`, fix);
    return ok(`/healthz ok (${health.tunnels ?? "?"} tunnels)`);
  } catch (err) {
    return fail(`/healthz: ${(err as Error).message}`, fix);
  }
}

/**
 * Offers a WebSocket upgrade with an empty runner id: the tunnel endpoint refuses it with its own
 * 400 before upgrading, which proves the upgrade reached it. A proxy that strips the Upgrade headers
 * makes it a plain GET, answered 426 by the API or by the proxy itself.
 */
export async function checkWebSocket(t: DoctorTarget): Promise<StepOutcome> {
  const answer = await offerUpgrade(t, {
    upgrade: "websocket",
    "sec-websocket-version": "13",
    "sec-websocket-key": randomBytes(16).toString("base64"),
  });
  return judge(answer, "WebSocket upgrades", "agents cannot connect through this path");
}

/** The same for the raw transport (`--transport raw`); a failure only warns: `ws` is the default. */
export async function checkRawUpgrade(t: DoctorTarget): Promise<StepOutcome> {
  const answer = await offerUpgrade(t, { upgrade: RAW_UPGRADE });
  const result = judge(answer, `\`Upgrade: ${RAW_UPGRADE}\` (--transport raw)`, "");
  if (result.outcome !== "FAIL") return result;
  return {
    outcome: "warn",
    detail: `--transport raw will not work from here: ${result.detail}`,
    fix: `run agents with --transport ws (the default), or ${result.fix}`,
  };
}

type UpgradeResult = { status: number; body: string; upgraded: boolean } | { error: string };

function judge(answer: UpgradeResult, what: string, consequence: string): StepOutcome {
  if ("error" in answer)
    return fail(`the upgrade to ${TUNNEL_PATH} failed: ${answer.error}`, "see the tcp and tls steps above");
  if (answer.upgraded) return ok(`${TUNNEL_PATH} upgraded at once (unexpected, but it passes upgrades)`);
  const d = diagnoseUpgradeAnswer(answer);
  if (d.verdict === "endpoint" && answer.status === 400 && d.code === "RD_ERR_TUNNEL_INVALID_RUNNER_ID")
    return ok(`${TUNNEL_PATH} accepts ${what} (the tunnel endpoint answered)`);
  if (d.verdict === "endpoint")
    return ok(`${TUNNEL_PATH} accepts ${what} (the tunnel endpoint answered: ${d.message})`);
  return fail(consequence ? `${d.problem}: ${consequence}` : d.problem, d.fix);
}

function offerUpgrade(t: DoctorTarget, headers: Record<string, string>): Promise<UpgradeResult> {
  const url = new URL(`${t.url.href.replace(/\/+$/, "")}${TUNNEL_PATH}?runnerid=`);
  const secure = url.protocol === "https:";
  return new Promise((resolve) => {
    const req = (secure ? https : http).request(url, {
      headers: {
        connection: "Upgrade",
        ...headers,
        ...(t.apiKey ? { authorization: `Bearer ${t.apiKey}` } : {}),
      },
      ...(secure ? { ca: t.tls?.ca, rejectUnauthorized: t.tls?.rejectUnauthorized ?? true } : {}),
      agent: false,
      timeout: t.timeoutMs,
    });
    req.once("upgrade", (_res, socket) => {
      socket.destroy();
      resolve({ status: 101, body: "", upgraded: true });
    });
    req.once("response", (res) => void readAnswer(res).then(resolve));
    req.once("timeout", () => {
      req.destroy();
      resolve({ error: `no answer within ${t.timeoutMs} ms` });
    });
    req.once("error", (err) => resolve({ error: err.message }));
    req.end();
  });
}

async function readAnswer(res: IncomingMessage): Promise<UpgradeResult> {
  let body = "";
  for await (const chunk of res) {
    if (body.length < 4096) body += chunk;
  }
  return { status: res.statusCode ?? 0, body, upgraded: false };
}
