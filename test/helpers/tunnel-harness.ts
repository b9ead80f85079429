// Real sockets on 127.0.0.1 for tunnel tests: a target HTTP service, a bare tunnel server (an HTTP
// server with the tunnel endpoint and a registry, no control plane), and agents dialing into it.

import { type ChildProcess, spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import { type Logger, pino } from "pino";
import { TargetMap } from "../../src/agent/target-map.ts";
import { AgentClient, type AgentClientOptions } from "../../src/agent/tunnel-client.ts";
import { TunnelEndpoint, type TunnelEndpointOptions } from "../../src/api/tunnel/tunnel-endpoint.ts";
import { TunnelRegistry, type TunnelRegistryOptions } from "../../src/api/tunnel/tunnel-registry.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { DEFAULT_TIMINGS, type TunnelTimings } from "../../src/tunnel/tunnel.ts";

export const TOKEN = "test-runner-token";

export interface Listening {
  server: http.Server;
  url: string;
  port: number;
  close(): Promise<void>;
}

export async function listen(server: http.Server): Promise<Listening> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    server,
    port,
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections?.();
        server.close(() => resolve());
      }),
  };
}

/** A target that answers every request with its path, method and body echoed back. */
export function startTarget(handler?: http.RequestListener): Promise<Listening> {
  return listen(
    http.createServer(
      handler ??
        ((req, res) => {
          const chunks: Buffer[] = [];
          req.on("data", (c) => chunks.push(c));
          req.on("end", () => {
            res.setHeader("x-echo-method", req.method ?? "");
            res.setHeader("x-echo-path", req.url ?? "");
            res.end(Buffer.concat(chunks));
          });
        }),
    ),
  );
}

export interface TunnelServer extends Listening {
  registry: TunnelRegistry;
  endpoint: TunnelEndpoint;
}

export async function startTunnelServer(
  options: {
    timings?: Partial<TunnelTimings>;
    registry?: Partial<TunnelRegistryOptions>;
    maxTunnels?: number;
    /** Endpoint options beyond the ones above (admission rate, clock, ...). */
    endpoint?: Partial<Omit<TunnelEndpointOptions, "registry" | "logger" | "timings" | "authorize">>;
    /** Replaces the check of TOKEN (which throws 401 for any other). */
    authorize?: TunnelEndpointOptions["authorize"];
    logger?: Logger;
  } = {},
): Promise<TunnelServer> {
  const logger = options.logger ?? silentLogger();
  const registry = new TunnelRegistry({ logger, ...options.registry });
  const endpoint = new TunnelEndpoint({
    ...options.endpoint,
    registry,
    logger,
    timings: { ...DEFAULT_TIMINGS, ...options.timings },
    maxTunnels: options.maxTunnels,
    authorize:
      options.authorize ??
      (async (req) => {
        if (req.headers.authorization !== `Bearer ${TOKEN}`) {
          throw { statusCode: 401, code: "RD_ERR_AUTH_REQUIRED", message: "missing or invalid token" };
        }
      }),
  });
  const server = http.createServer((req, res) => {
    // A plain GET on the tunnel path may be a hijacked v1 control connection (the API's route does
    // the same, answering the rest 426).
    if (endpoint.matches(req) && endpoint.handlePlainRequest(req, res)) return;
    res.statusCode = 404;
    res.end();
  });
  server.on("upgrade", (req, socket, head) => {
    if (endpoint.matches(req)) void endpoint.handleUpgrade(req, socket, head);
    else socket.destroy();
  });
  const l = await listen(server);
  return {
    ...l,
    registry,
    endpoint,
    close: async () => {
      registry.destroy();
      endpoint.destroy();
      await l.close();
    },
  };
}

/**
 * The transport agents use in tunnel tests: `ws` by default; REVDIAL_TEST_TRANSPORT=raw runs the same
 * suite over the raw upgraded socket (CI runs both).
 */
export const TEST_TRANSPORT: "ws" | "raw" = process.env.REVDIAL_TEST_TRANSPORT === "raw" ? "raw" : "ws";

/**
 * The protocol agents use in tunnel tests: `v3` (the agent's default); REVDIAL_TEST_PROTOCOL=v2 runs
 * the same suite over HTTP/2 (CI runs both).
 */
export const TEST_PROTOCOL: "v2" | "v3" = process.env.REVDIAL_TEST_PROTOCOL === "v2" ? "v2" : "v3";

/** How the server names TEST_PROTOCOL in its tunnel list and metrics. */
export const TEST_PROTOCOL_NAME: "h2" | "mux" = TEST_PROTOCOL === "v2" ? "h2" : "mux";

export function startAgent(
  serverUrl: string,
  runnerId: string,
  local: string,
  extra: Partial<AgentClientOptions> = {},
): AgentClient {
  const agent = new AgentClient({
    serverUrl,
    runnerId,
    token: TOKEN,
    targets: TargetMap.fromFlags(local, []),
    logger: silentLogger(),
    backoffBaseMs: 20,
    backoffCapMs: 200,
    transport: TEST_TRANSPORT,
    protocol: TEST_PROTOCOL,
    ...extra,
  });
  void agent.start();
  return agent;
}

/** Resolves once the registry has a live tunnel for the runner id. */
export function waitConnected(registry: TunnelRegistry, runnerId: string, timeoutMs = 5000): Promise<void> {
  if (registry.isConnected(runnerId)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${runnerId} did not connect in ${timeoutMs} ms`)),
      timeoutMs,
    );
    const on = (id: string) => {
      if (id !== runnerId) return;
      clearTimeout(timer);
      registry.off("connected", on);
      resolve();
    };
    registry.on("connected", on);
  });
}

export async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** Polls `check` until it returns true, failing with `what` after `timeoutMs`. */
export async function pollUntil(
  check: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 5000,
  intervalMs = 10,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** Resolves once the registry has dropped the runner's live tunnel. */
export function waitDisconnected(
  registry: TunnelRegistry,
  runnerId: string,
  timeoutMs = 5000,
): Promise<string> {
  if (!registry.isConnected(runnerId)) return Promise.resolve("not connected");
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${runnerId} did not disconnect in ${timeoutMs} ms`)),
      timeoutMs,
    );
    const on = (id: string, reason: string) => {
      if (id !== runnerId) return;
      clearTimeout(timer);
      registry.off("disconnected", on);
      resolve(reason);
    };
    registry.on("disconnected", on);
  });
}

export interface AgentProcess {
  child: ChildProcess;
  /** Resolves once the agent reports its tunnel connected (the first time). */
  connected: Promise<void>;
  /** Resolves when the process has exited. */
  exited: Promise<void>;
  /** SIGKILLs the process (SIGCONT first if stopped) and waits for it to exit. Idempotent. */
  kill(): Promise<void>;
}

const AGENT_FIXTURE = fileURLToPath(new URL("../tunnel/fixtures/agent-process.ts", import.meta.url));

export interface AgentProcessOptions {
  /** How long `connected` waits. Default 10 s. */
  timeoutMs?: number;
  /** The token the agent registers with (an admin key for an ad-hoc runner id). Default TOKEN. */
  token?: string;
}

/** Runs an agent in a child process (test/tunnel/fixtures/agent-process.ts). */
export function spawnAgentProcess(
  serverUrl: string,
  runnerId: string,
  local: string,
  options: AgentProcessOptions = {},
): AgentProcess {
  const timeoutMs = options.timeoutMs ?? 10_000;
  // The token goes by the environment, not argv, where every local user could read it.
  const env = { ...process.env, REVDIAL_TEST_AGENT_TOKEN: options.token ?? "" };
  const child = spawn(process.execPath, [AGENT_FIXTURE, serverUrl, runnerId, local], {
    stdio: ["ignore", "pipe", "inherit"],
    env,
  });
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once("exit", () => resolve());
  });
  const connected = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`agent process did not connect in ${timeoutMs} ms`)),
      timeoutMs,
    );
    let buffered = "";
    child.stdout?.setEncoding("utf8");
    child.stdout?.on("data", (text: string) => {
      buffered += text;
      if (buffered.includes('"state":"connected"')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`agent process exited (${code ?? signal}) before connecting`));
    });
  });
  connected.catch(() => {});
  return {
    child,
    connected,
    exited,
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGCONT");
        child.kill("SIGKILL");
      }
      await exited;
    },
  };
}

/**
 * Resolves once the agent itself is in `state`. The server registers a tunnel as soon as it has
 * answered the upgrade, which can be before the agent has read that answer.
 */
export function waitAgentState(agent: AgentClient, state: string, timeoutMs = 5000): Promise<void> {
  if (agent.state === state) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      agent.off("state", on);
      reject(new Error(`agent did not reach state ${state} in ${timeoutMs} ms (is ${agent.state})`));
    }, timeoutMs);
    const on = (s: string) => {
      if (s !== state) return;
      clearTimeout(timer);
      agent.off("state", on);
      resolve();
    };
    agent.on("state", on);
  });
}

/** A logger whose JSON lines are kept in `lines` (parsed), for tests that assert what was logged. */
export function captureLogger(level = "debug"): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString("utf8").split("\n")) if (line) lines.push(JSON.parse(line));
      callback();
    },
  });
  return { logger: pino({ level }, sink), lines };
}

/** File descriptors this process holds now (Linux). */
export function openFds(): number {
  return readdirSync("/proc/self/fd").length;
}

/**
 * Waits until this process holds no more descriptors than `baseline` (sockets close a tick or more
 * after their last event), failing with the difference.
 */
export async function fdsBackTo(baseline: number, timeoutMs = 5000): Promise<void> {
  await pollUntil(
    () => openFds() <= baseline,
    `descriptors back to ${baseline} (now ${openFds()})`,
    timeoutMs,
  );
}
