// Runs the control plane: opens the store (embedded PGlite in the data dir, or Postgres), makes the
// first admin key, builds the tunnel registry and the app, and listens.
//
// Start-up keeps the grace period across a restart: the runners the store says were live (sessions
// `starting`/`running` -> `sandbox-{id}`, hosts `online` -> `wolf-{id}`) are expected back for
// gracePeriodMs, so calls for them wait instead of failing at once. The store is read rather than a
// snapshot file because it is right after a kill -9 too.
//
// close() drains, in this order: new tunnels are refused (503 + Retry-After), every live tunnel gets
// GOAWAY, calls in flight (tunnel streams, then the HTTP answers carrying them) finish, all within
// drainTimeoutMs; then what is left is cut, the listener closes and the store closes.

import { randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
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
import { SandboxTracker } from "./sandbox-tracker.ts";

export interface ServerOptions {
  /** HOST:PORT to listen on. Default 127.0.0.1:8080; port 0 picks a free one. */
  listen?: string;
  /** Where the embedded database, admin.key and runner.token live. Default ./data. */
  dataDir?: string;
  /** A Postgres server instead of the embedded database. */
  databaseUrl?: string | null;
  /** The system secret hosts register with; generated into DATA_DIR/runner.token when unset. */
  runnerToken?: string | null;
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
  /** How long close() lets calls in flight finish before cutting them. Default 15 s. */
  drainTimeoutMs?: number;
  /** New tunnel handshakes admitted per second (429 + Retry-After past it). Default 500. */
  admissionRate?: number;
  /** Handshakes admitted at once after a quiet period. Default 2 × admissionRate. */
  admissionBurst?: number;
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
  drainTimeoutMs: 15_000,
});

/** Most sessions read at start-up to expect their sandboxes back (bounds the start-up query). */
const MAX_EXPECTED_SESSIONS = 100_000;

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
  runnerToken: string;
  close(): Promise<void>;
}

export function parseListen(text: string): { host: string; port: number } {
  const match = /^(\[[^\]]+\]|[^:]*):(\d{1,5})$/.exec(text);
  if (!match) throw new InvalidOptionError("listen", `expected HOST:PORT, got "${text}"`);
  const port = Number(match[2]);
  if (port > 65535) throw new InvalidOptionError("listen", `port out of range in "${text}"`);
  return { host: match[1].replace(/^\[|\]$/g, "") || "127.0.0.1", port };
}

async function resolveRunnerToken(
  dataDir: string,
  given: string | null | undefined,
  logger: Logger,
): Promise<string> {
  if (given) return given;
  const path = join(dataDir, "runner.token");
  try {
    return (await readFile(path, "utf8")).trim();
  } catch {
    const token = randomBytes(24).toString("base64url");
    await writeFile(path, `${token}\n`, { mode: 0o600 });
    logger.info({ path }, "runner token generated");
    return token;
  }
}

export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const o = { ...DEFAULTS, ...options };
  const { host, port } = parseListen(o.listen);
  const logger = o.logger;
  await mkdir(o.dataDir, { recursive: true });
  const store = await openStore({ dataDir: o.dataDir, databaseUrl: o.databaseUrl ?? undefined, logger });
  const runnerToken = await resolveRunnerToken(o.dataDir, o.runnerToken, logger);
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
  const endpoint = new TunnelEndpoint({
    registry,
    logger,
    timings,
    maxTunnels: o.maxTunnels,
    admissionRate: o.admissionRate,
    admissionBurst: o.admissionBurst,
    authorize: async (req, runnerId) => {
      const principal = await auth.authenticate(req.headers);
      if (!principal) throw new ApiError(401, "RD_ERR_AUTH_REQUIRED", "missing or invalid token");
      await auth.authorizeRunner(principal, runnerId);
    },
  });
  metrics.addEndpointCounters(() => endpoint.counters());
  const publicUrl =
    o.publicUrl ?? `${o.https ? "https" : "http"}://${host.includes(":") ? `[${host}]` : host}:${port}`;
  const ctx: ApiContext = {
    store,
    auth,
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
  await expectKnownRunners(store, registry, o.gracePeriodMs, logger);
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
        endpoint.stopAccepting();
        await tracker.close();
        // Past the drain, whatever is still in flight is cut.
        const cut = setTimeout(() => {
          logger.warn({ drain_timeout_ms: o.drainTimeoutMs }, "drain timeout: cutting calls still in flight");
          registry.destroy();
          app.server.closeAllConnections?.();
        }, o.drainTimeoutMs);
        try {
          // The listener stays open while tunnels drain, so agents that redial meanwhile get a 503
          // with Retry-After rather than a refused connection; then the HTTP answers still being
          // written finish.
          await registry.close(o.drainTimeoutMs);
          await app.close();
        } finally {
          clearTimeout(cut);
        }
        endpoint.destroy();
        await store.close();
      })();
      return closing;
    },
  };
}

/**
 * Tells the registry which runners were live before this start (from the store), so that calls for
 * them wait out the grace period. A store error here only costs the grace period: it is logged.
 */
async function expectKnownRunners(
  store: Store,
  registry: TunnelRegistry,
  gracePeriodMs: number,
  logger: Logger,
): Promise<void> {
  if (gracePeriodMs <= 0) return;
  try {
    const ids: string[] = [];
    for (const status of ["starting", "running"] as const) {
      const sessions = await store.sessions.list({ status, limit: MAX_EXPECTED_SESSIONS });
      for (const session of sessions) ids.push(`sandbox-${session.id}`);
    }
    for (const host of await store.wolfInstances.list())
      if (host.status === "online") ids.push(`wolf-${host.id}`);
    const expected = registry.expect(ids, Date.now() + gracePeriodMs);
    if (expected > 0) logger.info({ runners: expected, grace_ms: gracePeriodMs }, "expecting tunnels back");
  } catch (err) {
    logger.warn(
      { err },
      "could not read the runners to expect back; calls for them fail until they reconnect",
    );
  }
}
