// The peer link alone, in one process: a tunnel server with real agents (v3 and v2), a PeerServer on
// its registry, and a PeerPool as another replica's calling side. What a replica forwarding calls
// would notice: answers intact and never crossed under concurrency, request bodies (whole and
// streamed) intact, raw streams byte-identical both ways, a refused target answered 403 as by a
// local tunnel, a runner not held named as such, a wrong secret refused before anything reaches a
// tunnel, and a peer that dies mid-call failing the call at once instead of letting it hang.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import net from "node:net";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { TargetMap } from "../../src/agent/target-map.ts";
import { PeerNotHeldError, PeerPool, PeerServer, PeerUnreachableError } from "../../src/api/cluster/peer.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { TunnelTimeoutError } from "../../src/tunnel/errors.ts";
import {
  type Listening,
  pollUntil,
  readAll,
  startAgent,
  startTarget,
  startTunnelServer,
  type TunnelServer,
  waitConnected,
} from "../helpers/tunnel-harness.ts";

const SECRET = "a-peer-secret-for-the-link-test";

describe("the peer link", () => {
  let server: TunnelServer;
  let target: Listening;
  let echo: net.Server;
  let peer: PeerServer;
  let peerUrl: string;
  let pool: PeerPool;
  const agents: ReturnType<typeof startAgent>[] = [];
  const seen: string[] = [];

  before(async () => {
    target = await startTarget((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const body = Buffer.concat(chunks);
        seen.push(`${req.method} ${req.url}`);
        res.writeHead(req.url === "/missing" ? 404 : 200, {
          "content-type": "text/plain",
          "x-path": req.url,
          "x-host": req.headers.host,
          "x-custom": req.headers["x-custom"] ?? "",
        });
        if (req.method === "POST") res.end(createHash("sha256").update(body).digest("hex"));
        else if (req.url?.startsWith("/big")) res.end(Buffer.alloc(3 * 1024 * 1024, 7));
        else res.end(`answer to ${req.url}`);
      });
    });
    echo = net.createServer((s) => s.pipe(s));
    await new Promise<void>((resolve) => echo.listen(0, "127.0.0.1", resolve));
    const echoPort = (echo.address() as net.AddressInfo).port;
    server = await startTunnelServer();
    for (const protocol of ["v3", "v2"] as const) {
      agents.push(
        startAgent(server.url, `peer-${protocol}`, "unused:1", {
          protocol,
          targets: TargetMap.fromFlags(undefined, [
            `desktop=127.0.0.1:${target.port}`,
            `echo=127.0.0.1:${echoPort}`,
          ]),
        }),
      );
      await waitConnected(server.registry, `peer-${protocol}`);
    }
    peer = new PeerServer({
      replicaId: "holder",
      secret: SECRET,
      registry: server.registry,
      logger: silentLogger(),
    });
    peerUrl = `http://127.0.0.1:${await peer.listen("127.0.0.1", 0)}`;
    pool = new PeerPool({ replicaId: "caller", secret: SECRET, logger: silentLogger() });
  });

  after(async () => {
    pool.close();
    peer.destroy();
    for (const a of agents) a.destroy();
    await server.close();
    await target.close();
    await new Promise<void>((resolve) => echo.close(() => resolve()));
  });

  for (const protocol of ["v3", "v2"]) {
    const runner = `peer-${protocol}`;

    it(`${protocol}: 200 calls at once come back intact and uncrossed`, async () => {
      const answers = await Promise.all(
        Array.from({ length: 200 }, async (_, i) => {
          const res = await pool.request(
            peerUrl,
            "holder",
            runner,
            { method: "GET", path: `/call/${i}`, headers: {} },
            5000,
          );
          return {
            i,
            status: res.status,
            path: res.headers["x-path"],
            body: (await readAll(res.body)).toString(),
          };
        }),
      );
      for (const a of answers) {
        assert.equal(a.status, 200);
        assert.equal(a.path, `/call/${a.i}`);
        assert.equal(a.body, `answer to /call/${a.i}`);
      }
      // Every spliced connection went back to the holder's pool or closed: none is left active.
      await pollUntil(
        () => server.registry.list().find((t) => t.runner_id === runner)?.active_streams === 0,
        "the holder's tunnel has no active stream left",
      );
    });

    it(`${protocol}: the target sees the same request as from a local call (Host, headers)`, async () => {
      const req = { method: "GET", path: "/headers?q=1", headers: { "x-custom": "kept", "user-agent": "t" } };
      const local = await server.registry.request(runner, req);
      const forwarded = await pool.request(peerUrl, "holder", runner, req, 5000);
      await readAll(local.body);
      await readAll(forwarded.body);
      assert.equal(forwarded.headers["x-path"], "/headers?q=1");
      assert.equal(forwarded.headers["x-host"], local.headers["x-host"]);
      assert.equal(forwarded.headers["x-custom"], "kept");
    });

    it(`${protocol}: bodies both ways: whole, streamed, and a 3 MiB answer`, async () => {
      const whole = randomBytes(200_000);
      const res = await pool.request(
        peerUrl,
        "holder",
        runner,
        {
          method: "POST",
          path: "/whole",
          headers: { "content-type": "application/octet-stream" },
          body: whole,
        },
        5000,
      );
      assert.equal((await readAll(res.body)).toString(), createHash("sha256").update(whole).digest("hex"));
      const parts = Array.from({ length: 16 }, () => randomBytes(64 * 1024));
      const streamed = await pool.request(
        peerUrl,
        "holder",
        runner,
        { method: "POST", path: "/streamed", headers: {}, body: Readable.from(parts) },
        5000,
      );
      assert.equal(
        (await readAll(streamed.body)).toString(),
        createHash("sha256").update(Buffer.concat(parts)).digest("hex"),
      );
      const big = await pool.request(
        peerUrl,
        "holder",
        runner,
        { method: "GET", path: "/big", headers: {} },
        5000,
      );
      const bytes = await readAll(big.body);
      assert.equal(bytes.length, 3 * 1024 * 1024);
      assert.ok(bytes.every((b) => b === 7));
      const missing = await pool.request(
        peerUrl,
        "holder",
        runner,
        { method: "GET", path: "/missing", headers: {} },
        5000,
      );
      assert.equal(missing.status, 404, "the target's own status comes back");
      await readAll(missing.body);
    });

    it(`${protocol}: a target the agent does not allow is a 403 answer, as from a local tunnel`, async () => {
      const res = await pool.request(
        peerUrl,
        "holder",
        runner,
        { method: "GET", path: "/", headers: {}, target: "not-allowed" },
        5000,
      );
      const local = await server.registry.request(runner, {
        method: "GET",
        path: "/",
        headers: {},
        target: "not-allowed",
      });
      assert.equal(res.status, 403);
      assert.equal(res.status, local.status);
      await readAll(res.body);
      await readAll(local.body);
    });

    it(`${protocol}: a raw stream crosses byte-identical both ways`, async () => {
      const pipe = await pool.open(peerUrl, "holder", runner, "echo", { timeoutMs: 5000 });
      const data = randomBytes(4 * 1024 * 1024);
      const back = readAll(pipe);
      for (let at = 0; at < data.length; at += 100_000) pipe.write(data.subarray(at, at + 100_000));
      pipe.end();
      const got = await back;
      assert.equal(got.length, data.length);
      assert.ok(got.equals(data));
    });
  }

  it("a runner the peer does not hold: PeerNotHeldError, nothing reaches a target", async () => {
    const before = seen.length;
    await assert.rejects(
      pool.request(peerUrl, "holder", "nobody-here", { method: "GET", path: "/x", headers: {} }, 2000),
      (err) =>
        err instanceof PeerNotHeldError && /nobody-here is not connected to replica holder/.test(err.message),
    );
    await assert.rejects(
      pool.open(peerUrl, "holder", "nobody-here", "echo", { timeoutMs: 2000 }),
      (err) => err instanceof PeerNotHeldError,
    );
    assert.equal(seen.length, before);
  });

  it("the cluster-wide list and an eviction cross the link", async () => {
    const list = await pool.tunnels(peerUrl, "holder");
    assert.deepEqual(list.map((t) => t.runner_id).sort(), ["peer-v2", "peer-v3"]);
    assert.deepEqual(
      await pool.json(peerUrl, "holder", { op: "evict", runner: "nobody-here", reason: "test" }),
      {
        evicted: false,
      },
    );
  });

  it("a wrong secret: the pool cannot connect, and nothing reaches a target", async () => {
    const before = seen.length;
    const intruder = new PeerPool({
      replicaId: "intruder",
      secret: "not-the-secret",
      logger: silentLogger(),
    });
    await assert.rejects(
      intruder.request(
        peerUrl,
        "holder",
        "peer-v3",
        { method: "GET", path: "/intrusion", headers: {} },
        2000,
      ),
      (err) =>
        err instanceof PeerUnreachableError &&
        /RD_ERR_PEER_AUTH_FAILED/.test(String((err.cause as Error)?.message)),
    );
    intruder.close();
    assert.equal(seen.length, before);
  });

  it("a forwarded call's deadline cuts the holder's stream; a peer that dies mid-call fails the call at once", async () => {
    // A holder whose only tunnel's target never answers: the call waits there until the holder dies.
    const stuck = await startTarget(() => {});
    const lone = await startTunnelServer();
    const a = startAgent(lone.url, "stuck", `127.0.0.1:${stuck.port}`, { protocol: "v3" });
    await waitConnected(lone.registry, "stuck");
    const doomed = new PeerServer({
      replicaId: "doomed",
      secret: SECRET,
      registry: lone.registry,
      logger: silentLogger(),
    });
    const url = `http://127.0.0.1:${await doomed.listen("127.0.0.1", 0)}`;
    // First its deadline: the call fails with a timeout, and the holder's stream is cut with it.
    await assert.rejects(
      pool.request(url, "doomed", "stuck", { method: "GET", path: "/", headers: {} }, 300),
      (err) => err instanceof TunnelTimeoutError,
    );
    await pollUntil(
      () => lone.registry.list()[0]?.active_streams === 0,
      "the holder cut the timed-out call's stream",
    );
    const started = performance.now();
    const call = pool.request(url, "doomed", "stuck", { method: "GET", path: "/", headers: {} }, 20_000);
    setTimeout(() => doomed.destroy(), 300);
    await assert.rejects(call, (err) => err instanceof PeerUnreachableError);
    assert.ok(performance.now() - started < 5000, "failed when the peer died, not at the 20 s deadline");
    a.destroy();
    await lone.close();
    await stuck.close();
  });
});
