// The steps of `revdial doctor` that need a key: authentication (`GET /api/v1/users/me`), and a
// full round trip through a temporary tunnel that the doctor opens itself, as an agent would: a
// tiny target on 127.0.0.1, an in-process AgentClient registered with the given key, calls through
// the API to it, the RTT, then everything closed again. What the key may do decides the route:
//   - an admin key registers `doctor-<random>` and calls it through the admin proxy
//     (`/api/v1/revdial/{id}/proxy/...`);
//   - a user key creates a temporary session, registers `sandbox-{session}` and reads its
//     clipboard through `/api/v1/external-agents/{session}/clipboard` (the target answers the
//     desktop service's route), then stops the session (the API has no session delete: it stays,
//     `stopped`);
//   - read-only, session and host keys may not open such a tunnel: the step is skipped, saying why.

import { randomBytes } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { TargetMap } from "../agent/target-map.ts";
import { AgentClient } from "../agent/tunnel-client.ts";
import { silentLogger } from "../common/logger.ts";
import { ApiRequestError } from "./api-client.ts";
import { type DoctorTarget, fail, ok, type StepOutcome, skip } from "./doctor-checks.ts";

/** Who the key belongs to (the answer of /api/v1/users/me). */
export interface Identity {
  name: string | null;
  admin: boolean;
  scope: string;
  access: string;
}

/** Calls made through the temporary tunnel; the RTT shown is their median. */
export const ROUND_TRIPS = 5;

const KEY_FIX =
  "pass a valid key: --token, --token-file or REVDIAL_API_KEY (an admin makes one with `revdial user create NAME`)";

export async function checkAuth(t: DoctorTarget): Promise<StepOutcome & { identity?: Identity }> {
  if (!t.apiKey) return fail("no API key given", KEY_FIX);
  try {
    const me = await t.client.get<Identity>("/api/v1/users/me");
    const who = `${me.name ? ` for ${me.name}` : ""} (${me.admin ? "admin" : me.scope}, ${me.access})`;
    return { ...ok(`key accepted${who}`), identity: me };
  } catch (err) {
    const e = err as ApiRequestError;
    // A host or session key is valid but may not call user endpoints: authenticated all the same.
    if (e instanceof ApiRequestError && e.status === 403 && e.code === "RD_ERR_AUTH_SCOPE")
      return { ...ok(`key accepted (not a user key: ${e.serverMessage})`), identity: undefined };
    if (e instanceof ApiRequestError && e.status === 401) return fail(`key refused: ${e.message}`, KEY_FIX);
    return fail(`/api/v1/users/me: ${(err as Error).message}`, KEY_FIX);
  }
}

export async function checkRoundTrip(t: DoctorTarget, identity: Identity | undefined): Promise<StepOutcome> {
  if (!identity)
    return skip("this key may not open a tunnel to call through the API (a host or session key)");
  if (identity.access !== "write") return skip("a read-only key: the API lets it register no tunnel");
  if (identity.scope !== "admin" && identity.scope !== "user")
    return skip(`a ${identity.scope} key: the API lets it register no temporary tunnel`);
  const nonce = randomBytes(8).toString("hex");
  const target = await startTarget(nonce);
  try {
    return identity.admin
      ? await adminRoundTrip(t, target.port, nonce)
      : await userRoundTrip(t, target.port, nonce);
  } finally {
    await target.close();
  }
}

async function adminRoundTrip(t: DoctorTarget, port: number, nonce: string): Promise<StepOutcome> {
  const runnerId = `doctor-${randomBytes(6).toString("hex")}`;
  return throughTunnel(t, runnerId, port, "the admin proxy", async () => {
    const answer = await text(t, `/api/v1/revdial/${runnerId}/proxy/revdial-doctor?nonce=${nonce}`);
    return answer === `revdial-doctor ${nonce}` ? null : `the tunnel answered ${JSON.stringify(answer)}`;
  });
}

async function userRoundTrip(t: DoctorTarget, port: number, nonce: string): Promise<StepOutcome> {
  const session = await t.client.post<{ id: string }>("/api/v1/sessions", { name: "revdial doctor" });
  let stopped = false;
  // Stopped while the tunnel is still up: a stop may ask the sandbox for a final screenshot.
  const stop = async () => {
    stopped = await t.client.delete(`/api/v1/external-agents/${session.id}`).then(
      () => true,
      () => false,
    );
  };
  const result = await throughTunnel(
    t,
    `sandbox-${session.id}`,
    port,
    "a temporary session's clipboard",
    async () => {
      const clip = await t.client.get<{ data?: string }>(`/api/v1/external-agents/${session.id}/clipboard`);
      return clip.data === `revdial-doctor ${nonce}` ? null : `the clipboard read ${JSON.stringify(clip)}`;
    },
    stop,
  );
  if (!stopped) await stop();
  const after = stopped ? "stopped" : "could NOT be stopped: stop it with `revdial spectask stop`";
  return { ...result, detail: `${result.detail}; session ${session.id} ${after}` };
}

/**
 * Registers `runnerId` with the key, runs `call` ROUND_TRIPS times (it returns null when the answer
 * is right, else what was wrong), runs `beforeClose`, and closes the tunnel whatever happened.
 */
async function throughTunnel(
  t: DoctorTarget,
  runnerId: string,
  port: number,
  route: string,
  call: () => Promise<string | null>,
  beforeClose: () => Promise<void> = async () => {},
): Promise<StepOutcome> {
  const agent = new AgentClient({
    serverUrl: t.url.href,
    runnerId,
    token: t.apiKey as string,
    targets: TargetMap.fromFlags(`127.0.0.1:${port}`, []),
    logger: silentLogger(),
    tls: t.tls,
    handshakeTimeoutMs: t.timeoutMs,
  });
  const connected = firstOf(agent, t.timeoutMs);
  void agent.start();
  try {
    const failure = await connected;
    if (failure)
      return fail(`the temporary tunnel ${runnerId} did not connect: ${failure}`, tunnelFix(failure));
    const times: number[] = [];
    for (let i = 0; i < ROUND_TRIPS; i++) {
      const started = performance.now();
      const wrong = await call();
      if (wrong) return fail(`${route}: ${wrong}`, "the API did not route the call to this tunnel");
      times.push(performance.now() - started);
    }
    times.sort((a, b) => a - b);
    const median = times[Math.floor(times.length / 2)];
    return ok(
      `round trip through ${runnerId} via ${route}: RTT ${median.toFixed(1)} ms (median of ${ROUND_TRIPS}), tunnel closed`,
    );
  } catch (err) {
    return fail(`${route}: ${(err as Error).message}`, "see the server's log for this call");
  } finally {
    await beforeClose();
    await agent.close(1000);
  }
}

/** Resolves null once the agent is connected, or the first connect error's message. */
function firstOf(agent: AgentClient, timeoutMs: number): Promise<string | null> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => done(`not connected within ${timeoutMs} ms`), timeoutMs);
    const onState = (state: string) => state === "connected" && done(null);
    const onError = (err: Error) => done(err.message);
    function done(result: string | null) {
      clearTimeout(timer);
      agent.off("state", onState);
      agent.off("connect-error", onError);
      resolve(result);
    }
    agent.on("state", onState);
    agent.on("connect-error", onError);
  });
}

function tunnelFix(failure: string): string {
  if (/strips the Upgrade/.test(failure))
    return "forward the Upgrade and Connection headers (see docs/reverse-proxy.md)";
  if (/\(40[13]\)/.test(failure)) return "this key may not register that runner id";
  return "see the websocket step, and the server's log";
}

async function text(t: DoctorTarget, path: string): Promise<string> {
  const answer = await t.client.raw(path);
  return answer.body ? await new Response(answer.body).text() : "";
}

/** The tunnel's far end: answers the doctor's path and the desktop service's clipboard route. */
async function startTarget(nonce: string): Promise<{ port: number; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "").split("?")[0];
    if (req.method === "GET" && path === "/revdial-doctor") res.end(`revdial-doctor ${nonce}`);
    else if (req.method === "GET" && path === "/clipboard") {
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ type: "text", data: `revdial-doctor ${nonce}` }));
    } else {
      res.statusCode = 404;
      res.end("not found");
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
