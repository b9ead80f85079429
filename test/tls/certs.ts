// Throwaway certificates for the TLS tests, made with `openssl` in a temp dir at test time: one CA,
// and server pairs signed by it for the names asked (127.0.0.1 and localhost by default).

import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

export interface Pair {
  certFile: string;
  keyFile: string;
  cert: Buffer;
  key: Buffer;
  serial: string;
  fingerprint256: string;
}

export interface TestPki {
  dir: string;
  caFile: string;
  /** A server pair signed by the CA; `names` are SANs (IP or DNS). */
  issue(label: string, names?: string[]): Promise<Pair>;
  cleanup(): Promise<void>;
}

const EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

export async function createTestPki(): Promise<TestPki> {
  const dir = await mkdtemp(join(tmpdir(), "revdial-tls-"));
  const caFile = join(dir, "ca.crt");
  const caKey = join(dir, "ca.key");
  await run("openssl", [
    "req",
    "-x509",
    ...EC,
    "-keyout",
    caKey,
    "-out",
    caFile,
    "-days",
    "2",
    "-subj",
    "/CN=revdial test CA",
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ]);
  return {
    dir,
    caFile,
    async issue(label, names = ["IP:127.0.0.1", "DNS:localhost"]) {
      const keyFile = join(dir, `${label}.key`);
      const certFile = join(dir, `${label}.crt`);
      const csr = join(dir, `${label}.csr`);
      const ext = join(dir, `${label}.ext`);
      await writeFile(
        ext,
        `subjectAltName=${names.join(",")}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n`,
      );
      await run("openssl", ["req", ...EC, "-keyout", keyFile, "-out", csr, "-subj", `/CN=${label}`]);
      await run("openssl", [
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        caFile,
        "-CAkey",
        caKey,
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        certFile,
        "-extfile",
        ext,
      ]);
      const cert = await readFile(certFile);
      const x509 = new X509Certificate(cert);
      return {
        certFile,
        keyFile,
        cert,
        key: await readFile(keyFile),
        serial: x509.serialNumber,
        fingerprint256: x509.fingerprint256,
      };
    },
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}
