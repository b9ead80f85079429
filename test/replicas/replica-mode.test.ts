// Replica mode's start-up contract, from the command line: without DATABASE_URL (the embedded
// store) it refuses to start, naming the reason, and exits 1; its flags go together; and the peer
// secret is read from a file or the environment, never from the command line.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { MAIN } from "../e2e/cli-harness.ts";

describe("revdial server --replica-id", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "revdial-replica-mode-"));
    await writeFile(join(dir, "peer.secret"), "a-peer-secret-long-enough\n", { mode: 0o600 });
  });
  after(() => rm(dir, { recursive: true, force: true }));

  const server = (args: string[], env: Record<string, string> = {}) => {
    const clean = { ...process.env };
    delete clean.DATABASE_URL;
    delete clean.REVDIAL_PEER_SECRET;
    return spawnSync(
      process.execPath,
      [MAIN, "server", "--listen", "127.0.0.1:0", "--data-dir", join(dir, "data"), ...args],
      { env: { ...clean, REVDIAL_LOG_LEVEL: "warn", ...env }, encoding: "utf8", timeout: 20_000 },
    );
  };

  it("on the embedded store: refuses to start, names the reason, exits 1", () => {
    const res = server([
      "--replica-id",
      "r1",
      "--advertise",
      "http://127.0.0.1:9999",
      "--peer-secret-file",
      join(dir, "peer.secret"),
    ]);
    assert.equal(res.status, 1, res.stderr);
    assert.match(
      res.stderr,
      /RD_ERR_REPLICA_NEEDS_POSTGRES: replica mode \(--replica-id\) needs DATABASE_URL/,
    );
    assert.doesNotMatch(res.stdout, /listening on/);
  });

  it("the same through the environment (REVDIAL_REPLICA_ID, REVDIAL_ADVERTISE_URL, REVDIAL_PEER_SECRET)", () => {
    const res = server([], {
      REVDIAL_REPLICA_ID: "r1",
      REVDIAL_ADVERTISE_URL: "http://127.0.0.1:9999",
      REVDIAL_PEER_SECRET: "a-peer-secret-long-enough",
    });
    assert.equal(res.status, 1, res.stderr);
    assert.match(res.stderr, /RD_ERR_REPLICA_NEEDS_POSTGRES/);
  });

  it("needs --advertise and a peer secret, and says which is missing", () => {
    const noAdvertise = server(["--replica-id", "r1", "--peer-secret-file", join(dir, "peer.secret")]);
    assert.notEqual(noAdvertise.status, 0);
    assert.match(noAdvertise.stderr, /--replica-id needs --advertise/);
    const noSecret = server(["--replica-id", "r1", "--advertise", "http://127.0.0.1:9999"]);
    assert.notEqual(noSecret.status, 0);
    assert.match(
      noSecret.stderr,
      /needs the peer secret: --peer-secret-file FILE or env REVDIAL_PEER_SECRET/,
    );
  });

  it("takes no peer secret on the command line", () => {
    const res = server(["--replica-id", "r1", "--advertise", "http://127.0.0.1:9999", "--peer-secret", "x"]);
    assert.notEqual(res.status, 0);
    assert.match(res.stderr, /unknown option '--peer-secret'/);
  });
});
