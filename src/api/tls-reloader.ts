// Loads the server's certificate and key, and swaps them into the running listener on demand
// (SIGHUP in `revdial server`), so a renewed certificate takes effect without a restart.
//
// Why a swap and not a restart: tunnels are long-lived WebSockets; restarting the listener would
// drop every one of them. `setSecureContext` changes what NEW handshakes see; live connections keep
// the session they negotiated. A pair that does not load (unreadable, not PEM, key not matching the
// certificate, already expired) is refused and the old pair stays in force, with the reason logged.

import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFile } from "node:fs/promises";
import tls from "node:tls";
import { InvalidOptionError, RevdialError } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";

export interface TlsPair {
  cert: Buffer;
  key: Buffer;
}

export interface TlsPairInfo {
  subject: string;
  serialNumber: string;
  fingerprint256: string;
  validTo: string;
}

/** The files named by --tls-cert / --tls-key could not be used. */
export class TlsPairError extends RevdialError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("RD_ERR_TLS_PAIR", message, options);
  }
}

/** Reads and checks a certificate/key pair; throws TlsPairError saying what is wrong with which file. */
export async function loadTlsPair(
  certFile: string,
  keyFile: string,
  now = Date.now(),
): Promise<TlsPair & { info: TlsPairInfo }> {
  const cert = await readFile(certFile).catch((err: Error) => {
    throw new TlsPairError(`cannot read the certificate ${certFile}: ${err.message}`, { cause: err });
  });
  const key = await readFile(keyFile).catch((err: Error) => {
    throw new TlsPairError(`cannot read the key ${keyFile}: ${err.message}`, { cause: err });
  });
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (err) {
    throw new TlsPairError(`${certFile} is not a PEM certificate`, { cause: err });
  }
  let matches: boolean;
  try {
    matches = x509.checkPrivateKey(createPrivateKey(key));
  } catch (err) {
    throw new TlsPairError(`${keyFile} is not a PEM private key`, { cause: err });
  }
  if (!matches) throw new TlsPairError(`${keyFile} is not the key of the certificate ${certFile}`);
  if (Date.parse(x509.validTo) <= now)
    throw new TlsPairError(`the certificate ${certFile} expired on ${x509.validTo}`);
  try {
    tls.createSecureContext({ cert, key });
  } catch (err) {
    throw new TlsPairError(`the pair ${certFile} / ${keyFile} is unusable: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const info = {
    subject: x509.subject.replace(/\n/g, ", "),
    serialNumber: x509.serialNumber,
    fingerprint256: x509.fingerprint256,
    validTo: x509.validTo,
  };
  return { cert, key, info };
}

/** The listener whose certificate is swapped: an https.Server or tls.Server. */
export interface SecureContextTarget {
  setSecureContext(options: tls.SecureContextOptions): void;
}

export interface TlsReloaderOptions {
  server: SecureContextTarget;
  certFile: string;
  keyFile: string;
  logger: Logger;
  /** The clock for the expiry check. Default Date.now. */
  now?: () => number;
}

export type ReloadResult = { ok: true; info: TlsPairInfo } | { ok: false; error: TlsPairError };

/**
 * Reloads the pair from its files. Reloads are serialized: a second signal while one is reading
 * waits for it, so the last pair written is the one in force.
 */
export class TlsReloader {
  readonly #o: Required<TlsReloaderOptions>;
  #last: Promise<ReloadResult> = Promise.resolve({ ok: false, error: new TlsPairError("not loaded") });

  constructor(options: TlsReloaderOptions) {
    if (typeof options.server?.setSecureContext !== "function")
      throw new InvalidOptionError("server", "must be a TLS server (setSecureContext)");
    if (!options.certFile) throw new InvalidOptionError("certFile", "required");
    if (!options.keyFile) throw new InvalidOptionError("keyFile", "required");
    this.#o = { now: Date.now, ...options };
  }

  /** Loads the files and swaps them in; on any problem keeps the pair in force. Never throws. */
  reload(): Promise<ReloadResult> {
    this.#last = this.#last.then(() => this.#reloadOnce());
    return this.#last;
  }

  async #reloadOnce(): Promise<ReloadResult> {
    const { certFile, keyFile, logger } = this.#o;
    try {
      const pair = await loadTlsPair(certFile, keyFile, this.#o.now());
      this.#o.server.setSecureContext({ cert: pair.cert, key: pair.key });
      logger.info({ cert_file: certFile, ...pair.info }, "TLS certificate reloaded");
      return { ok: true, info: pair.info };
    } catch (err) {
      const error =
        err instanceof TlsPairError ? err : new TlsPairError((err as Error).message, { cause: err });
      logger.error(
        { cert_file: certFile, err: error.message },
        "TLS reload refused; keeping the old certificate",
      );
      return { ok: false, error };
    }
  }
}
