// The desktop service that runs inside each sandbox: screenshots and the clipboard of the sandbox's
// display over plain HTTP, on 127.0.0.1:9876 by default, or on a Unix socket (what the sandbox host uses). The sandbox agent's tunnel client proxies the
// control plane's requests to it; nothing outside the sandbox connects to it directly.
//
// createDesktopService() builds it (options validated there, providers chosen from the environment);
// listen() binds; close() stops accepting, lets requests in flight finish and releases the X
// connection; destroy() cuts open connections too. `handler` is the bare request listener, for
// embedding the routes in another server. startDesktopService() is the one call the agent CLI makes.

import { lstatSync, rmSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { ConcurrencyLimit } from "./concurrency-limit.ts";
import {
  type DesktopServiceOptions,
  type ResolvedDesktopOptions,
  resolveDesktopOptions,
} from "./desktop-options.ts";
import { createDesktopHandler } from "./desktop-routes.ts";
import type { DesktopProviders } from "./desktop-types.ts";
import { chooseProviders } from "./providers.ts";

export type { DesktopServiceOptions } from "./desktop-options.ts";
export { DESKTOP_SERVICE_DEFAULTS } from "./desktop-options.ts";

/** Largest clipboard content read back, in bytes: what one request body may carry, plus slack. */
const CLIPBOARD_READ_FACTOR = 2;

/** Where the service listens: host and port, or (host "", port 0) the Unix socket `path`. */
export interface DesktopAddress {
  host: string;
  port: number;
  path?: string;
}

export interface DesktopService {
  /** The request listener serving every route. */
  readonly handler: (req: IncomingMessage, res: ServerResponse) => void;
  /** Provider names, as /health reports them. */
  readonly providerNames: { readonly screenshot: string; readonly clipboard: string };
  /** Where it listens, once listen() has resolved. */
  readonly address: DesktopAddress | undefined;
  /** Binds the listen address (port 0 picks a free port). */
  listen(): Promise<DesktopAddress>;
  /** Stops accepting, waits for requests in flight, releases the display; idempotent. */
  close(): Promise<void>;
  /** Like close(), but cuts open connections at once; idempotent. */
  destroy(): Promise<void>;
}

/** Builds the service; throws InvalidOptionError on a wrong option. Called by the sandbox agent. */
export function createDesktopService(options: DesktopServiceOptions = {}): DesktopService {
  return new HttpDesktopService(resolveDesktopOptions(options));
}

/** Builds the service and listens; what `revdial agent --desktop` calls. */
export async function startDesktopService(options: DesktopServiceOptions = {}): Promise<DesktopService> {
  const service = createDesktopService(options);
  const address = await service.listen();
  const logger = options.logger;
  logger?.info({ ...address, ...service.providerNames }, "desktop service listening");
  return service;
}

class HttpDesktopService implements DesktopService {
  readonly handler: (req: IncomingMessage, res: ServerResponse) => void;
  readonly providerNames: { screenshot: string; clipboard: string };
  readonly #options: Readonly<ResolvedDesktopOptions>;
  readonly #providers: DesktopProviders;
  readonly #server: Server;
  #address: DesktopAddress | undefined;
  #closing: Promise<void> | undefined;

  constructor(options: Readonly<ResolvedDesktopOptions>) {
    this.#options = options;
    this.#providers =
      options.providers ??
      chooseProviders({
        display: options.display,
        env: options.env,
        logger: options.logger,
        toolTimeoutMs: options.toolTimeoutMs,
        maxClipboardBytes: options.bodyLimit * CLIPBOARD_READ_FACTOR,
      });
    this.providerNames = {
      screenshot: this.#providers.capture.name,
      clipboard: this.#providers.clipboard.name,
    };
    this.handler = createDesktopHandler({
      providers: this.#providers,
      captureLimit: new ConcurrencyLimit({
        what: "screenshot",
        maxActive: options.maxConcurrentCaptures,
        maxQueued: options.maxQueuedCaptures,
      }),
      clipboardLimit: new ConcurrencyLimit({
        what: "clipboard",
        maxActive: 1,
        maxQueued: options.maxQueuedClipboard,
      }),
      bodyLimit: options.bodyLimit,
      logger: options.logger,
    });
    this.#server = createServer({ requestTimeout: options.requestTimeoutMs }, this.handler);
    options.signal?.addEventListener("abort", () => void this.close(), { once: true });
  }

  get address(): DesktopAddress | undefined {
    return this.#address;
  }

  listen(): Promise<DesktopAddress> {
    if (this.#closing) return Promise.reject(new Error("the desktop service is closed"));
    const { host, port, path } = this.#options;
    // A socket file left by a sandbox that was killed would make listen() fail with EADDRINUSE.
    if (path) removeStaleSocket(path);
    return new Promise((resolve, reject) => {
      this.#server.once("error", reject);
      const bound = () => {
        this.#server.off("error", reject);
        const info = this.#server.address() as AddressInfo | string;
        this.#address =
          typeof info === "string"
            ? { host: "", port: 0, path: info }
            : { host: info.address, port: info.port };
        resolve(this.#address);
      };
      if (path) this.#server.listen(path, bound);
      else this.#server.listen(port, host, bound);
    });
  }

  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  destroy(): Promise<void> {
    const closing = this.close();
    this.#server.closeAllConnections();
    return closing;
  }

  async #shutdown(): Promise<void> {
    const closed = new Promise<void>((resolve) => {
      if (!this.#server.listening) resolve();
      else this.#server.close(() => resolve());
    });
    this.#server.closeIdleConnections();
    await closed;
    await this.#providers.capture.close();
  }
}

/** Removes a socket file left by a killed process; anything else at the path is left alone. */
function removeStaleSocket(path: string): void {
  try {
    if (lstatSync(path).isSocket()) rmSync(path);
  } catch {}
}
