// What a sandbox host asks of a driver: create a lobby (one sandbox for one session), list the live
// ones, stop one, stop them all. The lobby API (lobby-server.ts) speaks HTTP; drivers speak this.
// A lobby that ends on its own (crash, agent exit) is removed from the list and handed to onExit,
// which the host reports to the API; a lobby stopped through stop() is not reported.

export interface LobbySpec {
  sessionId: string;
  /** The scoped `rds-` key the sandbox agent registers `sandbox-{sessionId}` with. */
  sandboxToken: string;
  /** The API the sandbox agent dials. */
  serverUrl: string;
  /** Extra environment for the sandbox's processes. */
  env: Record<string, string>;
}

export type LobbyState = "starting" | "running" | "stopping";

export interface LobbyInfo {
  lobbyId: string;
  sessionId: string;
  state: LobbyState;
  /** The process group (process driver) or null. */
  pid: number | null;
  /** The sandbox's X display, once known. */
  display: string | null;
  startedAt: Date;
}

export interface LobbyExit {
  lobbyId: string;
  sessionId: string;
  code: number | null;
  signal: string | null;
}

export interface SandboxDriver {
  readonly name: "process" | "docker";
  /** Checks the driver can work here (the docker driver fails when no engine answers). */
  start(): Promise<void>;
  create(spec: LobbySpec): Promise<LobbyInfo>;
  list(): LobbyInfo[];
  /** Stops the lobby and waits until every one of its processes is gone. */
  stop(lobbyId: string): Promise<void>;
  /** Stops every lobby; idempotent. */
  close(): Promise<void>;
}

export type ExitListener = (exit: LobbyExit) => void;

export function lobbyView(info: LobbyInfo) {
  return {
    lobby_id: info.lobbyId,
    session_id: info.sessionId,
    state: info.state,
    pid: info.pid,
    display: info.display,
    started_at: info.startedAt.toISOString(),
  };
}
