// Test harness for hosts and the lifecycle: a real server (startServer, temp data dir, 127.0.0.1),
// real Wolf hosts dialing it (WolfHost: registration, heartbeats, tunnel), with either the real
// process driver or an in-memory driver (for scheduling tests that start dozens of sandboxes), and
// a JSON caller. Hosts are added as an operator does: the admin creates each one and the host runs
// with the key it got. Everything started here is closed by close() in the tests' `after`.

import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type RunningServer, type ServerOptions, startServer } from "../../src/api/server.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { LobbyNotFoundError } from "../../src/host/host-errors.ts";
import type { LobbyInfo, LobbySpec, SandboxDriver } from "../../src/host/sandbox-driver.ts";
import { WolfHost, type WolfHostOptions } from "../../src/host/wolf-host.ts";

/** A driver that keeps lobbies in memory: no processes, for counting tests. */
export class MemoryDriver implements SandboxDriver {
  readonly name = "process" as const;
  readonly lobbies = new Map<string, LobbyInfo>();
  async start(): Promise<void> {}
  async create(spec: LobbySpec): Promise<LobbyInfo> {
    const info: LobbyInfo = {
      lobbyId: randomUUID(),
      sessionId: spec.sessionId,
      state: "running",
      pid: null,
      display: null,
      startedAt: new Date(),
    };
    this.lobbies.set(info.lobbyId, info);
    return info;
  }
  list(): LobbyInfo[] {
    return [...this.lobbies.values()];
  }
  async stop(lobbyId: string): Promise<void> {
    if (!this.lobbies.delete(lobbyId)) throw new LobbyNotFoundError(lobbyId);
  }
  async close(): Promise<void> {
    this.lobbies.clear();
  }
}

export interface Answer<T = Record<string, unknown>> {
  status: number;
  headers: Headers;
  body: T;
  bytes: Buffer;
}

export class World {
  dataDir = "";
  server!: RunningServer;
  port = 0;
  readonly hosts = new Map<string, WolfHost>();
  /** Each host's key, from the admin's `POST /api/v1/wolf-instances` (kept for restarts). */
  readonly hostKeys = new Map<string, string>();
  readonly #serverOptions: Partial<ServerOptions>;

  constructor(serverOptions: Partial<ServerOptions> = {}) {
    this.#serverOptions = serverOptions;
  }

  get url(): string {
    return this.server.url;
  }

  get adminKey(): string {
    return this.server.adminKey!;
  }

  async start(): Promise<this> {
    this.dataDir = await mkdtemp(join(tmpdir(), "revdial-host-"));
    await this.startServer();
    return this;
  }

  /** (Re)starts the API on the same data dir and port. */
  async startServer(): Promise<void> {
    const adminKey = this.server?.adminKey;
    this.server = await startServer({
      listen: `127.0.0.1:${this.port}`,
      dataDir: this.dataDir,
      logger: silentLogger(),
      gracePeriodMs: 2_000,
      hostOfflineAfterMs: 1_000,
      hostSweepIntervalMs: 200,
      ...this.#serverOptions,
    });
    if (adminKey && !this.server.adminKey) (this.server as { adminKey: string | null }).adminKey = adminKey;
    this.port = this.server.port;
  }

  async startHost(id: string, options: Partial<WolfHostOptions> = {}): Promise<WolfHost> {
    const host = new WolfHost({
      serverUrl: this.url,
      token: await this.hostKey(id, options.maxSandboxes),
      id,
      heartbeatIntervalMs: 200,
      agent: { backoffBaseMs: 50, backoffCapMs: 500 },
      // Per world: parallel test runs never share a host's state (nor kill each other's sandboxes).
      stateDir: join(this.dataDir, `host-${id}`),
      // Lifecycle tests run wherever there is Xvfb; the isolation tests pin each mode themselves.
      allowSharedFallback: true,
      logger: silentLogger(),
      ...options,
    });
    await host.start();
    this.hosts.set(id, host);
    await this.until(() => this.server.registry.isConnected(`wolf-${id}`), `wolf-${id} connected`);
    return host;
  }

  /** The host's key: the admin creates the host (capacity `maxSandboxes`, default 10) the first time. */
  async hostKey(id: string, maxSandboxes = 10): Promise<string> {
    const known = this.hostKeys.get(id);
    if (known) return known;
    const res = await this.call<{ key: string }>("POST", "/api/v1/wolf-instances", this.adminKey, {
      id,
      max_sandboxes: maxSandboxes,
    });
    if (res.status !== 201) throw new Error(`creating host ${id}: ${res.status} ${res.bytes.toString()}`);
    this.hostKeys.set(id, res.body.key);
    return res.body.key;
  }

  async call<T = Record<string, unknown>>(
    method: string,
    path: string,
    key: string,
    body?: unknown,
  ): Promise<Answer<T>> {
    const headers: Record<string, string> = { authorization: `Bearer ${key}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    const res = await fetch(this.url + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const bytes = Buffer.from(await res.arrayBuffer());
    let parsed: unknown = null;
    try {
      parsed = JSON.parse(bytes.toString("utf8"));
    } catch {}
    return { status: res.status, headers: res.headers, body: parsed as T, bytes };
  }

  /** A user with a project forked from the sample, and N extra backlog tasks. */
  async user(name: string, tasks = 0): Promise<{ key: string; userId: string; taskIds: string[] }> {
    const { user, apiKey } = await this.server.auth.createUser({ name });
    const project = await this.server.store.projects.create({ ownerId: user.id, name: `${name}'s project` });
    const taskIds: string[] = [];
    for (let i = 0; i < tasks; i++)
      taskIds.push(
        (await this.server.store.specTasks.create({ projectId: project.id, name: `task ${i}` })).id,
      );
    return { key: apiKey, userId: user.id, taskIds };
  }

  startPlanning(key: string, taskId: string) {
    return this.call<{ session_id: string; task: { status: string }; error?: { message: string } }>(
      "POST",
      `/api/v1/spec-tasks/${taskId}/start-planning`,
      key,
      {},
    );
  }

  /** Polls `check` with backoff until it holds, or throws after `timeoutMs`. */
  async until(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (let wait = 10; !(await check()); wait = Math.min(wait * 2, 250)) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, wait));
    }
  }

  async closeHost(id: string): Promise<void> {
    await this.hosts.get(id)?.close();
    this.hosts.delete(id);
  }

  async close(): Promise<void> {
    await Promise.all([...this.hosts.values()].map((h) => h.close()));
    this.hosts.clear();
    await this.server?.close();
    if (this.dataDir) await rm(this.dataDir, { recursive: true, force: true });
  }
}
