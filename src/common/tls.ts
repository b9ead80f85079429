// Client-side TLS for everything that dials the API (agent, host, CLI, doctor): which roots to
// trust, and how to tell a certificate verification failure from any other connection error.
//
// Why it exists: the seed's Go client skipped verification and ignored its own -insecure flag.
// Here an https/wss URL is verified against Node's default roots; `--ca-file` ADDS a private CA
// (the public roots stay trusted); `--insecure` turns verification off only when asked. A failed
// verification becomes a TlsVerificationError (code RD_ERR_TLS_VERIFY) naming the host and the
// reason, so a user sees "unknown authority" rather than "socket hang up".

import { readFileSync } from "node:fs";
import tls from "node:tls";
import { InvalidOptionError, RevdialError } from "./errors.ts";

/** The TLS options a client passes to `tls.connect` / `https.request` / `ws`. */
export interface ClientTls {
  /** Trusted roots; unset means Node's default store. */
  ca?: string[];
  rejectUnauthorized: boolean;
}

export interface ClientTlsFlags {
  /** A PEM file with one or more CA certificates, trusted in addition to the default roots. */
  caFile?: string | null;
  /** Turn verification off. */
  insecure?: boolean | null;
}

/** Logged at every connect made with verification off. */
export const INSECURE_WARNING =
  "TLS certificate verification is OFF (--insecure): anyone on the path can read and alter this connection";

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** Node's default roots (bundled, plus NODE_EXTRA_CA_CERTS and the system store when enabled). */
function defaultRoots(): string[] {
  const get = (tls as { getCACertificates?: (type: string) => string[] }).getCACertificates;
  return get ? get("default") : [...tls.rootCertificates];
}

/**
 * The client TLS options for the flags, or undefined when Node's defaults apply (full verification
 * against the default roots). Reads the CA file now, so a wrong path fails at start-up, naming it.
 */
export function clientTls(flags: ClientTlsFlags): ClientTls | undefined {
  if (flags.insecure) return { rejectUnauthorized: false };
  if (!flags.caFile) return undefined;
  let text: string;
  try {
    text = readFileSync(flags.caFile, "utf8");
  } catch (err) {
    throw new InvalidOptionError("--ca-file", `cannot read ${flags.caFile}: ${(err as Error).message}`);
  }
  const certs = text.match(PEM_CERT) ?? [];
  if (certs.length === 0) {
    throw new InvalidOptionError("--ca-file", `${flags.caFile} holds no PEM certificate`);
  }
  return { ca: [...defaultRoots(), ...certs], rejectUnauthorized: true };
}

/** What went wrong with the server's certificate, in words a user acts on. */
export type TlsFailureReason =
  | "unknown authority"
  | "expired"
  | "not yet valid"
  | "name mismatch"
  | "revoked"
  | "invalid certificate";

const REASONS: Record<string, TlsFailureReason> = {
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: "unknown authority",
  UNABLE_TO_GET_ISSUER_CERT: "unknown authority",
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "unknown authority",
  SELF_SIGNED_CERT_IN_CHAIN: "unknown authority",
  DEPTH_ZERO_SELF_SIGNED_CERT: "unknown authority",
  CERT_UNTRUSTED: "unknown authority",
  CERT_HAS_EXPIRED: "expired",
  CRL_HAS_EXPIRED: "expired",
  CERT_NOT_YET_VALID: "not yet valid",
  ERR_TLS_CERT_ALTNAME_INVALID: "name mismatch",
  HOSTNAME_MISMATCH: "name mismatch",
  CERT_REVOKED: "revoked",
  CERT_SIGNATURE_FAILURE: "invalid certificate",
  CERT_REJECTED: "invalid certificate",
  INVALID_CA: "invalid certificate",
  INVALID_PURPOSE: "invalid certificate",
  PATH_LENGTH_EXCEEDED: "invalid certificate",
  UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY: "invalid certificate",
  ERR_TLS_CERT_SIGNATURE_ALGORITHM_UNSUPPORTED: "invalid certificate",
};

const HINTS: Record<TlsFailureReason, string> = {
  "unknown authority": "the certificate is not signed by a trusted CA; pass --ca-file with the private CA",
  expired: "the server's certificate has expired; renew it",
  "not yet valid": "the server's certificate is not valid yet; check the clocks",
  "name mismatch": "the certificate does not name this host; use the name it was issued for",
  revoked: "the server's certificate was revoked",
  "invalid certificate": "the server's certificate chain is invalid",
};

/** The server's certificate failed verification. Match on `code`; `reason` and `tlsCode` say why. */
export class TlsVerificationError extends RevdialError {
  /** host:port that was dialed. */
  readonly host: string;
  readonly reason: TlsFailureReason;
  /** Node's / OpenSSL's code, e.g. UNABLE_TO_VERIFY_LEAF_SIGNATURE. */
  readonly tlsCode: string;

  constructor(host: string, reason: TlsFailureReason, tlsCode: string, options?: { cause?: unknown }) {
    super(
      "RD_ERR_TLS_VERIFY",
      `TLS verification of ${host} failed: ${reason} (${tlsCode}): ${HINTS[reason]}`,
      options,
    );
    this.host = host;
    this.reason = reason;
    this.tlsCode = tlsCode;
  }
}

/**
 * The TlsVerificationError that `err` (or its cause chain, as fetch wraps it) stands for, or null
 * when it is some other failure. `host` is host:port as dialed.
 */
export function classifyTlsError(err: unknown, host: string): TlsVerificationError | null {
  for (let e = err, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if (e instanceof TlsVerificationError) return e;
    const code = (e as { code?: unknown }).code;
    if (typeof code !== "string") continue;
    const reason = REASONS[code];
    if (reason) return new TlsVerificationError(host, reason, code, { cause: e });
  }
  return null;
}

/** host:port of a URL, with the scheme's default port filled in. */
export function hostOf(url: URL): string {
  const secure = url.protocol === "https:" || url.protocol === "wss:";
  return `${url.hostname}:${url.port || (secure ? 443 : 80)}`;
}
