// The lobby API of a sandbox host: a small HTTP server on a Unix socket in a directory only the
// host's user may enter (0700), which only the host's own tunnel client forwards to, so the API
// reaches it through `wolf-{id}` and nothing else can: no TCP port a sandbox or another local user
// could call, and sandboxes do not even see the directory. Routes:
//   POST   /lobbies        {session_id, sandbox_token, server_url, env?} -> 201 {lobby_id, ...}
//   GET    /lobbies        -> 200 [{lobby_id, session_id, state, pid, display, started_at}]
//   DELETE /lobbies/{id}   -> 200 {lobby_id, stopped: true}; 404 when unknown
// Errors: {"error":{"code","message"}} with the status the HostError names.

import { once } from "node:events";
import { lstatSync, rmSync } from "node:fs";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import { join } from "node:path";
import { RevdialError } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";
import { isSessionId } from "../store/ids.ts";
import { HOST_ERROR_CODES, HostError } from "./host-errors.ts";
import { ensurePrivateDir } from "./host-state.ts";
import { type LobbySpec, lobbyView, type SandboxDriver } from "./sandbox-driver.ts";

/** Largest request body the lobby API reads. */
const MAX_BODY_BYTES = 64 * 1024;

export interface LobbyServer {
  /** unix:///path the tunnel client forwards to. */
  readonly address: string;
  close(): Promise<void>;
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

function badRequest(message: string): HostError {
  return new HostError(HOST_ERROR_CODES.badRequest, 400, message);
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw badRequest(`body exceeds ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    throw badRequest("body must be JSON");
  }
}

/** Checks the POST /lobbies body; the shape is exact so a typo is an error, not a default. */
export function parseLobbySpec(body: unknown): LobbySpec {
  const b = body as Record<string, unknown> | null;
  if (!b || typeof b !== "object") throw badRequest("body must be an object");
  if (typeof b.session_id !== "string" || !isSessionId(b.session_id))
    throw badRequest("session_id must be a session id");
  if (typeof b.sandbox_token !== "string" || !b.sandbox_token) throw badRequest("sandbox_token is required");
  if (typeof b.server_url !== "string" || !/^(https?|wss?):\/\//.test(b.server_url))
    throw badRequest("server_url must be an http(s) or ws(s) URL");
  const env = b.env ?? {};
  if (typeof env !== "object" || Array.isArray(env) || Object.values(env).some((v) => typeof v !== "string"))
    throw badRequest("env must be an object of strings");
  return {
    sessionId: b.session_id,
    sandboxToken: b.sandbox_token,
    serverUrl: b.server_url,
    env: env as Record<string, string>,
  };
}

async function route(driver: SandboxDriver, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = (req.url ?? "/").split("?")[0];
  if (path === "/lobbies" && req.method === "POST") {
    const info = await driver.create(parseLobbySpec(await readJson(req)));
    return send(res, 201, lobbyView(info));
  }
  if (path === "/lobbies" && req.method === "GET") return send(res, 200, driver.list().map(lobbyView));
  const match = /^\/lobbies\/([A-Za-z0-9-]{1,64})$/.exec(path);
  if (match && req.method === "DELETE") {
    await driver.stop(match[1]);
    return send(res, 200, { lobby_id: match[1], stopped: true });
  }
  send(res, 404, { error: { code: "RD_ERR_NOT_FOUND", message: `no route ${req.method} ${path}` } });
}

/** Serves the lobby API on `socketDir`/lobby.sock; the dir is made 0700 and must be the host's own. */
export async function startLobbyServer(options: {
  driver: SandboxDriver;
  logger: Logger;
  socketDir: string;
}): Promise<LobbyServer> {
  const { driver, logger } = options;
  ensurePrivateDir(options.socketDir);
  const path = join(options.socketDir, "lobby.sock");
  // A socket file left by a host that was killed would make listen() fail with EADDRINUSE.
  removeStaleSocket(path);
  const server = http.createServer((req, res) => {
    route(driver, req, res).catch((err: unknown) => {
      const status = err instanceof HostError ? err.status : 500;
      const code = err instanceof RevdialError ? err.code : "RD_ERR_INTERNAL";
      if (status >= 500) logger.error({ err }, "lobby API call failed");
      if (!res.headersSent) send(res, status, { error: { code, message: (err as Error).message } });
    });
  });
  server.listen(path);
  await once(server, "listening");
  let closing: Promise<void> | null = null;
  return {
    address: `unix://${path}`,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      });
      return closing;
    },
  };
}

/** Removes a socket file left by a killed process; anything else at the path is left alone. */
function removeStaleSocket(path: string): void {
  try {
    if (lstatSync(path).isSocket()) rmSync(path);
  } catch {}
}
