// Large answers through the admin proxy (src/api/routes/admin-proxy.ts, through src/common/pump.ts,
// which writes a turn's reads to the caller in one corked write) and the agent's recycled reads
// (src/tunnel/read-pool.ts), end to end through a real server, agent and target on 127.0.0.1: many
// answers at once, with and without Content-Length, some callers reading slowly (so the caller's
// socket, the tunnel stream's credit and the target all pause and resume), arrive byte-identical;
// and a keep-alive connection that carried a large answer answers its next call whole.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { AgentClient } from "../../src/agent/tunnel-client.ts";
import { type RunningServer, startServer } from "../../src/api/server.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { startAgent, startTarget, waitConnected } from "../helpers/tunnel-harness.ts";

const RUNNER = "bulk-front";
const BODIES = 8;
const SIZE = 5 * 1024 * 1024 + 777;

function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

/** GET through the proxy; a slow reader pauses its response every few chunks. */
function get(
  base: string,
  path: string,
  headers: Record<string, string>,
  agent: http.Agent,
  slow: boolean,
): Promise<{ status: number; hash: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const req = http.get(`${base}${path}`, { headers, agent }, (res) => {
      const h = createHash("sha256");
      let bytes = 0;
      let chunks = 0;
      res.on("data", (c: Buffer) => {
        h.update(c);
        bytes += c.length;
        if (slow && ++chunks % 6 === 0) {
          res.pause();
          void sleep(3).then(() => res.resume());
        }
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, hash: h.digest("hex"), bytes }));
      res.on("error", reject);
    });
    req.on("error", reject);
  });
}

describe("large answers through the admin proxy", () => {
  let dir: string;
  let server: RunningServer;
  let target: Awaited<ReturnType<typeof startTarget>>;
  let agent: AgentClient;
  let admin: Record<string, string>;
  let bodies: Buffer[];

  before(async () => {
    bodies = Array.from({ length: BODIES }, () => randomBytes(SIZE));
    dir = mkdtempSync(join(tmpdir(), "revdial-bulk-front-"));
    server = await startServer({
      listen: "127.0.0.1:0",
      dataDir: dir,
      gracePeriodMs: 0,
      logger: silentLogger(),
    });
    admin = { authorization: `Bearer ${server.adminKey}` };
    // /N answers body N: even ones with a Content-Length, odd ones chunked (no declared length).
    target = await startTarget((req, res) => {
      const i = Number(req.url?.slice(1));
      const body = bodies[i];
      if (i % 2 === 0) res.setHeader("content-length", String(body.length));
      let off = 0;
      const more = () => {
        while (off < body.length) {
          const n = 3000 + ((off * 13) % 150_000);
          const ok = res.write(body.subarray(off, off + n));
          off += n;
          if (!ok) return void res.once("drain", more);
        }
        res.end();
      };
      more();
    });
    agent = startAgent(server.url, RUNNER, `127.0.0.1:${target.port}`, { token: server.adminKey ?? "" });
    await waitConnected(server.registry, RUNNER);
  });

  after(async () => {
    await agent?.close(100);
    await server?.close();
    await target?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const proxy = (path: string) => `/api/v1/revdial/${RUNNER}/proxy${path}`;

  it("many at once, some read slowly, arrive byte-identical", async () => {
    const pool = new http.Agent({ keepAlive: true, maxSockets: BODIES });
    try {
      for (let round = 0; round < 2; round++) {
        const got = await Promise.all(
          bodies.map((_, i) => get(server.url, proxy(`/${i}`), admin, pool, (i + round) % 2 === 1)),
        );
        got.forEach((g, i) => {
          assert.deepEqual(
            g,
            { status: 200, hash: sha256(bodies[i]), bytes: SIZE },
            `round ${round} body ${i}`,
          );
        });
      }
    } finally {
      pool.destroy();
    }
  });

  it("a keep-alive connection that carried a large answer answers its next call whole", async () => {
    const one = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      for (const i of [0, 1, 2]) {
        const g = await get(server.url, proxy(`/${i}`), admin, one, false);
        assert.deepEqual(g, { status: 200, hash: sha256(bodies[i]), bytes: SIZE }, `body ${i}`);
      }
    } finally {
      one.destroy();
    }
  });
});
