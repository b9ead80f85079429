// TLS end to end, as users run it (issue 6): `revdial server --tls-cert/--tls-key` as a child
// process, agents (`revdial agent`, `revdial-client`) as child processes dialing it over WSS, calls
// through the admin proxy, SIGHUP with a new pair, `revdial doctor`, and a grep of every log line
// of the run for the tokens. Certificates are made by openssl in a temp dir.

import assert from "node:assert/strict";
import { copyFile, mkdir, writeFile } from "node:fs/promises";
import https from "node:https";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import tls from "node:tls";
import { type Listening, pollUntil, startTarget } from "../helpers/tunnel-harness.ts";
import { startGoClient } from "../tunnel/fixtures/go-revdial-client.ts";
import { createTestPki, type Pair, type TestPki } from "./certs.ts";
import { allProcesses, type CliProcess, runCli, startCli, startClient } from "./cli-process.ts";

const RUNNER_TOKEN = "rt-tls-test-0123456789abcdef-SECRET";

function peerCertificate(port: number, ca: Buffer): Promise<tls.PeerCertificate> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: "127.0.0.1", port, ca }, () => {
      const cert = socket.getPeerCertificate();
      socket.destroy();
      resolve(cert);
    });
    socket.once("error", reject);
  });
}

function get(
  url: string,
  ca: Buffer,
  headers: Record<string, string>,
): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    https
      .get(url, { ca, headers, agent: false }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c) => {
          body += c;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      })
      .once("error", reject);
  });
}

/** An admin creates a host, so that the runner token may register it. */
function createHost(url: string, ca: Buffer, adminKey: string, id: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify({ id });
    https
      .request(
        `${url}/api/v1/wolf-instances`,
        {
          method: "POST",
          ca,
          agent: false,
          headers: { authorization: `Bearer ${adminKey}`, "content-type": "application/json" },
        },
        (res) => {
          res.resume();
          res.on("end", () => resolve(res.statusCode ?? 0));
        },
      )
      .once("error", reject)
      .end(body);
  });
}

const count = (text: string, pattern: RegExp) => text.match(new RegExp(pattern, "g"))?.length ?? 0;

describe("TLS end to end through the CLI", () => {
  let pki: TestPki;
  let pairA: Pair;
  let pairB: Pair;
  let ca: Buffer;
  let server: CliProcess;
  let url: string;
  let port: number;
  let adminKey: string;
  let target: Listening;
  const liveCert = () => join(pki.dir, "live.crt");
  const liveKey = () => join(pki.dir, "live.key");
  const agents: CliProcess[] = [];

  const agent = (runnerId: string, extra: string[] = []) => {
    const p = startCli(
      ["agent", "--server", url, "--runner-id", runnerId, "--local", `127.0.0.1:${target.port}`, ...extra],
      { REVDIAL_TOKEN: RUNNER_TOKEN },
    );
    agents.push(p);
    return p;
  };
  const callThrough = (runnerId: string, path: string) =>
    get(`${url}/api/v1/revdial/${runnerId}/proxy/${path}`, ca, { authorization: `Bearer ${adminKey}` });

  before(async () => {
    pki = await createTestPki();
    ca = await import("node:fs/promises").then((fs) => fs.readFile(pki.caFile));
    pairA = await pki.issue("server-a");
    pairB = await pki.issue("server-b");
    await copyFile(pairA.certFile, liveCert());
    await copyFile(pairA.keyFile, liveKey());
    await mkdir(join(pki.dir, "data"));
    target = await startTarget();
    server = startCli(
      [
        "server",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        join(pki.dir, "data"),
        "--tls-cert",
        liveCert(),
        "--tls-key",
        liveKey(),
      ],
      { REVDIAL_RUNNER_TOKEN: RUNNER_TOKEN },
    );
    url = (await server.waitFor(/listening on (https:\/\/\S+)/, 60_000))[1];
    port = Number(new URL(url).port);
    adminKey = (await server.waitFor(/admin API key[^:]*: (\S+)/))[1];
    for (const id of ["tls-ca", "tls-go", "tls-noca", "tls-insecure", "tls-v1", "tls-v1-hijack"]) {
      assert.equal(await createHost(url, ca, adminKey, id), 201);
    }
  });

  after(async () => {
    for (const a of agents) await a.stop();
    await server?.stop();
    await target?.close();
    await pki?.cleanup();
  });

  it("prints an https URL and serves HTTPS with the given certificate", async () => {
    assert.match(url, /^https:\/\/127\.0\.0\.1:\d+$/);
    const cert = await peerCertificate(port, ca);
    assert.equal(cert.serialNumber, pairA.serial);
    const health = await get(`${url}/healthz`, ca, {});
    assert.equal(health.status, 200);
  });

  it("an agent with --ca-file connects over WSS and calls go through", async () => {
    const a = agent("wolf-tls-ca", ["--ca-file", pki.caFile]);
    await a.waitFor(/agent connected/);
    const res = await callThrough("wolf-tls-ca", "hello?x=1");
    assert.equal(res.status, 200, res.body);
    assert.equal(res.headers["x-echo-path"], "/hello?x=1");
  });

  it("revdial-client with -ca-file connects too", async () => {
    const c = startClient([
      "-server",
      `${url}/api/v1/revdial`,
      "-runner-id",
      "wolf-tls-go",
      "-token",
      RUNNER_TOKEN,
      "-local",
      `127.0.0.1:${target.port}`,
      "-ca-file",
      pki.caFile,
    ]);
    agents.push(c);
    await c.waitFor(/agent connected/);
    assert.equal((await callThrough("wolf-tls-go", "go")).status, 200);
  });

  for (const hijack of [false, true]) {
    it(`a v1 agent (the seed's Go client) over TLS, control connection ${hijack ? "hijacked" : "a WebSocket"}`, async () => {
      const id = hijack ? "wolf-tls-v1-hijack" : "wolf-tls-v1";
      const client = await startGoClient(url, id, RUNNER_TOKEN, `127.0.0.1:${target.port}`, { ca, hijack });
      try {
        await pollUntil(async () => {
          const list = await get(`${url}/api/v1/revdial/connections`, ca, {
            authorization: `Bearer ${adminKey}`,
          });
          return list.body.includes(`"${id}"`);
        }, `${id} listed`);
        const res = await callThrough(id, "v1?over=tls");
        assert.equal(res.status, 200, res.body);
        assert.equal(res.headers["x-echo-path"], "/v1?over=tls");
      } finally {
        client.close();
      }
    });
  }

  it("without --ca-file the agent refuses, naming the host and 'unknown authority'", async () => {
    const a = agent("wolf-tls-noca");
    const [line] = await a.waitFor(/.*tunnel connect failed.*/);
    assert.match(line, /RD_ERR_TLS_VERIFY/);
    assert.match(line, /unknown authority/);
    assert.ok(line.includes(`127.0.0.1:${port}`), line);
    assert.doesNotMatch(a.stderr(), /agent connected/);
    await a.stop();
  });

  it("with --insecure it connects and warns that verification is off", async () => {
    const a = agent("wolf-tls-insecure", ["--insecure"]);
    await a.waitFor(/agent connected/);
    assert.match(a.stderr(), /"level":40.*verification is OFF \(--insecure\)/);
    assert.equal((await callThrough("wolf-tls-insecure", "x")).status, 200);
    await a.stop();
  });

  it("revdial doctor: all ok with --ca-file", async () => {
    const res = await runCli(["doctor", "--ca-file", pki.caFile], {
      REVDIAL_URL: url,
      REVDIAL_API_KEY: adminKey,
    });
    assert.equal(res.code, 0, res.stdout + res.stderr);
    for (const name of ["dns", "tcp", "tls", "http", "websocket", "raw", "auth", "tunnel"])
      assert.match(res.stdout, new RegExp(`^ok\\s+${name}\\s`, "m"));
  });

  it("revdial doctor: REVDIAL_CA_FILE works as --ca-file", async () => {
    const res = await runCli(["doctor"], {
      REVDIAL_URL: url,
      REVDIAL_API_KEY: adminKey,
      REVDIAL_CA_FILE: pki.caFile,
    });
    assert.equal(res.code, 0, res.stdout + res.stderr);
  });

  it("revdial doctor: FAIL naming the verification problem without --ca-file", async () => {
    const res = await runCli(["doctor"], { REVDIAL_URL: url, REVDIAL_API_KEY: adminKey });
    assert.equal(res.code, 1, res.stdout);
    assert.match(res.stdout, /^FAIL\s+tls\s+TLS verification of 127\.0\.0\.1:\d+ failed: unknown authority/m);
    assert.match(res.stdout, /^skip\s+websocket/m);
  });

  it("a client command without --ca-file reports the verification failure, not 'cannot reach'", async () => {
    const res = await runCli(["user", "me"], { REVDIAL_URL: url, REVDIAL_API_KEY: adminKey });
    assert.equal(res.code, 1);
    assert.match(res.stderr, /TLS verification of 127\.0\.0\.1:\d+ failed: unknown authority/);
    const ok = await runCli(["user", "me", "--ca-file", pki.caFile], {
      REVDIAL_URL: url,
      REVDIAL_API_KEY: adminKey,
    });
    assert.equal(ok.code, 0, ok.stderr);
  });

  it("SIGHUP with a new pair: the live tunnel stays, new connections see the new certificate", async () => {
    const live = agents[0];
    const before = await get(`${url}/api/v1/revdial/connections`, ca, {
      authorization: `Bearer ${adminKey}`,
    });
    const connectedAt = JSON.parse(before.body).find(
      (c: { runner_id: string }) => c.runner_id === "wolf-tls-ca",
    ).connected_at;
    await copyFile(pairB.certFile, liveCert());
    await copyFile(pairB.keyFile, liveKey());
    server.child.kill("SIGHUP");
    await server.waitFor(
      new RegExp(`TLS certificate reloaded.*${pairB.serial}|${pairB.serial}.*TLS certificate reloaded`),
    );
    assert.equal((await peerCertificate(port, ca)).serialNumber, pairB.serial);
    // Same tunnel: still answering, never reconnected, same connected_at.
    assert.equal((await callThrough("wolf-tls-ca", "after-reload")).status, 200);
    assert.equal(count(live.stderr(), /agent connected/), 1);
    const afterList = await get(`${url}/api/v1/revdial/connections`, ca, {
      authorization: `Bearer ${adminKey}`,
    });
    const same = JSON.parse(afterList.body).find((c: { runner_id: string }) => c.runner_id === "wolf-tls-ca");
    assert.equal(same.connected_at, connectedAt);
  });

  it("SIGHUP with a broken pair keeps the old certificate and says why", async () => {
    await writeFile(liveKey(), "not a key\n");
    server.child.kill("SIGHUP");
    await server.waitFor(/is not a PEM private key.*TLS reload refused/);
    assert.equal((await peerCertificate(port, ca)).serialNumber, pairB.serial);
    assert.equal((await callThrough("wolf-tls-ca", "still")).status, 200);
  });

  it("no token or key appears in any log line of the run (stderr of server and agents)", async () => {
    const logs = allProcesses.map((p) => p.stderr()).join("\n");
    assert.ok(logs.length > 0);
    assert.ok(!logs.includes(RUNNER_TOKEN), "the runner token is in a log");
    assert.ok(!logs.includes(adminKey), "the admin key is in a log");
    assert.doesNotMatch(logs, /access_token|[?&]token=/);
  });
});
