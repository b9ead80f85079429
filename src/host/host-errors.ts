// Errors of the sandbox host, each with a stable code. The lobby API answers them with the status
// named here; `revdial wolf run` prints their message.

import { RevdialError } from "../common/errors.ts";

export class HostError extends RevdialError {
  /** The status the lobby API answers with. */
  readonly status: number;
  constructor(code: string, status: number, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.status = status;
  }
}

export const HOST_ERROR_CODES = Object.freeze({
  dockerUnavailable: "RD_ERR_HOST_DOCKER_UNAVAILABLE",
  atCapacity: "RD_ERR_HOST_AT_CAPACITY",
  lobbyNotFound: "RD_ERR_HOST_LOBBY_NOT_FOUND",
  duplicateSession: "RD_ERR_HOST_DUPLICATE_SESSION",
  launchFailed: "RD_ERR_HOST_LAUNCH_FAILED",
  badRequest: "RD_ERR_HOST_BAD_REQUEST",
  registerFailed: "RD_ERR_HOST_REGISTER_FAILED",
  isolationUnavailable: "RD_ERR_HOST_ISOLATION_UNAVAILABLE",
  stateInUse: "RD_ERR_HOST_STATE_IN_USE",
});

export class DockerUnavailableError extends HostError {
  constructor(endpoint: string, reason: string) {
    super(
      HOST_ERROR_CODES.dockerUnavailable,
      500,
      `driver docker: no Docker engine reachable at ${endpoint} (${reason}); start Docker, or podman's ` +
        "service (podman system service unix:///PATH, then --docker-host unix:///PATH), or use --driver process",
    );
  }
}

export class HostAtCapacityError extends HostError {
  constructor(max: number) {
    super(HOST_ERROR_CODES.atCapacity, 409, `this host already runs its maximum of ${max} sandboxes`);
  }
}

export class LobbyNotFoundError extends HostError {
  constructor(lobbyId: string) {
    super(HOST_ERROR_CODES.lobbyNotFound, 404, `lobby ${lobbyId} not found`);
  }
}
