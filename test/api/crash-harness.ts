// Test driver for crash tests: a sandbox host driver whose "sandbox" is a real revdial agent,
// dialing the API as `sandbox-{session}` with the scoped key the API handed to the host, and
// serving a fake desktop (control-plane-harness.ts). No Xvfb, so dozens of crash states stay
// cheap, while every tunnel, key and host call is the real one.
//
// `leak` makes stop() and close() forget nothing and stop nothing: the lobby and its agent live on,
// as an orphan does when its host is killed with -9, so a test can check that the API cuts a
// stopped session's tunnel itself and that a host returning with leftovers is reconciled.

import { randomUUID } from "node:crypto";
import { TargetMap } from "../../src/agent/target-map.ts";
import { AgentClient } from "../../src/agent/tunnel-client.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { LobbyNotFoundError } from "../../src/host/host-errors.ts";
import type { LobbyInfo, LobbySpec, SandboxDriver } from "../../src/host/sandbox-driver.ts";

export class AgentDriver implements SandboxDriver {
  readonly name = "process" as const;
  readonly lobbies = new Map<string, LobbyInfo>();
  /** Every agent this driver started, by lobby id, until destroy(). */
  readonly agents = new Map<string, AgentClient>();
  /** Statuses of refused handshakes, per session id (a revoked key shows up here as 401). */
  readonly refusals = new Map<string, number[]>();
  /** The sandbox key each session's agent was given, by session id. */
  readonly keys = new Map<string, string>();
  leak = false;
  /** When set, create() makes the lobby but starts no agent: a sandbox that never dials in. */
  refuseAgents = false;
  readonly #desktop: string;

  /** @param desktop host:port of the desktop service every sandbox serves. */
  constructor(desktop: string) {
    this.#desktop = desktop;
  }

  async start(): Promise<void> {}

  /** Same session, same lobby: what the process driver does for a repeated create. */
  async create(spec: LobbySpec): Promise<LobbyInfo> {
    const existing = [...this.lobbies.values()].find((l) => l.sessionId === spec.sessionId);
    if (existing) return existing;
    const info: LobbyInfo = {
      lobbyId: randomUUID(),
      sessionId: spec.sessionId,
      state: "running",
      pid: null,
      display: null,
      startedAt: new Date(),
    };
    this.lobbies.set(info.lobbyId, info);
    this.keys.set(spec.sessionId, spec.sandboxToken);
    if (this.refuseAgents) return info;
    const agent = new AgentClient({
      serverUrl: spec.serverUrl,
      runnerId: `sandbox-${spec.sessionId}`,
      token: spec.sandboxToken,
      targets: new TargetMap({ desktop: this.#desktop }, null),
      logger: silentLogger(),
      backoffBaseMs: 50,
      backoffCapMs: 300,
    });
    agent.on("connect-error", (err: Error & { status?: number }) => {
      if (err.status)
        this.refusals.set(spec.sessionId, [...(this.refusals.get(spec.sessionId) ?? []), err.status]);
    });
    void agent.start();
    this.agents.set(info.lobbyId, agent);
    return info;
  }

  list(): LobbyInfo[] {
    return [...this.lobbies.values()];
  }

  async stop(lobbyId: string): Promise<void> {
    if (!this.lobbies.has(lobbyId)) throw new LobbyNotFoundError(lobbyId);
    if (this.leak) return;
    this.lobbies.delete(lobbyId);
    await this.agents.get(lobbyId)?.close();
    this.agents.delete(lobbyId);
  }

  /** A sandbox that dies on its own, unreported (its host was away). */
  async kill(lobbyId: string): Promise<void> {
    this.lobbies.delete(lobbyId);
    await this.agents.get(lobbyId)?.close();
    this.agents.delete(lobbyId);
  }

  async close(): Promise<void> {
    if (this.leak) return;
    for (const id of [...this.lobbies.keys()]) await this.stop(id);
  }

  /** Ends every agent, leaked ones included (the test's clean-up). */
  async destroy(): Promise<void> {
    this.lobbies.clear();
    await Promise.all([...this.agents.values()].map((a) => a.close()));
    this.agents.clear();
  }
}
