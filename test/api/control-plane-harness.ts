// Test harness for the control-plane routes: a real Fastify server on 127.0.0.1 around an in-memory
// store, real auth, and a stand-in TunnelDialer that sends each call to a small local HTTP server
// playing the sandbox's desktop service. It stands in for the tunnel in route tests: the routes
// see the same contract (request -> status, headers, streamed body, or a TunnelError).

import { once } from "node:events";
import http, { type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import Fastify, { type FastifyInstance } from "fastify";
import { type Auth, authenticateBeforeBody, createAuth } from "../../src/api/auth.ts";
import type { ApiContext } from "../../src/api/context.ts";
import { installErrorHandlers } from "../../src/api/error-handler.ts";
import { type QuotaLimits, Quotas } from "../../src/api/quotas.ts";
import { controlPlaneRoutes } from "../../src/api/routes/control-plane.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { openStore, type Store } from "../../src/store/index.ts";
import { TunnelAbortedError, TunnelNotConnectedError, TunnelTimeoutError } from "../../src/tunnel/errors.ts";
import type { TunnelDialer, TunnelRequest, TunnelResponse, TunnelStats } from "../../src/tunnel/types.ts";

/** 1x1 transparent PNG. */
export const PNG_BYTES = Buffer.from(
  "89504e470d0a1a0a0000000d4948445200000001000000010806000000" +
    "1f15c4890000000d49444154789c63000100000500010d0a2db40000000049454e44ae426082",
  "hex",
);
/** The start of a JPEG (enough for the signature). */
export const JPEG_BYTES = Buffer.from("ffd8ffe000104a46494600010100000100010000ffd9", "hex");

/** What the fake desktop service does; tests change it between calls. */
export interface DesktopBehaviour {
  screenshot: Buffer;
  contentType: string;
  /** Sent as ETag when set; the server then answers 304 to a matching If-None-Match. */
  etag: string | null;
  /** Answer every call with this status (and a short body) instead. */
  failWith: number | null;
  /** Never answer (the deadline test). */
  hang: boolean;
  /** Called with the response before the screenshot is written; the test writes it itself. */
  streamScreenshot: ((res: ServerResponse) => void) | null;
  clipboard: { type: string; data: string } | string;
}

export interface FakeDesktop {
  url: string;
  behaviour: DesktopBehaviour;
  /** Every request the desktop saw: method, path, headers, body. */
  seen: { method: string; path: string; headers: IncomingMessage["headers"]; body: string }[];
  close(): Promise<void>;
}

function defaultBehaviour(): DesktopBehaviour {
  return {
    screenshot: PNG_BYTES,
    contentType: "image/png",
    etag: null,
    failWith: null,
    hang: false,
    streamScreenshot: null,
    clipboard: { type: "text", data: "hello from the sandbox" },
  };
}

function serveDesktop(desktop: FakeDesktop, req: IncomingMessage, res: ServerResponse, body: string): void {
  const b = desktop.behaviour;
  desktop.seen.push({ method: req.method ?? "", path: req.url ?? "", headers: req.headers, body });
  if (b.hang) return;
  if (b.failWith) {
    res.writeHead(b.failWith, { "content-type": "text/plain" }).end("desktop failed");
    return;
  }
  const path = (req.url ?? "").split("?")[0];
  if (path === "/screenshot") {
    if (b.etag && req.headers["if-none-match"] === b.etag) {
      res.writeHead(304, { etag: b.etag }).end();
      return;
    }
    const headers: Record<string, string> = { "content-type": b.contentType };
    if (b.etag) headers.etag = b.etag;
    if (b.streamScreenshot) {
      res.writeHead(200, headers);
      b.streamScreenshot(res);
      return;
    }
    res.writeHead(200, headers).end(b.screenshot);
  } else if (path === "/clipboard" && req.method === "GET") {
    const text = typeof b.clipboard === "string" ? b.clipboard : JSON.stringify(b.clipboard);
    res.writeHead(200, { "content-type": "application/json" }).end(text);
  } else if (path === "/clipboard" && req.method === "POST") {
    b.clipboard = JSON.parse(body);
    res.writeHead(200, { "content-type": "application/json" }).end("{}");
  } else {
    res.writeHead(404).end();
  }
}

export async function startFakeDesktop(): Promise<FakeDesktop> {
  const sockets = new Set<Duplex>();
  const server: Server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => serveDesktop(desktop, req, res, Buffer.concat(chunks).toString("utf8")));
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  const desktop: FakeDesktop = {
    url: `http://127.0.0.1:${port}`,
    behaviour: defaultBehaviour(),
    seen: [],
    async close() {
      for (const s of sockets) s.destroy();
      server.close();
      await once(server, "close");
    },
  };
  return desktop;
}

/** A TunnelDialer that sends each call to the desktop registered for the runner id. */
export class LocalDialer implements TunnelDialer {
  readonly #targets = new Map<string, string>();

  connect(runnerId: string, baseUrl: string): void {
    this.#targets.set(runnerId, baseUrl);
  }

  disconnect(runnerId: string): void {
    this.#targets.delete(runnerId);
  }

  evict(runnerId: string): boolean {
    return this.#targets.delete(runnerId);
  }

  isConnected(runnerId: string): boolean {
    return this.#targets.has(runnerId);
  }

  list(): TunnelStats[] {
    return [];
  }

  open(runnerId: string): Promise<Duplex> {
    return Promise.reject(new TunnelNotConnectedError(runnerId));
  }

  request(runnerId: string, req: TunnelRequest): Promise<TunnelResponse> {
    const base = this.#targets.get(runnerId);
    if (!base) return Promise.reject(new TunnelNotConnectedError(runnerId));
    return new Promise((resolve, reject) => {
      const headers = Object.fromEntries(
        Object.entries(req.headers ?? {}).filter(([, v]) => v !== undefined),
      ) as http.OutgoingHttpHeaders;
      const outgoing = http.request(new URL(req.path, base), { method: req.method, headers }, (res) => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 502, headers: res.headers as Record<string, string>, body: res });
      });
      const timeoutMs = req.timeoutMs ?? 30_000;
      const timer = setTimeout(() => {
        outgoing.destroy();
        reject(new TunnelTimeoutError(runnerId, timeoutMs));
      }, timeoutMs);
      req.signal?.addEventListener("abort", () => {
        clearTimeout(timer);
        outgoing.destroy();
        reject(new TunnelAbortedError());
      });
      outgoing.on("error", (err) => {
        clearTimeout(timer);
        reject(err);
      });
      if (req.body && typeof req.body !== "string" && !Buffer.isBuffer(req.body)) req.body.pipe(outgoing);
      else outgoing.end(req.body ?? undefined);
    });
  }
}

export interface ApiAnswer {
  status: number;
  headers: Headers;
  body: Buffer;
  json<T = Record<string, unknown>>(): T;
}

export interface Harness {
  url: string;
  store: Store;
  auth: Auth;
  dialer: LocalDialer;
  app: FastifyInstance;
  adminKey: string;
  call(
    method: string,
    path: string,
    options?: { key?: string; body?: unknown; headers?: Record<string, string> },
  ): Promise<ApiAnswer>;
  close(): Promise<void>;
}

export async function startHarness(
  options: { callTimeoutMs?: number; quotas?: Partial<QuotaLimits> } = {},
): Promise<Harness> {
  const logger = silentLogger();
  const store = await openStore({ logger });
  const auth = createAuth({ store, logger });
  const dialer = new LocalDialer();
  const quotas = new Quotas({ store, limits: options.quotas });
  const ctx: ApiContext = {
    store,
    auth,
    quotas,
    dialer,
    logger,
    config: {
      publicUrl: "http://127.0.0.1:0",
      bodyLimit: 1024 * 1024,
      callTimeoutMs: options.callTimeoutMs ?? 2000,
      screenshotLimit: 16 * 1024 * 1024,
      storedScreenshotsPerUser: 64 * 1024 * 1024,
    },
  };
  const app = Fastify({ bodyLimit: ctx.config.bodyLimit });
  app.decorateRequest("principal", null);
  installErrorHandlers(app);
  authenticateBeforeBody(app, auth);
  await app.register(async (scope) => controlPlaneRoutes(scope, ctx));
  await app.listen({ port: 0, host: "127.0.0.1" });
  const { port } = app.server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}`;
  const { apiKey: adminKey } = await auth.createUser({ name: "root", admin: true });
  return {
    url,
    store,
    auth,
    dialer,
    app,
    adminKey,
    async call(method, path, opts = {}) {
      const headers: Record<string, string> = { ...(opts.headers ?? {}) };
      if (opts.key) headers.authorization = `Bearer ${opts.key}`;
      let body: string | undefined;
      if (opts.body !== undefined) {
        body = typeof opts.body === "string" ? opts.body : JSON.stringify(opts.body);
        headers["content-type"] ??= "application/json";
      }
      const res = await fetch(url + path, { method, headers, body });
      const bytes = Buffer.from(await res.arrayBuffer());
      return {
        status: res.status,
        headers: res.headers,
        body: bytes,
        json: () => JSON.parse(bytes.toString("utf8")),
      };
    },
    async close() {
      await app.close();
      await store.close();
    },
  };
}
