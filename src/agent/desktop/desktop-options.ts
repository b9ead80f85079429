// The desktop service's options: defaults in one frozen object, and the validation every constructor
// runs, so a wrong option fails at construction with its name instead of at the first request.

import { InvalidOptionError } from "../../common/errors.ts";
import { type Logger, silentLogger } from "../../common/logger.ts";
import type { DesktopProviders } from "./desktop-types.ts";

export interface DesktopServiceOptions {
  /**
   * Where to listen, "host:port" ("[::1]:port" for IPv6; port 0 picks a free one), or
   * "unix:///path" for a Unix socket (the sandbox host's choice: its directory, 0700 and owned by the
   * sandbox's user, is the access check; a stale socket file there is replaced).
   */
  listen?: string;
  /** X display to serve (":N"); overrides DISPLAY and WAYLAND_DISPLAY. */
  display?: string;
  /** Environment the display is chosen from and tools run in; default process.env. */
  env?: NodeJS.ProcessEnv;
  logger?: Logger;
  /** Largest request body accepted, in bytes (POST /clipboard). */
  bodyLimit?: number;
  /** Deadline for one external tool run, X connection or X request, in ms. */
  toolTimeoutMs?: number;
  /** Deadline for receiving a whole request, in ms. */
  requestTimeoutMs?: number;
  /** Screenshots taken at once, and how many more may wait (more get 503). */
  maxConcurrentCaptures?: number;
  maxQueuedCaptures?: number;
  /** Clipboard operations waiting behind the running one (they run one at a time). */
  maxQueuedClipboard?: number;
  /** Providers to use instead of choosing from the environment: for embedding and tests. */
  providers?: DesktopProviders;
  /** Aborting closes the service. */
  signal?: AbortSignal;
}

export const DESKTOP_SERVICE_DEFAULTS = Object.freeze({
  listen: "127.0.0.1:9876",
  bodyLimit: 10 * 1024 * 1024,
  toolTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  maxConcurrentCaptures: 2,
  maxQueuedCaptures: 8,
  maxQueuedClipboard: 8,
});

/** Options after defaults and validation. */
export interface ResolvedDesktopOptions {
  host: string;
  port: number;
  /** The Unix socket path, when listening on one (host and port are then unused). */
  path: string | undefined;
  display: string | undefined;
  env: NodeJS.ProcessEnv;
  logger: Logger;
  bodyLimit: number;
  toolTimeoutMs: number;
  requestTimeoutMs: number;
  maxConcurrentCaptures: number;
  maxQueuedCaptures: number;
  maxQueuedClipboard: number;
  providers: DesktopProviders | undefined;
  signal: AbortSignal | undefined;
}

const MAX_BODY_LIMIT = 1024 * 1024 * 1024;
const DISPLAY_PATTERN = /^[\w.-]*:\d+(\.\d+)?$/;

/** Applies defaults and validates; throws InvalidOptionError naming the option. */
export function resolveDesktopOptions(options: DesktopServiceOptions = {}): Readonly<ResolvedDesktopOptions> {
  const d = DESKTOP_SERVICE_DEFAULTS;
  const { host, port, path } = parseListen(options.listen ?? d.listen);
  if (options.display !== undefined && !DISPLAY_PATTERN.test(options.display)) {
    throw new InvalidOptionError("display", `"${options.display}" is not an X display like ":0"`);
  }
  return Object.freeze({
    host,
    port,
    path,
    display: options.display,
    env: options.env ?? process.env,
    logger: options.logger ?? silentLogger(),
    bodyLimit: integer("bodyLimit", options.bodyLimit ?? d.bodyLimit, 1, MAX_BODY_LIMIT),
    toolTimeoutMs: integer("toolTimeoutMs", options.toolTimeoutMs ?? d.toolTimeoutMs, 1, 600_000),
    requestTimeoutMs: integer(
      "requestTimeoutMs",
      options.requestTimeoutMs ?? d.requestTimeoutMs,
      1,
      3_600_000,
    ),
    maxConcurrentCaptures: integer(
      "maxConcurrentCaptures",
      options.maxConcurrentCaptures ?? d.maxConcurrentCaptures,
      1,
      64,
    ),
    maxQueuedCaptures: integer(
      "maxQueuedCaptures",
      options.maxQueuedCaptures ?? d.maxQueuedCaptures,
      0,
      1024,
    ),
    maxQueuedClipboard: integer(
      "maxQueuedClipboard",
      options.maxQueuedClipboard ?? d.maxQueuedClipboard,
      0,
      1024,
    ),
    providers: options.providers,
    signal: options.signal,
  });
}

/** "host:port", "[v6]:port" or "unix:///path" to its parts; throws naming `listen`. */
export function parseListen(listen: string): { host: string; port: number; path?: string } {
  if (listen.startsWith("unix://")) {
    const path = listen.slice("unix://".length);
    // 107: sun_path holds 108 bytes with the terminating NUL.
    if (!path.startsWith("/") || Buffer.byteLength(path) > 107)
      throw new InvalidOptionError(
        "listen",
        `"${listen}" needs an absolute socket path of at most 107 bytes`,
      );
    return { host: "", port: 0, path };
  }
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(listen);
  const port = match ? Number(match[3]) : Number.NaN;
  if (!match || port > 65535) {
    throw new InvalidOptionError("listen", `"${listen}" is not host:port (e.g. 127.0.0.1:9876)`);
  }
  return { host: match[1] ?? match[2], port };
}

function integer(name: string, value: number, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new InvalidOptionError(name, `${value} is not an integer from ${min} to ${max}`);
  }
  return value;
}
