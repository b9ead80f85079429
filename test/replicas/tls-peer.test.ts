// Replicas whose peer endpoints advertise https:// URLs: the peer link is TLS with the
// server's --tls-cert/--tls-key (here a throwaway CA's pair, the certificate file holding the chain).
// A call to the replica without the tunnel is forwarded over that link and answered intact, the
// cluster-wide list crosses it too, and the peer endpoint speaks no cleartext.

import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import net, { type AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { TargetMap } from "../../src/agent/target-map.ts";
import { AgentClient } from "../../src/agent/tunnel-client.ts";
import { silentLogger } from "../../src/common/logger.ts";
import { createTestPki, type TestPki } from "../tls/certs.ts";
import { Cluster, clusterUnavailable, until } from "./cluster-harness.ts";

const skip = (await clusterUnavailable()) ?? false;

describe("replicas advertising https:// peer endpoints", { skip }, () => {
  let pki: TestPki;
  let ca: Buffer;
  let cluster: Cluster;
  let target: http.Server;
  let agent: AgentClient;

  const get = (url: string, key = cluster.adminKey) =>
    new Promise<{ status: number; replica: string | undefined; body: Buffer }>((resolve, reject) => {
      https
        .get(url, { ca, agent: false, headers: { authorization: `Bearer ${key}` } }, (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () =>
            resolve({
              status: res.statusCode ?? 0,
              replica: res.headers["revdial-replica"] as string | undefined,
              body: Buffer.concat(chunks),
            }),
          );
        })
        .on("error", reject);
    });

  before(async () => {
    pki = await createTestPki();
    ca = await readFile(pki.caFile);
    const pair = await pki.issue("replica");
    // The full chain, as an operator's certificate file holds it: the peers trust its CA.
    const chain = join(pki.dir, "replica-chain.crt");
    await writeFile(chain, Buffer.concat([pair.cert, ca]));
    target = http.createServer((req, res) => {
      const body = Buffer.from(`hello ${req.url} `.repeat(2000));
      res.writeHead(200, { "content-type": "text/plain", "content-length": body.length });
      res.end(body);
    });
    await new Promise<void>((r) => target.listen(0, "127.0.0.1", r));
    cluster = await new Cluster([], 1024, {
      loadBalancer: false,
      https: { certFile: chain, keyFile: pair.keyFile },
    }).start(2);
    const [r1] = cluster.replicas;
    agent = new AgentClient({
      serverUrl: r1.url,
      runnerId: "tls-1",
      token: cluster.adminKey,
      targets: new TargetMap({ desktop: `127.0.0.1:${(target.address() as AddressInfo).port}` }, null),
      tls: { ca },
      logger: silentLogger(),
    });
    void agent.start();
    await until(
      async () => (await get(`${r1.url}/api/v1/revdial/tls-1/proxy/x`)).status === 200,
      "agent on r1",
    );
  });

  after(async () => {
    await agent?.close(200).catch(() => {});
    await cluster?.close();
    await new Promise((r) => target?.close(r));
    await pki?.cleanup();
  });

  it("a call to the other replica crosses the TLS peer link and comes back intact", async () => {
    const r2 = cluster.replicas[1];
    assert.ok(r2.url.startsWith("https://"), r2.url);
    for (const path of ["/small", "/other?q=1"]) {
      const res = await get(`${r2.url}/api/v1/revdial/tls-1/proxy${path}`);
      assert.equal(res.status, 200, res.body.toString());
      assert.equal(res.replica, "r2");
      assert.equal(res.body.toString(), `hello ${path} `.repeat(2000));
    }
    const list = await get(`${r2.url}/api/v1/revdial/connections`);
    assert.equal(list.status, 200);
    const conns = JSON.parse(list.body.toString()) as { runner_id: string; replica: string }[];
    assert.deepEqual(
      conns.filter((c) => c.runner_id === "tls-1").map((c) => c.replica),
      ["r1"],
      "r2 listed r1's tunnel over the peer link",
    );
  });

  it("the peer endpoint speaks TLS only: a cleartext handshake gets no answer", async () => {
    const [r1] = cluster.replicas;
    const socket = net.connect(r1.peerPort, "127.0.0.1");
    socket.on("error", () => {});
    const got = await new Promise<string>((resolve) => {
      let buf = "";
      socket.on("data", (c: Buffer) => {
        buf += c.toString("latin1");
      });
      socket.on("close", () => resolve(buf));
      setTimeout(() => resolve(buf), 1500);
      socket.write(
        `REVDIAL-PEER/2 ${JSON.stringify({ replica: "x", secret: "correct-horse-battery-staple-peer" })}\n`,
      );
    });
    socket.destroy();
    assert.doesNotMatch(got, /REVDIAL-PEER/, "no peer answer on a cleartext connection");
  });
});
