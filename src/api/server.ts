// Runs the control plane: locks the data dir, opens the store (embedded PGlite in the data dir, or
// Postgres), makes the first admin key, builds the tunnel registry and the app, and listens.
// close() drains: new tunnels are refused, live ones get GOAWAY and a bounded drain, then the store
// closes and the lock is released.
//
// Start-up contract: the data dir is locked before anything in it is read or written (a second
// server on the same dir fails with RD_ERR_DATA_DIR_LOCKED naming the holder's pid, also with
// DATABASE_URL, since the dir still holds admin.key); the dir is made 0700 and
// every file in it 0600 on every start; and when any step fails, everything opened so far (store,
// registry, app, lock) is closed before the error is thrown, so the caller can exit at once.
//
// Start-up keeps the grace period across a restart: the runners that were live before it are
// expected back for gracePeriodMs, so calls for them wait instead of failing at once. They come from
// two sources, unioned: the store (sessions `starting`/`running` -> `sandbox-{id}`, hosts `online` ->
// `wolf-{id}`), which is right after a kill -9 too, and the registry snapshot
// (DATA_DIR/tunnels.snapshot, tunnel/registry-snapshot.ts), which also knows the runners registered
// ad hoc with an admin key, at most a second old.
//
// close() drains, in this order: new tunnels are refused (503 + Retry-After), the registry snapshot
// is saved as it is then (so a clean restart expects what a crash would), every live tunnel gets
// GOAWAY, calls in flight (tunnel streams, then the HTTP answers carrying them) finish, all within
// drainTimeoutMs; then what is left is cut, the listener closes and the store closes.

import { access } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import type { FastifyInstance } from "fastify";
import { InvalidOptionError } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";
import {
  type DataDirLock,
  ensureDir,
  lockDataDir,
  openStore,
  PRIVATE_DIR_MODE,
  type Store,
  type StoreOptions,
  secureTree,
} from "../store/index.ts";
import { DEFAULT_TIMINGS, type TunnelTimings } from "../tunnel/tunnel.ts";
import { buildApp } from "./app.ts";
import { type Auth, createAuth, ensureAdminKey } from "./auth.ts";
import type { Cluster } from "./cluster/cluster.ts";
import { DRAIN_REASON } from "./cluster/cluster.ts";
import { checkReplicaOptions, joinCluster, type ReplicaOptions } from "./cluster/replica.ts";
import type { ApiContext } from "./context.ts";
import { ChangePublisher } from "./events/change-publisher.ts";
import { type ClusterEvents, startClusterEvents } from "./events/cluster-events.ts";
import { EventBus } from "./events/event-bus.ts";
import { observeStore } from "./events/store-observer.ts";
import { ApiError, toApiError } from "./http-errors.ts";
import { LifecycleSweeper, type LifecycleSweeperOptions } from "./lifecycle-sweeper.ts";
import { ApiMetrics } from "./metrics.ts";
import { type QuotaLimits, Quotas } from "./quotas.ts";
import { stopHostSessions } from "./routes/lifecycle.ts";
import { SandboxTracker } from "./sandbox-tracker.ts";
import { RegistrySnapshot } from "./tunnel/registry-snapshot.ts";
import { SNAPSHOT_FILE_NAME, SnapshotFile } from "./tunnel/snapshot-file.ts";
import { TunnelEndpoint } from "./tunnel/tunnel-endpoint.ts";
import { TunnelRegistry } from "./tunnel/tunnel-registry.ts";

export interface ServerOptions {
  /** HOST:PORT to listen on. Default 127.0.0.1:8080; port 0 picks a free one. */
  listen?: string;
  /** Where the embedded database and admin.key live. Default ./data. */
  dataDir?: string;
  /** A Postgres server instead of the embedded database. */
  databaseUrl?: string | null;
  /** Postgres timeouts and pool size (defaults in src/store/index.ts: 5 s connect, 10 s statement). */
  storeLimits?: Pick<
    StoreOptions,
    "connectTimeoutMs" | "statementTimeoutMs" | "idleTimeoutMs" | "maxConnections"
  >;
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
  /** Largest screenshot a sandbox may answer (and final screenshot stored). Default 16 MiB. */
  screenshotLimit?: number;
  /** Bytes of stored final screenshots kept per user, oldest dropped first. Default 64 MiB. */
  storedScreenshotsPerUser?: number;
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
  /** The lifecycle sweeper's bounds (src/api/lifecycle-sweeper.ts): interval 15 s, starting 45 s. */
  lifecycle?: Omit<LifecycleSweeperOptions, "ctx">;
  /** Keep-alive and key re-check interval of GET /api/v1/events streams. Default 15 s. */
  eventsHeartbeatMs?: number;
  /** Run as one replica of a cluster (src/api/cluster/); needs databaseUrl. */
  replica?: ReplicaOptions | null;
  /** Tests only: see ApiConfig.startPlanningFault. */
  startPlanningFault?: (step: string) => void;
  logger: Logger;
}

/** A failed start closes what it opened within this long, so the process can exit within 2 s. */
const START_CLEANUP_DEADLINE_MS = 1500;

const DEFAULTS = Object.freeze({
  listen: "127.0.0.1:8080",
  dataDir: "./data",
  gracePeriodMs: 30_000,
  bodyLimit: 256 * 1024 * 1024,
  callTimeoutMs: 15_000,
  screenshotLimit: 16 * 1024 * 1024,
  storedScreenshotsPerUser: 64 * 1024 * 1024,
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
  /** The live changes GET /api/v1/events streams; another source (another replica's) may publish too. */
  events: EventBus;
  /** Replica mode: this replica's part of the cluster; null for a single server. */
  cluster: Cluster | null;
  /** The admin key when this start created it (printed once), else null. */
  adminKey: string | null;
  /** The runner token when the operator configured one, else null. */
  runnerToken: string | null;
  /** Stops every session placed on the host (final screenshot, lobby, task back); before a local host closes. */
  stopSessionsOnHost(hostId: string): Promise<number>;
  close(): Promise<void>;
}

function positiveSize(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new InvalidOptionError(name, `expected a positive number of bytes, got ${value}`);
  }
  return value;
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

/**
 * A refused handshake as the endpoint writes it: a status, a public message (a store outage names
 * no address), and Retry-After (the endpoint reads `retryAfter`) so agents back off.
 */
function handshakeError(err: unknown): ApiError & { retryAfter?: number } {
  const api = toApiError(err);
  return Object.assign(api, { retryAfter: api.retryAfterSeconds });
}

export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const o: ResolvedOptions = { ...DEFAULTS, ...options };
  const { host, port } = parseListen(o.listen);
  const logger = o.replica ? o.logger.child({ replica_id: o.replica.replicaId }) : o.logger;
  o.logger = logger;
  if (o.replica) checkReplicaOptions(o.replica, o.databaseUrl);
  // The lock comes first: a second server on this data dir stops here, before touching any file.
  await ensureDir(o.dataDir, PRIVATE_DIR_MODE);
  const lock = await lockDataDir(o.dataDir, { logger });
  // Undone in reverse order when a later step fails, so a failed start leaves nothing open.
  const undo: (() => unknown)[] = [];
  try {
    return await startLocked(o, host, port, lock, undo);
  } catch (err) {
    // The lock goes last, and only once the store is closed: a store still closing must not be
    // opened by the next server. If it hangs, the lock goes with the process.
    if (await undoWithin(undo.reverse(), START_CLEANUP_DEADLINE_MS, logger)) lock.release();
    else logger.warn("the store did not close in time; the data dir stays locked until this process exits");
    throw err;
  }
}

/**
 * Runs the clean-up steps in order, each given what is left of `deadlineMs`: a step that hangs (a
 * pool ending against a frozen database) must not keep a failed start alive. Steps past the
 * deadline are started but not awaited. True when every step finished in time.
 */
async function undoWithin(steps: (() => unknown)[], deadlineMs: number, logger: Logger): Promise<boolean> {
  const end = Date.now() + deadlineMs;
  let allDone = true;
  for (const step of steps) {
    let timer: NodeJS.Timeout | undefined;
    const left = Math.max(0, end - Date.now());
    try {
      const done = await Promise.race([
        Promise.resolve()
          .then(step)
          .then(() => true),
        new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(false), left);
        }),
      ]);
      allDone &&= done;
    } catch (err) {
      logger.debug({ err }, "start-up clean-up step failed");
    } finally {
      clearTimeout(timer);
    }
  }
  return allDone;
}

type ResolvedOptions = ServerOptions &
  Required<
    Pick<
      ServerOptions,
      | "listen"
      | "dataDir"
      | "gracePeriodMs"
      | "bodyLimit"
      | "callTimeoutMs"
      | "drainTimeoutMs"
      | "screenshotLimit"
      | "storedScreenshotsPerUser"
    >
  >;

async function startLocked(
  o: ResolvedOptions,
  host: string,
  port: number,
  lock: DataDirLock,
  undo: (() => unknown)[],
): Promise<RunningServer> {
  const logger = o.logger;
  await secureTree(o.dataDir);
  const store = await openStore({
    ...o.storeLimits,
    dataDir: o.dataDir,
    databaseUrl: o.databaseUrl ?? undefined,
    logger,
  });
  undo.push(() => store.close());
  // PGlite unpacks its template files 0666: make them private before anything is served.
  await secureTree(o.dataDir);
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
  undo.push(() => registry.close());
  metrics.addByteSource(() => registry.bytesTotal());
  const quotas = new Quotas({ store, limits: o.quotas });
  registry.on("connected", (runnerId) => quotas.tunnelConnected(runnerId));
  registry.on("disconnected", (runnerId) => quotas.tunnelDisconnected(runnerId));
  const endpoint = new TunnelEndpoint({
    registry,
    logger,
    timings,
    maxTunnels: o.maxTunnels,
    admissionRate: o.admissionRate,
    admissionBurst: o.admissionBurst,
    authorize: async (req, runnerId, purpose) => {
      try {
        const principal = await auth.authenticate(req.headers);
        if (!principal) throw new ApiError(401, "RD_ERR_AUTH_REQUIRED", "missing or invalid token");
        const grant = await auth.authorizeRunner(principal, runnerId);
        if (purpose === "tunnel") quotas.admitTunnel(principal, grant);
        // The key is the tunnel's owner: revoking it cuts the tunnel (routes/users.ts).
        return principal.keyId;
      } catch (err) {
        throw handshakeError(err);
      }
    },
  });
  undo.push(() => endpoint.destroy());
  metrics.addEndpointCounters(() => endpoint.counters());
  // Replica mode: the cluster's dialer routes every call (local, or forwarded to the holder), and
  // the background work below runs on the leader only.
  let onLeader = (_leader: boolean): void => {};
  let cluster: Cluster | null = null;
  if (o.replica) {
    cluster = await joinCluster({
      replica: o.replica,
      databaseUrl: o.databaseUrl as string,
      listenHost: host,
      registry,
      logger,
      gracePeriodMs: o.gracePeriodMs,
      callTimeoutMs: o.callTimeoutMs,
      tls: o.https,
      metrics: metrics.clusterObserver(),
      onLeader: (leader) => onLeader(leader),
    });
    const joined = cluster;
    undo.push(() => joined.destroy());
  }
  const publicUrl =
    o.publicUrl ?? `${o.https ? "https" : "http"}://${host.includes(":") ? `[${host}]` : host}:${port}`;
  // Live changes for GET /api/v1/events: the store's writes and the registry's tunnels feed the bus.
  const events = new EventBus({ logger });
  const changes = new ChangePublisher({ bus: events, store, dialer: cluster ?? registry, logger });
  undo.push(() => changes.close());
  // Replica mode: the stream is the cluster's (events/cluster-events.ts): tunnels as the cluster
  // sees them, and the ids of every replica's writes told to the others over Postgres NOTIFY.
  let clusterEvents: ClusterEvents | null = null;
  if (cluster) {
    clusterEvents = await startClusterEvents({
      cluster,
      registry,
      publisher: changes,
      databaseUrl: o.databaseUrl as string,
      logger,
    });
    const started = clusterEvents;
    undo.push(() => started.close());
  } else {
    registry.on("connected", (runnerId, stats) => changes.tunnelChanged(runnerId, "up", stats));
    registry.on("disconnected", (runnerId) => changes.tunnelChanged(runnerId, "down"));
  }
  const ctx: ApiContext = {
    store: observeStore(store, clusterEvents?.sink ?? changes),
    events,
    auth,
    quotas,
    dialer: cluster ?? registry,
    logger,
    config: {
      publicUrl,
      bodyLimit: o.bodyLimit,
      callTimeoutMs: o.callTimeoutMs,
      startPlanningFault: o.startPlanningFault,
      eventsHeartbeatMs: o.eventsHeartbeatMs,
      screenshotLimit: positiveSize("screenshotLimit", o.screenshotLimit),
      storedScreenshotsPerUser: positiveSize("storedScreenshotsPerUser", o.storedScreenshotsPerUser),
    },
  };
  const app = await buildApp({
    ctx,
    endpoint,
    metrics,
    logger,
    https: o.https,
    replicaId: o.replica?.replicaId,
  });
  undo.push(() => app.close());
  const tracker = new SandboxTracker({
    ctx,
    events: registry,
    offlineAfterMs: o.hostOfflineAfterMs,
    sweepIntervalMs: o.hostSweepIntervalMs,
  });
  tracker.start(!cluster);
  undo.push(() => tracker.close());
  const sweeper = new LifecycleSweeper({ ...o.lifecycle, ctx });
  if (!cluster) sweeper.start();
  undo.push(() => sweeper.close());
  onLeader = (leader) => {
    if (leader) {
      sweeper.start();
      tracker.startSweeps();
    } else {
      sweeper.stop();
      tracker.stopSweeps();
    }
  };
  if (cluster?.isLeader) onLeader(true);
  const snapshotFile = new SnapshotFile({ path: join(o.dataDir, SNAPSHOT_FILE_NAME), logger });
  const snapshotted = await snapshotFile.load();
  await expectKnownRunners(store, registry, o.gracePeriodMs, logger, snapshotted);
  const snapshot = new RegistrySnapshot({
    source: registry,
    backend: snapshotFile,
    logger,
    saved: snapshotted,
  });
  undo.push(() => snapshot.close());
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
    events,
    cluster,
    adminKey,
    runnerToken,
    stopSessionsOnHost: (hostId) => stopHostSessions(ctx, hostId, app.log),
    close() {
      closing ??= (async () => {
        // Another replica takes the lead at once.
        await cluster?.beginDrain();
        // The sweep in flight finishes while the tunnels it calls through are still up.
        await sweeper.close();
        endpoint.stopAccepting();
        await snapshot.close();
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
          await registry.close(o.drainTimeoutMs, cluster ? DRAIN_REASON : undefined);
          await app.close();
          // Forwarded calls in flight have finished with the answers above; then goodbye.
          await cluster?.close();
        } finally {
          clearTimeout(cut);
        }
        endpoint.destroy();
        await clusterEvents?.close();
        changes.close();
        await store.close();
        await secureTree(o.dataDir).catch(() => {});
        lock.release();
      })();
      return closing;
    },
  };
}

/**
 * Tells the registry which runners were live before this start, from the store and from the registry
 * snapshot, so that calls for them wait out the grace period. A store error here costs the store's
 * share of the grace period only: it is logged.
 */
async function expectKnownRunners(
  store: Store,
  registry: TunnelRegistry,
  gracePeriodMs: number,
  logger: Logger,
  snapshotted: readonly string[],
): Promise<void> {
  if (gracePeriodMs <= 0) return;
  const fromStore = new Set(await storeKnownRunners(store, logger));
  const ids = new Set([...fromStore, ...snapshotted]);
  const expected = registry.expect(ids, Date.now() + gracePeriodMs);
  if (ids.size === 0) return;
  logger.info(
    {
      runners: expected,
      from_store: fromStore.size,
      from_snapshot: snapshotted.length,
      in_both: fromStore.size + snapshotted.length - ids.size,
      grace_ms: gracePeriodMs,
    },
    "expecting tunnels back",
  );
}

/** The runner ids the store says were live: sandboxes of starting/running sessions, online hosts. */
async function storeKnownRunners(store: Store, logger: Logger): Promise<string[]> {
  try {
    const ids: string[] = [];
    for (const status of ["starting", "running"] as const) {
      const sessions = await store.sessions.list({ status, limit: MAX_EXPECTED_SESSIONS });
      for (const session of sessions) ids.push(`sandbox-${session.id}`);
    }
    for (const host of await store.wolfInstances.list())
      if (host.status === "online") ids.push(`wolf-${host.id}`);
    return ids;
  } catch (err) {
    logger.warn(
      { err },
      "could not read the runners to expect back from the store; calls for those not in the registry snapshot fail until they reconnect",
    );
    return [];
  }
}
