// The sandbox image's recipe without an engine: the build context holds Node, the project and its
// production packages, never its dev tools; its content hash is the same for the same files and
// changes with any byte or mode; --save-context lays out what the Containerfile copies. And the
// docker driver's options: sizes parse exactly, a bad one is a clear error, a root uid is refused.

import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { silentLogger } from "../../src/common/logger.ts";
import { DockerDriver, parseBytes } from "../../src/host/docker-driver.ts";
import { contentHash, contextFiles, fullTag, saveContext } from "../../src/host/sandbox-image.ts";

const tmp = mkdtempSync(join(tmpdir(), "revdial-image-recipe-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

describe("sandbox image recipe", () => {
  it("the context: Node, the project, its production packages; no dev tools", () => {
    const rels = contextFiles().map(([rel]) => rel);
    for (const needed of [
      "node",
      "revdial/package.json",
      "revdial/src/cli/main.ts",
      "revdial/src/host/lobby-launcher.ts",
      "revdial/node_modules/fastify/package.json",
      "revdial/node_modules/sharp/package.json",
    ])
      assert.ok(rels.includes(needed), `${needed} is in the image`);
    for (const dev of ["typescript", "@biomejs", "@types", "node/"])
      assert.ok(!rels.some((r) => r.startsWith(`revdial/node_modules/${dev}`)), `no ${dev} in the image`);
    assert.ok(!rels.some((r) => r.startsWith("revdial/test/")), "no tests in the image");
    assert.deepEqual(rels, [...rels].sort(), "a deterministic order");
  });

  it("the content hash follows every byte and mode, and nothing else", () => {
    const a = join(tmp, "a.txt");
    const b = join(tmp, "b.sh");
    writeFileSync(a, "one");
    writeFileSync(b, "#!/bin/sh\n");
    const files: [string, string][] = [
      ["revdial/a.txt", a],
      ["revdial/b.sh", b],
    ];
    const first = contentHash(files, "FROM x");
    assert.equal(contentHash(files, "FROM x"), first);
    assert.notEqual(contentHash(files, "FROM y"), first, "the recipe counts");
    writeFileSync(a, "onE");
    const changed = contentHash(files, "FROM x");
    assert.notEqual(changed, first, "a byte counts");
    chmodSync(b, 0o755);
    assert.notEqual(contentHash(files, "FROM x"), changed, "the exec bit counts");
  });

  it("--save-context writes what the Containerfile copies", () => {
    const dir = join(tmp, "ctx");
    const n = saveContext(dir);
    assert.ok(n > 100);
    assert.ok(statSync(join(dir, "node")).mode & 0o100, "node is executable");
    assert.ok(existsSync(join(dir, "revdial/src/host/lobby-launcher.ts")));
    assert.match(readFileSync(join(dir, "Containerfile"), "utf8"), /^COPY revdial \/opt\/revdial$/m);
    assert.throws(() => saveContext(dir), /is not empty/);
  });

  it("image names get :latest unless they have a tag", () => {
    assert.equal(fullTag("revdial-sandbox"), "revdial-sandbox:latest");
    assert.equal(fullTag("revdial-sandbox:v2"), "revdial-sandbox:v2");
    assert.equal(fullTag("registry.local:5000/sandbox"), "registry.local:5000/sandbox:latest");
  });
});

describe("docker driver options", () => {
  it("sizes parse exactly; bad ones are clear errors", () => {
    assert.equal(parseBytes("512m"), 512 * 1024 ** 2);
    assert.equal(parseBytes("2g"), 2 * 1024 ** 3);
    assert.equal(parseBytes("1.5G"), 1.5 * 1024 ** 3);
    assert.equal(parseBytes("1048576"), 1048576);
    assert.throws(() => parseBytes("lots"), /expected a size like 512m or 2g, got "lots"/);
  });

  it("refuses a root uid, a bad endpoint and limits below their floor", () => {
    const logger = silentLogger();
    assert.throws(() => new DockerDriver({ logger, user: "0:0" }), /never runs as root/);
    assert.throws(() => new DockerDriver({ logger, endpoint: "docker.sock" }), /expected unix:\/\/\/path/);
    assert.throws(() => new DockerDriver({ logger, pidsLimit: 2 }), /at least 16/);
    assert.throws(() => new DockerDriver({ logger, memoryBytes: 1024 }), /at least 16m/);
  });
});
