// The TLS helpers on their own: Node's verification codes map to a stable error naming the host
// and the reason (fetch's wrapped cause included), and --ca-file ADDS to the default roots.

import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import tls from "node:tls";
import { classifyTlsError, clientTls, hostOf, TlsVerificationError } from "../../src/common/tls.ts";
import { createTestPki, type TestPki } from "./certs.ts";

const tlsFailure = (code: string) => Object.assign(new Error(`boom ${code}`), { code });

describe("classifyTlsError", () => {
  const cases: Array<[string, string]> = [
    ["UNABLE_TO_VERIFY_LEAF_SIGNATURE", "unknown authority"],
    ["SELF_SIGNED_CERT_IN_CHAIN", "unknown authority"],
    ["DEPTH_ZERO_SELF_SIGNED_CERT", "unknown authority"],
    ["UNABLE_TO_GET_ISSUER_CERT_LOCALLY", "unknown authority"],
    ["CERT_HAS_EXPIRED", "expired"],
    ["CERT_NOT_YET_VALID", "not yet valid"],
    ["ERR_TLS_CERT_ALTNAME_INVALID", "name mismatch"],
  ];
  for (const [code, reason] of cases) {
    it(`${code} -> ${reason}`, () => {
      const err = classifyTlsError(tlsFailure(code), "api.example:443");
      assert.ok(err instanceof TlsVerificationError);
      assert.equal(err.code, "RD_ERR_TLS_VERIFY");
      assert.equal(err.reason, reason);
      assert.equal(err.tlsCode, code);
      assert.match(
        err.message,
        new RegExp(`^TLS verification of api\\.example:443 failed: ${reason} \\(${code}\\)`),
      );
    });
  }

  it("finds the code in a wrapped cause (fetch's TypeError)", () => {
    const wrapped = new TypeError("fetch failed", { cause: tlsFailure("CERT_HAS_EXPIRED") });
    assert.equal(classifyTlsError(wrapped, "h:1")?.reason, "expired");
  });

  it("other failures are not TLS verification errors", () => {
    assert.equal(classifyTlsError(tlsFailure("ECONNREFUSED"), "h:1"), null);
    assert.equal(classifyTlsError(new Error("socket hang up"), "h:1"), null);
  });

  it("hostOf fills in the scheme's default port", () => {
    assert.equal(hostOf(new URL("wss://api.example/x")), "api.example:443");
    assert.equal(hostOf(new URL("http://127.0.0.1:8080")), "127.0.0.1:8080");
  });
});

describe("clientTls", () => {
  let pki: TestPki;
  before(async () => {
    pki = await createTestPki();
  });
  after(() => pki.cleanup());

  it("no flags: Node's defaults (full verification)", () => {
    assert.equal(clientTls({}), undefined);
  });

  it("--ca-file adds the private CA to the default roots", async () => {
    const opts = clientTls({ caFile: pki.caFile });
    assert.ok(opts?.ca);
    assert.equal(opts.rejectUnauthorized, true);
    assert.ok(opts.ca.length > tls.rootCertificates.length, "the public roots are kept");
    const { readFile } = await import("node:fs/promises");
    assert.ok(opts.ca.includes((await readFile(pki.caFile, "utf8")).trim()));
  });

  it("--insecure turns verification off", () => {
    assert.deepEqual(clientTls({ insecure: true }), { rejectUnauthorized: false });
  });

  it("a missing or non-PEM CA file fails at start-up, naming the file", async () => {
    assert.throws(() => clientTls({ caFile: "/nonexistent/ca.pem" }), /--ca-file.*\/nonexistent\/ca\.pem/);
    const junk = join(pki.dir, "junk.pem");
    await writeFile(junk, "hello\n");
    assert.throws(() => clientTls({ caFile: junk }), /holds no PEM certificate/);
  });
});
