// Behind a real reverse proxy (issue 10): Debian's nginx, run with exactly the configuration
// docs/reverse-proxy.md documents (read from that file; only its addresses and certificate paths
// replaced), terminating TLS in front of a real `revdial server`. Through it, a v2 agent on `ws`,
// a v2 agent on `raw` and a v1 agent (the seed's Go client's behaviour) connect, and calls through
// the API, also through nginx, reach each with intact bytes (1 MiB bodies compared by SHA-256).
// Then the seed's misconfiguration: the same block without its Upgrade and Connection headers. The
// agents' logs say that a proxy strips the Upgrade headers, and `revdial doctor` fails at its
// websocket step saying the same, where it passes every step through the documented block.
// The documented HAProxy configuration gets the same three agents and doctor run.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import https from "node:https";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type Listening, startTarget } from "../helpers/tunnel-harness.ts";
import { createTestPki, type Pair, type TestPki } from "../tls/certs.ts";
import { type CliProcess, runCli, startCli } from "../tls/cli-process.ts";
import { type GoClient, startGoClient } from "../tunnel/fixtures/go-revdial-client.ts";
import {
  documentedBlock,
  HAPROXY,
  haproxyFor,
  NGINX,
  type ProxyProcess,
  siteFor,
  startHaproxy,
  startNginx,
  withoutUpgradeHeaders,
} from "./proxy-process.ts";

const RUNNER_TOKEN = "rt-reverse-proxy-test-0123456789";
const MiB = 1024 * 1024;

const skipNginx = NGINX ? false : "nginx is not installed (apt-get install nginx): nginx tests skipped";
const skipHaproxy = HAPROXY
  ? false
  : "haproxy is not installed (apt-get install haproxy): HAProxy tests skipped";
for (const reason of [skipNginx, skipHaproxy]) if (reason) process.stdout.write(`# SKIP ${reason}\n`);

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

/** One API server, its CA and a target, shared by every proxy in front of it. */
let pki: TestPki;
let ca: Buffer;
let pair: Pair;
let target: Listening;
let server: CliProcess;
let apiPort: number;
let adminKey: string;
const agents: CliProcess[] = [];
const goClients: GoClient[] = [];

before(async () => {
  if (skipNginx && skipHaproxy) return;
  pki = await createTestPki();
  ca = await readFile(pki.caFile);
  pair = await pki.issue("proxy");
  target = await startTarget();
  await mkdir(join(pki.dir, "data"));
  server = startCli(["server", "--listen", "127.0.0.1:0", "--data-dir", join(pki.dir, "data")], {
    REVDIAL_RUNNER_TOKEN: RUNNER_TOKEN,
  });
  apiPort = Number((await server.waitFor(/listening on http:\/\/127\.0\.0\.1:(\d+)/, 60_000))[1]);
  adminKey = (await server.waitFor(/admin API key[^:]*: (\S+)/))[1];
  // The runner token registers only hosts an admin created: create every host id the agents use.
  for (const proxy of ["nginx", "haproxy", "stripped"])
    for (const kind of ["ws", "raw", "v1"]) {
      const res = await fetch(`http://127.0.0.1:${apiPort}/api/v1/wolf-instances`, {
        method: "POST",
        headers: { authorization: `Bearer ${adminKey}`, "content-type": "application/json" },
        body: JSON.stringify({ id: `${proxy}-${kind}` }),
      });
      assert.equal(res.status, 201, await res.text());
    }
});

after(async () => {
  for (const c of goClients) c.close();
  for (const a of agents) await a.stop();
  await server?.stop();
  await target?.close();
  await pki?.cleanup();
});

function agent(url: string, runnerId: string, transport: "ws" | "raw") {
  const p = startCli(
    [
      "agent",
      "--server",
      url,
      "--runner-id",
      runnerId,
      "--local",
      `127.0.0.1:${target.port}`,
      "--ca-file",
      pki.caFile,
      "--transport",
      transport,
    ],
    { REVDIAL_TOKEN: RUNNER_TOKEN },
  );
  agents.push(p);
  return p;
}

/** A request through the proxy at `base` to the API, with the admin key, verified against the test CA. */
function request(base: string, method: string, path: string, body?: Buffer) {
  return new Promise<{ status: number; headers: Record<string, unknown>; body: Buffer }>(
    (resolve, reject) => {
      const req = https.request(`${base}${path}`, {
        method,
        ca,
        agent: false,
        headers: {
          authorization: `Bearer ${adminKey}`,
          ...(body ? { "content-type": "application/octet-stream", "content-length": body.length } : {}),
        },
      });
      req.once("response", async (res) => {
        const chunks: Buffer[] = [];
        for await (const c of res) chunks.push(c);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) });
      });
      req.once("error", reject);
      req.end(body);
    },
  );
}

/** 1 MiB up and back through the tunnel of `runnerId`, and a GET, both through the proxy. */
async function assertIntactCalls(base: string, runnerId: string) {
  const body = randomBytes(MiB);
  const res = await request(base, "POST", `/api/v1/revdial/${runnerId}/proxy/echo?n=1`, body);
  assert.equal(res.status, 200, res.body.toString().slice(0, 200));
  assert.equal(res.headers["x-echo-path"], "/echo?n=1");
  assert.equal(res.body.length, MiB);
  assert.equal(sha256(res.body), sha256(body));
  const get = await request(base, "GET", `/api/v1/revdial/${runnerId}/proxy/hello`);
  assert.equal(get.status, 200);
  assert.equal(get.headers["x-echo-method"], "GET");
  assert.equal(get.headers["x-echo-path"], "/hello");
}

async function connection(base: string, runnerId: string) {
  const res = await request(base, "GET", "/api/v1/revdial/connections");
  assert.equal(res.status, 200);
  const list = JSON.parse(res.body.toString()) as Array<Record<string, unknown>>;
  return list.find((c) => c.runner_id === runnerId);
}

/** The three kinds of agent and `revdial doctor` through a proxy that passes upgrades. */
function itCarriesEveryTunnel(name: string, url: () => string) {
  it(`serves the API through ${name} (TLS at ${name}, plain HTTP behind it)`, async () => {
    const health = await request(url(), "GET", "/healthz");
    assert.equal(health.status, 200);
    assert.equal(JSON.parse(health.body.toString()).status, "ok");
  });

  it(`a v2 agent on \`ws\` connects through ${name}; calls reach it with intact bytes`, async () => {
    const id = `wolf-${name}-ws`;
    await agent(url(), id, "ws").waitFor(/agent connected/);
    assert.equal((await connection(url(), id))?.transport, "ws");
    await assertIntactCalls(url(), id);
  });

  it(`a v2 agent on \`raw\` (Upgrade: revdial.h2) connects through ${name}; intact bytes`, async () => {
    const id = `wolf-${name}-raw`;
    await agent(url(), id, "raw").waitFor(/agent connected/);
    assert.equal((await connection(url(), id))?.transport, "raw");
    await assertIntactCalls(url(), id);
  });

  it(`a v1 agent (the seed's Go client) connects through ${name}; each call's data WebSocket too`, async () => {
    const id = `wolf-${name}-v1`;
    const client = await startGoClient(url(), id, RUNNER_TOKEN, `127.0.0.1:${target.port}`, { ca });
    goClients.push(client);
    assert.equal((await connection(url(), id))?.protocol, "v1");
    await assertIntactCalls(url(), id);
    assert.ok(client.lines.filter((l) => l.command === "conn-ready").length >= 2);
  });

  it(`revdial doctor through ${name}: every step passes, with a round trip through a temporary tunnel`, async () => {
    const res = await runCli(["doctor", "--server", url(), "--token", adminKey, "--ca-file", pki.caFile]);
    assert.equal(res.code, 0, res.stdout + res.stderr);
    const lines = res.stdout.trim().split("\n");
    assert.deepEqual(
      lines.map((l) => l.split(/\s+/).slice(0, 2).join(" ")),
      ["ok dns", "ok tcp", "ok tls", "ok http", "ok websocket", "ok raw", "ok auth", "ok tunnel"],
    );
    assert.match(res.stdout, /^ok\s+tunnel\s+round trip through doctor-\w+ .*RTT \d+\.\d ms/m);
  });
}

describe("behind nginx with the documented configuration", { skip: skipNginx }, () => {
  let good: ProxyProcess;
  let bad: ProxyProcess;
  let goodUrl: string;
  let badUrl: string;

  before(async () => {
    const block = await documentedBlock("nginx");
    const files = { apiPort, certFile: pair.certFile, keyFile: pair.keyFile };
    await mkdir(join(pki.dir, "nginx-good"));
    await mkdir(join(pki.dir, "nginx-bad"));
    good = await startNginx(join(pki.dir, "nginx-good"), (port) => siteFor(block, { port, ...files }));
    bad = await startNginx(join(pki.dir, "nginx-bad"), (port) =>
      siteFor(withoutUpgradeHeaders(block), { port, ...files }),
    );
    goodUrl = `https://127.0.0.1:${good.port}`;
    badUrl = `https://127.0.0.1:${bad.port}`;
  });

  after(async () => {
    await good?.stop();
    await bad?.stop();
  });

  itCarriesEveryTunnel("nginx", () => goodUrl);
  it("a hijack-mode v1 agent through nginx gets 426: a proxy cannot carry a hijacked GET, and says so", async () => {
    // nginx forwards the GET with `Connection: close` (no Upgrade to map), which the API cannot
    // tell from a stripped handshake: the agent must use its WebSocket control connection here.
    await assert.rejects(
      startGoClient(goodUrl, "wolf-nginx-v1", RUNNER_TOKEN, `127.0.0.1:${target.port}`, { ca, hijack: true }),
      /control refused: 426/,
    );
  });
  it("without the Upgrade headers: a `ws` agent's log says that a proxy strips them", async () => {
    const a = agent(badUrl, "wolf-stripped-ws", "ws");
    const [line] = await a.waitFor(/.*"msg":"tunnel connect failed".*/);
    assert.match(line, /"status":426/);
    assert.match(line, /strips the Upgrade and Connection headers/);
    assert.match(line, /proxy_set_header Upgrade \$http_upgrade/);
    assert.doesNotMatch(a.stdout() + a.stderr(), /agent connected/);
    assert.equal(await connection(goodUrl, "wolf-stripped-ws"), undefined);
    await a.stop();
  });

  it("without the Upgrade headers: a `raw` agent's log says the same", async () => {
    const a = agent(badUrl, "wolf-stripped-raw", "raw");
    const [line] = await a.waitFor(/.*"msg":"tunnel connect failed".*/);
    assert.match(line, /strips the Upgrade and Connection headers/);
    await a.stop();
  });

  it("without the Upgrade headers: a v1 agent's control connection is refused with 426", async () => {
    await assert.rejects(
      startGoClient(badUrl, "wolf-stripped-v1", RUNNER_TOKEN, `127.0.0.1:${target.port}`, { ca }),
      /control refused: 426/,
    );
  });

  it("without the Upgrade headers: revdial doctor fails at the websocket step, naming the stripped Upgrade", async () => {
    const res = await runCli(["doctor", "--server", badUrl, "--token", adminKey, "--ca-file", pki.caFile]);
    assert.equal(res.code, 1, res.stdout + res.stderr);
    assert.match(res.stdout, /^ok\s+http\s/m);
    assert.match(
      res.stdout,
      /^FAIL\s+websocket\s+HTTP 426: a proxy between here and the server strips the Upgrade and Connection headers/m,
    );
    assert.match(
      res.stdout,
      /^\s+fix: forward them \(nginx: proxy_http_version 1\.1; proxy_set_header Upgrade/m,
    );
    assert.match(res.stdout, /^ok\s+auth\s/m);
    assert.match(res.stdout, /^skip\s+tunnel\s+the websocket step failed/m);
    // nginx saw the handshakes as what they became: plain GETs answered 426 by the API.
    const access = await readFile(join(pki.dir, "nginx-bad", "access.log"), "utf8");
    assert.match(access, /"GET \/api\/v1\/revdial\?runnerid=\S* HTTP\/1\.1" 426 /);
  });
});

describe("behind HAProxy with the documented configuration", { skip: skipHaproxy }, () => {
  let proxy: ProxyProcess;
  let url: string;

  before(async () => {
    const block = await documentedBlock("haproxy");
    // HAProxy reads the certificate and its key from one PEM file.
    const pemFile = join(pki.dir, "haproxy.pem");
    await writeFile(pemFile, Buffer.concat([pair.cert, pair.key]), { mode: 0o600 });
    proxy = await startHaproxy(pki.dir, (port) => haproxyFor(block, { port, apiPort, pemFile }));
    url = `https://127.0.0.1:${proxy.port}`;
  });

  after(async () => {
    await proxy?.stop();
  });

  itCarriesEveryTunnel("haproxy", () => url);
});
