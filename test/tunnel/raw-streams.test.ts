// Raw streams (HTTP/2 CONNECT): registry.open() gives a byte pipe to a target inside the sandbox,
// for non-HTTP services. Bytes cross both ways in order, ends propagate, and a refused or
// unreachable target fails the open with the agent's status.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import http from "node:http";
import net from "node:net";
import type { Duplex } from "node:stream";
import { after, before, test } from "node:test";
import { TargetMap } from "../../src/agent/target-map.ts";
import {
  listen,
  readAll,
  startAgent,
  startTunnelServer,
  type TunnelServer,
  waitConnected,
} from "../helpers/tunnel-harness.ts";

const RUNNER = "sandbox-raw-streams";
let echo: net.Server;
let server: TunnelServer;
let agent: ReturnType<typeof startAgent>;

before(async () => {
  // Echoes every byte back and ends when the client ends.
  echo = net.createServer((socket) => socket.pipe(socket));
  await new Promise<void>((resolve) => echo.listen(0, "127.0.0.1", resolve));
  const echoPort = (echo.address() as net.AddressInfo).port;
  const gone = await listen(http.createServer());
  await gone.close();
  server = await startTunnelServer();
  agent = startAgent(server.url, RUNNER, "unused:1", {
    targets: TargetMap.fromFlags(undefined, [`echo=127.0.0.1:${echoPort}`, `down=127.0.0.1:${gone.port}`]),
  });
  await waitConnected(server.registry, RUNNER);
});

after(async () => {
  agent.destroy();
  await server.close();
  await new Promise<void>((resolve) => echo.close(() => resolve()));
});

test("a CONNECT stream is a byte pipe: 8 MiB echoed back byte-identical, end propagates", async () => {
  const pipe: Duplex = await server.registry.open(RUNNER, "echo", { timeoutMs: 3000 });
  const data = randomBytes(8 * 1024 * 1024);
  const echoed = readAll(pipe);
  for (let off = 0; off < data.length; off += 100_000) pipe.write(data.subarray(off, off + 100_000));
  pipe.end();
  const back = await echoed;
  assert.equal(back.length, data.length);
  assert.equal(
    createHash("sha256").update(back).digest("hex"),
    createHash("sha256").update(data).digest("hex"),
  );
});

test("several CONNECT streams at once do not cross", async () => {
  const words = Array.from({ length: 20 }, (_, i) => `stream-${i}-`.repeat(1000));
  const results = await Promise.all(
    words.map(async (w) => {
      const pipe = await server.registry.open(RUNNER, "echo");
      pipe.end(w);
      return (await readAll(pipe)).toString();
    }),
  );
  assert.deepEqual(results, words);
});

test("CONNECT to a target not on the allow-list fails with the agent's 403", async () => {
  await assert.rejects(server.registry.open(RUNNER, "secret"), {
    code: "RD_ERR_TUNNEL_STREAM_FAILED",
    message: `call through tunnel ${RUNNER} failed: agent answered 403 to CONNECT secret`,
  });
});

test("CONNECT to an unreachable target fails with the agent's 502", async () => {
  await assert.rejects(server.registry.open(RUNNER, "down"), {
    code: "RD_ERR_TUNNEL_STREAM_FAILED",
    message: /agent answered 502 to CONNECT down/,
  });
});
