// Runs the control plane: opens the store (embedded PGlite in the data dir, or Postgres), makes the
// first admin key, builds the tunnel registry and the app, and listens. close() drains: new
// tunnels are refused, live ones get GOAWAY and a bounded drain, then the store closes.

import { access, mkdir } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import type { FastifyInstance } from "fastify";
import { InvalidOptionError } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";
import { openStore, type Store } from "../store/index.ts";
import { DEFAULT_TIMINGS, type TunnelTimings } from "../tunnel/tunnel.ts";
import { TunnelEndpoint } from "../tunnel/tunnel-endpoint.ts";
import { TunnelRegistry } from "../tunnel/tunnel-registry.ts";
import { buildApp } from "./app.ts";
import { type Auth, createAuth, ensureAdminKey } from "./auth.ts";
import type { ApiContext } from "./context.ts";
import { ApiError } from "./http-errors.ts";
import { ApiMetrics } from "./metrics.ts";
import { type QuotaLimits, Quotas } from "./quotas.ts";
import { SandboxTracker } from "./sandbox-tracker.ts";

export interface ServerOptions {
  /** HOST:PORT to listen on. Default 127.0.0.1:8080; port 0 picks a free one. */
  listen?: string;
  /** Where the embedded database and admin.key live. Default ./data. */
  dataDir?: string;
  /** A Postgres server instead of the embedded database. */
  databaseUrl?: string | null;
  /**
   * The seed's shared host secret, only when the operator asks for it (--runner-token-file, env
   * REVDIAL_RUNNER_TOKEN): it registers hosts an admin has created. Unset (the default): hosts use
   * their own keys (`revdial wolf create`).
   */
  runnerToken?: string | null;
  /** Per-user quotas (quotas.ts); each defaults to QUOTA_DEFAULTS. */
  quotas?: Partial<QuotaLimits>;
  /** How long calls wait for a dropped tunnel to come back. Default 30 s. */
  gracePeriodMs?: number;
  /** Largest request body through the proxy. Default 256 MiB. */
  bodyLimit?: number;
  /** Deadline of a call through a tunnel (screenshot, clipboard). Default 15 s. */
  callTimeoutMs?: number;
  /** Tunnel timings (ping, dead link, drain). */
  timings?: Partial<TunnelTimings>;
  /** Tunnels at most. Default 20,000. */
  maxTunnels?: number;
  /** The URL agents use to reach this server (given to hosts). Default from the listen address. */
  publicUrl?: string;
  https?: { key: Buffer; cert: Buffer } | null;
  /** A host with no heartbeat for this long and no tunnel is offline. Default 90 s. */
  hostOfflineAfterMs?: number;
  /** How often hosts are checked for that. Default 15 s. */
  hostSweepIntervalMs?: number;
  logger: Logger;
}

const DEFAULTS = Object.freeze({
  listen: "127.0.0.1:8080",
  dataDir: "./data",
  gracePeriodMs: 30_000,
  bodyLimit: 256 * 1024 * 1024,
  callTimeoutMs: 15_000,
});

export interface RunningServer {
  url: string;
  host: string;
  port: number;
  app: FastifyInstance;
  store: Store;
  auth: Auth;
  registry: TunnelRegistry;
  /** The admin key when this start created it (printed once), else null. */
  adminKey: string | null;
  /** The runner token when the operator configured one, else null. */
  runnerToken: string | null;
  close(): Promise<void>;
}

export function parseListen(text: string): { host: string; port: number } {
  const match = /^(\[[^\]]+\]|[^:]*):(\d{1,5})$/.exec(text);
  if (!match) throw new InvalidOptionError("listen", `expected HOST:PORT, got "${text}"`);
  const port = Number(match[2]);
  if (port > 65535) throw new InvalidOptionError("listen", `port out of range in "${text}"`);
  return { host: match[1].replace(/^\[|\]$/g, "") || "127.0.0.1", port };
}

/** The seed generated DATA_DIR/runner.token; it is no longer read. Say so once, to whoever relied on it. */
async function warnAboutOldRunnerTokenFile(dataDir: string, logger: Logger): Promise<void> {
  const path = join(dataDir, "runner.token");
  const exists = await access(path).then(
    () => true,
    () => false,
  );
  if (exists) {
    logger.warn(
      { path },
      "runner.token is no longer used: hosts register with their own keys (revdial wolf create); pass --runner-token-file to keep the shared token",
    );
  }
}

export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const o = { ...DEFAULTS, ...options };
  const { host, port } = parseListen(o.listen);
  const logger = o.logger;
  await mkdir(o.dataDir, { recursive: true });
  const store = await openStore({ dataDir: o.dataDir, databaseUrl: o.databaseUrl ?? undefined, logger });
  const runnerToken = o.runnerToken ?? null;
  await warnAboutOldRunnerTokenFile(o.dataDir, logger);
  const auth = createAuth({ store, runnerToken, logger });
  const adminKey = await ensureAdminKey({ store, dataDir: o.dataDir, logger });
  const timings = { ...DEFAULT_TIMINGS, ...o.timings };
  // The metrics read the registry only when scraped, after both exist.
  const metrics: ApiMetrics = new ApiMetrics((): number => registry.size);
  const registry: TunnelRegistry = new TunnelRegistry({
    logger,
    gracePeriodMs: o.gracePeriodMs,
    callTimeoutMs: o.callTimeoutMs,
    observer: metrics.observer(),
  });
  metrics.addByteSource(() => registry.bytesTotal());
  const quotas = new Quotas({ store, limits: o.quotas });
  registry.on("connected", (runnerId) => quotas.tunnelConnected(runnerId));
  registry.on("disconnected", (runnerId) => quotas.tunnelDisconnected(runnerId));
  const endpoint = new TunnelEndpoint({
    registry,
    logger,
    timings,
    maxTunnels: o.maxTunnels,
    authorize: async (req, runnerId) => {
      const principal = await auth.authenticate(req.headers);
      if (!principal) throw new ApiError(401, "RD_ERR_AUTH_REQUIRED", "missing or invalid token");
      quotas.admitTunnel(principal, await auth.authorizeRunner(principal, runnerId));
    },
  });
  const publicUrl =
    o.publicUrl ?? `${o.https ? "https" : "http"}://${host.includes(":") ? `[${host}]` : host}:${port}`;
  const ctx: ApiContext = {
    store,
    auth,
    quotas,
    dialer: registry,
    logger,
    config: { publicUrl, bodyLimit: o.bodyLimit, callTimeoutMs: o.callTimeoutMs },
  };
  const app = await buildApp({ ctx, endpoint, metrics, logger, https: o.https });
  const tracker = new SandboxTracker({
    ctx,
    events: registry,
    offlineAfterMs: o.hostOfflineAfterMs,
    sweepIntervalMs: o.hostSweepIntervalMs,
  });
  tracker.start();
  await app.listen({ host, port });
  const actual = (app.server.address() as AddressInfo).port;
  const url = `${o.https ? "https" : "http"}://${host.includes(":") ? `[${host}]` : host}:${actual}`;
  if (!o.publicUrl && port === 0) ctx.config.publicUrl = url;
  let closing: Promise<void> | null = null;
  return {
    url,
    host,
    port: actual,
    app,
    store,
    auth,
    registry,
    adminKey,
    runnerToken,
    close() {
      closing ??= (async () => {
        endpoint.destroy();
        await tracker.close();
        await registry.close();
        await app.close();
        await store.close();
      })();
      return closing;
    },
  };
}
