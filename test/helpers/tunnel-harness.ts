// Real sockets on 127.0.0.1 for tunnel tests: a target HTTP service, a bare tunnel server (an HTTP
// server with the tunnel endpoint and a registry, no control plane), and agents dialing into it.

import http from "node:http";
import type { AddressInfo } from "node:net";
import { silentLogger } from "../../src/common/logger.ts";
import { AgentClient, type AgentClientOptions } from "../../src/tunnel/agent-client.ts";
import { TargetMap } from "../../src/tunnel/target-map.ts";
import { DEFAULT_TIMINGS, type TunnelTimings } from "../../src/tunnel/tunnel.ts";
import { TunnelEndpoint } from "../../src/tunnel/tunnel-endpoint.ts";
import { TunnelRegistry, type TunnelRegistryOptions } from "../../src/tunnel/tunnel-registry.ts";

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
  } = {},
): Promise<TunnelServer> {
  const logger = silentLogger();
  const registry = new TunnelRegistry({ logger, ...options.registry });
  const endpoint = new TunnelEndpoint({
    registry,
    logger,
    timings: { ...DEFAULT_TIMINGS, ...options.timings },
    maxTunnels: options.maxTunnels,
    authorize: async (req) => {
      if (req.headers.authorization !== `Bearer ${TOKEN}`) {
        throw { statusCode: 401, code: "RD_ERR_AUTH_REQUIRED", message: "missing or invalid token" };
      }
    },
  });
  const server = http.createServer((_req, res) => {
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
