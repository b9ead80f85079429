// A Postgres outage (issue 10, item 8), through a TCP proxy written here (node:net) between a real
// server and the real Postgres at 127.0.0.1:5432:
// - the proxy refuses new connections and cuts the open ones, then it freezes (accepts, never
//   forwards). Each time: calls answer 503 RD_ERR_STORE_UNAVAILABLE with Retry-After and a body
//   that names no address, port, database, driver message or SQL (before: 500 RD_ERR_STORE_QUERY
//   with the database's address, or a request that hung for minutes); /readyz answers 503 while
//   /healthz stays 200; the live tunnel stays up; a new tunnel handshake is refused the same way. When the proxy heals, /readyz and the calls come
//   back by themselves (no restart) and the same tunnel carries a call;
// - a statement that waits on a lock is cancelled by the statement timeout and answers 503: when
//   the lock goes, nothing is left waiting to commit (before: a request its client had given up on
//   was committed minutes later);
// - descriptors return to their baseline once the pool is idle again.
// Skipped with a visible message where no Postgres answers.

import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import pg from "pg";
import type { AgentClient } from "../../src/agent/tunnel-client.ts";
import { type RunningServer, startServer } from "../../src/api/server.ts";
import { silentLogger } from "../../src/common/logger.ts";
import {
  type Listening,
  pollUntil,
  startAgent,
  startTarget,
  waitConnected,
} from "../helpers/tunnel-harness.ts";
import { postgresBackend, postgresSkipReason, type TestBackend } from "../store/store-backends.ts";

const postgresSkip = await postgresSkipReason();

/** Bound on any one HTTP call: a call that hangs fails the test instead of the suite timing out. */
const CALL_BOUND_MS = 20_000;
/** Bound on the recovery after the proxy heals. */
const RECOVERY_BOUND_MS = 20_000;
const RUNNER_ID = "outage-probe";

/**
 * A TCP proxy that can fail like a network or a database host: pass, refuse (listener closed, open
 * connections cut) or freeze (connections accepted and held, nothing forwarded either way).
 */
class FaultyProxy {
  readonly #target: { host: string; port: number };
  readonly #sockets = new Set<net.Socket>();
  #server: net.Server;
  #mode: "pass" | "refuse" | "freeze" = "pass";
  port = 0;

  constructor(target: { host: string; port: number }) {
    this.#target = target;
    this.#server = this.#newServer();
  }

  #newServer(): net.Server {
    return net.createServer((client) => this.#accept(client));
  }

  #track(socket: net.Socket): void {
    this.#sockets.add(socket);
    socket.on("error", () => {});
    socket.once("close", () => this.#sockets.delete(socket));
  }

  #accept(client: net.Socket): void {
    this.#track(client);
    if (this.#mode !== "pass") {
      client.pause();
      return;
    }
    const upstream = net.connect(this.#target);
    this.#track(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    const cut = () => {
      client.destroy();
      upstream.destroy();
    };
    client.once("close", cut);
    upstream.once("close", cut);
  }

  /** Live sockets, both sides of every connection. */
  get active(): number {
    return this.#sockets.size;
  }

  async start(port = 0): Promise<void> {
    await new Promise<void>((resolve) => this.#server.listen(port, "127.0.0.1", resolve));
    this.port = (this.#server.address() as net.AddressInfo).port;
  }

  #cutAll(): void {
    for (const s of this.#sockets) s.destroy();
  }

  async refuse(): Promise<void> {
    this.#mode = "refuse";
    await new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      this.#cutAll();
    });
  }

  freeze(): void {
    this.#mode = "freeze";
    for (const s of this.#sockets) {
      s.unpipe();
      s.pause();
    }
  }

  async heal(): Promise<void> {
    this.#cutAll();
    this.#mode = "pass";
    if (!this.#server.listening) {
      this.#server = this.#newServer();
      await this.start(this.port);
    }
  }

  async close(): Promise<void> {
    this.#cutAll();
    if (this.#server.listening) await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  raw: string;
}

/** One HTTP call on its own connection (no keep-alive, so descriptors can be counted). */
function call(base: string, path: string, key: string | null, body?: unknown): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const url = new URL(path, base);
    const req = http.request(
      url,
      {
        agent: false,
        method: body === undefined ? "GET" : "POST",
        timeout: CALL_BOUND_MS,
        headers: {
          ...(key ? { authorization: `Bearer ${key}` } : {}),
          ...(body === undefined ? {} : { "content-type": "application/json" }),
        },
      },
      (res) => {
        let raw = "";
        res.on("data", (c: Buffer) => (raw += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, raw }));
      },
    );
    req.on("timeout", () => req.destroy(new Error(`${path}: no answer within ${CALL_BOUND_MS} ms`)));
    req.on("error", reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

/** A WebSocket upgrade to the tunnel endpoint, answered with a refusal (read as plain HTTP). */
function handshake(base: string, key: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(new URL("/api/v1/revdial?runnerid=outage-newcomer", base), {
      agent: false,
      timeout: CALL_BOUND_MS,
      headers: {
        authorization: `Bearer ${key}`,
        connection: "Upgrade",
        upgrade: "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": Buffer.alloc(16, 1).toString("base64"),
        "sec-websocket-protocol": "revdial.h2",
      },
    });
    req.on("upgrade", (_res, socket) => {
      socket.destroy();
      reject(new Error("the handshake was accepted during the outage"));
    });
    req.on("response", (res) => {
      let raw = "";
      res.on("data", (c: Buffer) => (raw += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, raw }));
    });
    req.on("timeout", () => req.destroy(new Error(`handshake: no answer within ${CALL_BOUND_MS} ms`)));
    req.on("error", reject);
    req.end();
  });
}

const fdCount = (): number => readdirSync("/proc/self/fd").length;

describe("store outage on Postgres, through a faulty proxy", { skip: postgresSkip ?? false }, () => {
  let backend: TestBackend & { databaseUrl: string };
  let proxy: FaultyProxy;
  let dir: string;
  let server: RunningServer;
  let target: Listening;
  let agent: AgentClient;
  let key: string;
  let reconnects = 0;
  let forbidden: string[] = [];

  before(async () => {
    backend = await postgresBackend();
    const real = new URL(backend.databaseUrl);
    proxy = new FaultyProxy({ host: real.hostname, port: Number(real.port || 5432) });
    await proxy.start();
    const proxied = new URL(backend.databaseUrl);
    proxied.host = `127.0.0.1:${proxy.port}`;
    dir = await mkdtemp(join(tmpdir(), "revdial-outage-"));
    server = await startServer({
      listen: "127.0.0.1:0",
      dataDir: join(dir, "data"),
      databaseUrl: proxied.toString(),
      storeLimits: { connectTimeoutMs: 1000, statementTimeoutMs: 1500, idleTimeoutMs: 300 },
      hostSweepIntervalMs: 3_600_000,
      logger: silentLogger(),
    });
    key = server.adminKey as string;
    // What a body must never show: the proxy's and the database's address, the database's name.
    forbidden = ["127.0.0.1", String(proxy.port), real.port || "5432", real.pathname.slice(1), dir];
    target = await startTarget();
    agent = startAgent(server.url, RUNNER_ID, `127.0.0.1:${target.port}`, { token: key });
    await waitConnected(server.registry, RUNNER_ID, 10_000);
    server.registry.on("connected", (id: string) => {
      if (id === RUNNER_ID) reconnects++;
    });
  });
  after(async () => {
    await agent?.close(1000);
    await server?.close();
    await target?.close();
    await proxy?.close();
    await backend?.dispose();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  function assertUnavailable(answer: Answer, what: string): void {
    assert.equal(answer.status, 503, `${what}: ${answer.raw}`);
    const body = JSON.parse(answer.raw) as { error: { code: string; message: string } };
    assert.deepEqual(Object.keys(body), ["error"]);
    assert.equal(body.error.code, "RD_ERR_STORE_UNAVAILABLE", what);
    assert.ok(Number(answer.headers["retry-after"]) > 0, `${what}: Retry-After`);
    for (const word of [...forbidden, "ECONN", "terminated", "timeout exceeded", "SELECT", "/tmp"]) {
      assert.ok(!answer.raw.includes(word), `${what}: the body shows "${word}": ${answer.raw}`);
    }
  }

  async function assertOutage(): Promise<void> {
    assertUnavailable(await call(server.url, "/api/v1/projects", key), "GET /api/v1/projects");
    assertUnavailable(await call(server.url, "/readyz", null), "GET /readyz");
    assert.equal((await call(server.url, "/healthz", null)).status, 200, "/healthz is liveness only");
    assert.ok(server.registry.isConnected(RUNNER_ID), "the tunnel stays up through the outage");
    // A new agent's handshake needs the store for its key: 503 with Retry-After, no details.
    assertUnavailable(await handshake(server.url, `rd-${"a".repeat(40)}`), "a tunnel handshake");
  }

  async function assertRecovered(): Promise<void> {
    await pollUntil(
      async () => (await call(server.url, "/readyz", null)).status === 200,
      "/readyz to answer 200 again",
      RECOVERY_BOUND_MS,
      100,
    );
    assert.equal((await call(server.url, "/api/v1/projects", key)).status, 200);
    const through = await call(server.url, `/api/v1/revdial/${RUNNER_ID}/proxy/after-outage`, key);
    assert.equal(through.status, 200, through.raw);
    assert.equal(through.headers["x-echo-path"], "/after-outage");
    assert.equal(reconnects, 0, "the same tunnel carried the call: the agent never reconnected");
  }

  async function idleBaseline(): Promise<number> {
    await pollUntil(() => proxy.active === 0, "the pool to go idle", RECOVERY_BOUND_MS, 50);
    return fdCount();
  }

  it("works through the proxy before any fault", async () => {
    assert.equal((await call(server.url, "/readyz", null)).status, 200);
    assert.equal((await call(server.url, "/api/v1/projects", key)).status, 200);
  });

  it("refused and cut connections: 503 with Retry-After, no details; then recovery without restart", async () => {
    const baseline = await idleBaseline();
    await call(server.url, "/api/v1/projects", key); // the pool holds a connection to cut
    await proxy.refuse();
    await assertOutage();
    await proxy.heal();
    await assertRecovered();
    await idleBaseline();
    await pollUntil(() => fdCount() <= baseline, `descriptors back to ${baseline}`, RECOVERY_BOUND_MS, 50);
  });

  it("a frozen database: bounded 503s, not hangs; then recovery without restart", async () => {
    const baseline = await idleBaseline();
    await call(server.url, "/api/v1/projects", key); // a pooled connection that will freeze
    proxy.freeze();
    await assertOutage();
    await proxy.heal();
    await assertRecovered();
    await idleBaseline();
    await pollUntil(() => fdCount() <= baseline, `descriptors back to ${baseline}`, RECOVERY_BOUND_MS, 50);
  });

  it("a write stuck behind a lock is cancelled by the statement timeout and never commits later", async () => {
    const locker = new pg.Client({ connectionString: backend.databaseUrl });
    await locker.connect();
    try {
      await locker.query("BEGIN");
      await locker.query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE");
      const answer = await call(server.url, "/api/v1/users", key, { name: "ghost" });
      assertUnavailable(answer, "POST /api/v1/users behind a lock");
      // Nothing of this database is left waiting on the lock: releasing it cannot commit the write.
      const waiting = await locker.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
      );
      assert.equal(waiting.rows[0].n, 0);
      await locker.query("ROLLBACK");
      const ghost = await locker.query("SELECT count(*)::int AS n FROM users WHERE name = 'ghost'");
      assert.equal(ghost.rows[0].n, 0, "the write the client gave up on was not committed");
    } finally {
      await locker.end();
    }
    assert.equal((await call(server.url, "/api/v1/users", key, { name: "ghost" })).status, 201);
  });
});
