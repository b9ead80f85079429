// `revdial doctor --server URL --token T` as a user runs it, against a real `revdial server`: every
// step passes on a healthy server (an admin key's round trip through the admin proxy, a user key's
// through a temporary session that is stopped afterwards); a wrong port fails at TCP, a bad or
// missing key at authentication, a name that does not resolve at DNS, and a proxy that answers
// upgrades itself at the WebSocket step, each with its fix printed and a non-zero exit. The
// stripped-Upgrade case behind a real nginx is in test/e2e/reverse-proxy.test.ts.

import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type CliProcess, runCli, startCli } from "../tls/cli-process.ts";

/** Each printed step as [outcome, name]; fix lines (indented) are left out. */
function steps(stdout: string): Array<[string, string]> {
  return stdout
    .split("\n")
    .filter((l) => /^\S/.test(l))
    .map((l) => l.split(/\s+/).slice(0, 2) as [string, string]);
}

const ALL = ["dns", "tcp", "tls", "http", "websocket", "raw", "auth", "tunnel"];

describe("revdial doctor", () => {
  let dir: string;
  let server: CliProcess;
  let url: string;
  let adminKey: string;
  let userKey: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "revdial-doctor-"));
    server = startCli(["server", "--listen", "127.0.0.1:0", "--data-dir", join(dir, "data")]);
    url = (await server.waitFor(/listening on (http:\/\/\S+)/, 60_000))[1];
    adminKey = (await server.waitFor(/admin API key[^:]*: (\S+)/))[1];
    const user = await runCli(["user", "create", "dana"], { REVDIAL_URL: url, REVDIAL_API_KEY: adminKey });
    assert.equal(user.code, 0, user.stderr);
    userKey = /API key: (rd-\S+)/.exec(user.stdout)?.[1] ?? "";
    assert.ok(userKey, user.stdout);
  });

  after(async () => {
    await server?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("healthy server, admin key: every step passes (TLS skipped on http://), with the tunnel's RTT", async () => {
    const res = await runCli(["doctor", "--server", url, "--token", adminKey]);
    assert.equal(res.code, 0, res.stdout + res.stderr);
    assert.deepEqual(
      steps(res.stdout),
      ALL.map((name) => [name === "tls" ? "skip" : "ok", name]),
    );
    assert.match(res.stdout, /^skip\s+tls\s+plain http:\/\//m);
    assert.match(
      res.stdout,
      /^ok\s+tunnel\s+round trip through doctor-[0-9a-f]+ via the admin proxy: RTT \d+\.\d ms \(median of 5\), tunnel closed$/m,
    );
    assert.doesNotMatch(res.stdout, /fix:/);
    // The temporary tunnel is gone (the server learns it from the close frame: allow it 5 s).
    let tunnels = -1;
    for (const deadline = Date.now() + 5000; Date.now() < deadline && tunnels !== 0; ) {
      tunnels = ((await (await fetch(`${url}/healthz`)).json()) as { tunnels: number }).tunnels;
      if (tunnels !== 0) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.equal(tunnels, 0);
  });

  it("healthy server, user key (REVDIAL_API_KEY): the round trip runs through a temporary session, stopped after", async () => {
    const res = await runCli(["doctor"], { REVDIAL_URL: url, REVDIAL_API_KEY: userKey });
    assert.equal(res.code, 0, res.stdout + res.stderr);
    const m =
      /^ok\s+tunnel\s+round trip through sandbox-(ses_\w+) via a temporary session's clipboard: RTT \d+\.\d ms .*; session \1 stopped$/m.exec(
        res.stdout,
      );
    assert.ok(m, res.stdout);
    const session = (await (
      await fetch(`${url}/api/v1/sessions/${m[1]}`, { headers: { authorization: `Bearer ${userKey}` } })
    ).json()) as { status: string; sandbox_connected: boolean };
    assert.equal(session.status, "stopped");
    assert.equal(session.sandbox_connected, false);
  });

  it("the API answers a plain GET on the tunnel path (an upgrade a proxy stripped) with 426 naming the cause", async () => {
    const res = await fetch(`${url}/api/v1/revdial?runnerid=wolf-x`, {
      headers: { authorization: `Bearer ${adminKey}` },
    });
    assert.equal(res.status, 426);
    const { error } = (await res.json()) as { error: { code: string; message: string } };
    assert.equal(error.code, "RD_ERR_TUNNEL_UPGRADE_STRIPPED");
    assert.match(error.message, /a proxy in between strips the Upgrade and Connection headers/);
  });

  it("--token-file reads the key from a file", async () => {
    const file = join(dir, "key");
    await writeFile(file, `${adminKey}\n`, { mode: 0o600 });
    const res = await runCli(["doctor", "--server", url, "--token-file", file]);
    assert.equal(res.code, 0, res.stdout + res.stderr);
    assert.match(res.stdout, /^ok\s+auth\s+key accepted for admin/m);
  });

  it("wrong port: fails at TCP with the fix, later steps skipped, exit 1", async () => {
    const closed = http.createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));
    const res = await runCli(["doctor", "--server", `http://127.0.0.1:${port}`, "--token", adminKey]);
    assert.equal(res.code, 1, res.stdout);
    assert.deepEqual(steps(res.stdout).slice(0, 2), [
      ["ok", "dns"],
      ["FAIL", "tcp"],
    ]);
    assert.match(res.stdout, new RegExp(`^FAIL\\s+tcp\\s+127\\.0\\.0\\.1:${port}: ECONNREFUSED$`, "m"));
    assert.match(res.stdout, /^\s+fix: nothing listens there: start the server/m);
    for (const [outcome, name] of steps(res.stdout).slice(2)) assert.equal(outcome, "skip", name);
  });

  it("a bad key: fails at authentication with the fix, no tunnel attempted, exit 1", async () => {
    const res = await runCli(["doctor", "--server", url, "--token", `rd-${"A".repeat(40)}`]);
    assert.equal(res.code, 1, res.stdout);
    assert.match(res.stdout, /^ok\s+websocket\s/m);
    assert.match(res.stdout, /^FAIL\s+auth\s+key refused: invalid or expired API key \(HTTP 401\)$/m);
    assert.match(res.stdout, /^\s+fix: pass a valid key: --token, --token-file or REVDIAL_API_KEY/m);
    assert.match(res.stdout, /^skip\s+tunnel\s+the auth step failed$/m);
  });

  it("no key at all: fails at authentication", async () => {
    const res = await runCli(["doctor", "--server", url], { REVDIAL_DATA_DIR: join(dir, "nowhere") });
    assert.equal(res.code, 1, res.stdout);
    assert.match(res.stdout, /^FAIL\s+auth\s+no API key given$/m);
  });

  it("a name that does not resolve: fails at DNS", async () => {
    const res = await runCli([
      "doctor",
      "--server",
      "http://revdial-doctor-test.invalid:8080",
      "--token",
      adminKey,
    ]);
    assert.equal(res.code, 1, res.stdout);
    assert.match(res.stdout, /^FAIL\s+dns\s+revdial-doctor-test\.invalid does not resolve/m);
    assert.match(res.stdout, /^\s+fix: check the host name/m);
    assert.match(res.stdout, /^skip\s+tcp\s+the dns step failed$/m);
  });

  it("a proxy that answers upgrades itself (502, no revdial error): fails at the WebSocket step", async () => {
    // In front of the real API's /healthz, like a proxy whose upgrade handling is broken.
    const proxy = http.createServer((req, res) => {
      void fetch(`${url}${req.url}`).then(async (r) => {
        res.writeHead(r.status, { "content-type": r.headers.get("content-type") ?? "text/plain" });
        res.end(await r.text());
      });
    });
    proxy.on("upgrade", (_req, socket) =>
      socket.end("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 11\r\nConnection: close\r\n\r\nBad Gateway"),
    );
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    try {
      const port = (proxy.address() as AddressInfo).port;
      const res = await runCli(["doctor", "--server", `http://127.0.0.1:${port}`, "--token", adminKey]);
      assert.equal(res.code, 1, res.stdout);
      assert.match(res.stdout, /^ok\s+http\s/m);
      assert.match(
        res.stdout,
        /^FAIL\s+websocket\s+HTTP 502 \(Bad Gateway\) came from something in front of the API, not from the tunnel endpoint: a proxy in between strips the Upgrade headers or does not pass upgrades/m,
      );
      assert.match(res.stdout, /^\s+fix: forward them \(nginx: proxy_http_version 1\.1;/m);
      assert.match(res.stdout, /^warn\s+raw\s+--transport raw will not work from here/m);
      assert.match(res.stdout, /^skip\s+tunnel\s+the websocket step failed$/m);
    } finally {
      proxy.closeAllConnections();
      await new Promise((resolve) => proxy.close(resolve));
    }
  });
});
