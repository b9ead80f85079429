// The CLI's client for the control-plane API: a thin fetch wrapper that finds the server
// (REVDIAL_URL, default http://127.0.0.1:8080) and the key (REVDIAL_API_KEY, else ./data/admin.key
// when present), sends JSON, and turns every failure into an ApiRequestError carrying the HTTP
// status and the server's code and message, which commands print as they are. HTTPS is verified
// against the default roots, plus REVDIAL_CA_FILE; REVDIAL_INSECURE=1 turns verification off. A
// certificate problem is reported as such (code RD_ERR_TLS_VERIFY), not as "cannot reach".

import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { RevdialError } from "../common/errors.ts";
import { type ClientTls, classifyTlsError, clientTls, hostOf } from "../common/tls.ts";
import { fetchWithTls } from "../common/tls-fetch.ts";
import { CliUsageError } from "./env.ts";
import { insecureFromEnv } from "./tls-options.ts";

export const DEFAULT_API_URL = "http://127.0.0.1:8080";
/** Deadline for one API call (default 60 s), so a hung server does not hang the CLI. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 60_000;

/** A failed API call. `status` is 0 when the server could not be reached at all. */
export class ApiRequestError extends RevdialError {
  readonly status: number;
  readonly serverMessage: string;
  readonly exitCode = 1;

  constructor(status: number, code: string, serverMessage: string, options?: { cause?: unknown }) {
    super(code, status ? `${serverMessage} (HTTP ${status})` : serverMessage, options);
    this.status = status;
    this.serverMessage = serverMessage;
  }
}

export interface ApiClientOptions {
  baseUrl: string;
  apiKey: string | null;
  timeoutMs?: number;
  /** Trust settings for https (a private CA, or verification off); default roots when unset. */
  tls?: ClientTls;
}

/** Where the CLI finds its server and key, from the environment and the working directory. */
export function clientOptionsFromEnv(
  env: NodeJS.ProcessEnv = process.env,
  cwd = process.cwd(),
): ApiClientOptions {
  const baseUrl = (env.REVDIAL_URL || DEFAULT_API_URL).replace(/\/+$/, "");
  return {
    baseUrl,
    apiKey: env.REVDIAL_API_KEY || adminKeyFromDisk(env, cwd),
    tls: tlsFromEnv(env),
  };
}

function tlsFromEnv(env: NodeJS.ProcessEnv): ClientTls | undefined {
  try {
    return clientTls({ caFile: env.REVDIAL_CA_FILE, insecure: insecureFromEnv(env.REVDIAL_INSECURE) });
  } catch (err) {
    throw new CliUsageError((err as Error).message);
  }
}

function adminKeyFromDisk(env: NodeJS.ProcessEnv, cwd: string): string | null {
  const dataDir = env.REVDIAL_DATA_DIR || join(cwd, "data");
  const path = join(dataDir, "admin.key");
  if (!existsSync(path)) return null;
  const key = readFileSync(path, "utf8").trim();
  return key || null;
}

/** An answer whose body the caller reads (binary downloads). */
export interface RawAnswer {
  status: number;
  headers: Headers;
  body: ReadableStream<Uint8Array> | null;
}

export class ApiClient {
  readonly baseUrl: string;
  readonly #apiKey: string | null;
  readonly #timeoutMs: number;
  readonly #tls: ClientTls | undefined;

  constructor(options: ApiClientOptions) {
    this.baseUrl = options.baseUrl;
    this.#apiKey = options.apiKey;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.#tls = options.tls;
  }

  get<T>(path: string): Promise<T> {
    return this.#json<T>("GET", path);
  }

  post<T>(path: string, body: unknown): Promise<T> {
    return this.#json<T>("POST", path, body);
  }

  delete<T>(path: string): Promise<T> {
    return this.#json<T>("DELETE", path);
  }

  /** A GET whose body is streamed to the caller; error statuses still throw ApiRequestError. */
  async raw(path: string, headers: Record<string, string> = {}): Promise<RawAnswer> {
    const res = await this.#fetch("GET", path, undefined, headers);
    if (!res.ok) throw await errorFrom(res);
    return { status: res.status, headers: res.headers, body: res.body };
  }

  async #json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.#fetch(method, path, body);
    if (!res.ok) throw await errorFrom(res);
    const text = await res.text();
    return (text ? JSON.parse(text) : undefined) as T;
  }

  async #fetch(
    method: string,
    path: string,
    body?: unknown,
    extra: Record<string, string> = {},
  ): Promise<Response> {
    const headers: Record<string, string> = { accept: "application/json", ...extra };
    if (this.#apiKey) headers.authorization = `Bearer ${this.#apiKey}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    const url = this.baseUrl + path;
    const init = {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(this.#timeoutMs),
    };
    try {
      if (this.#tls && url.startsWith("https:")) return await fetchWithTls(url, init, this.#tls);
      return await fetch(url, init);
    } catch (err) {
      const tlsError = classifyTlsError(err, hostOf(new URL(url)));
      if (tlsError) throw new ApiRequestError(0, tlsError.code, tlsError.message, { cause: tlsError });
      const reason = (err as { cause?: { message?: string } }).cause?.message ?? (err as Error).message;
      throw new ApiRequestError(0, "RD_ERR_CLI_UNREACHABLE", `cannot reach ${this.baseUrl}: ${reason}`, {
        cause: err,
      });
    }
  }
}

async function errorFrom(res: Response): Promise<ApiRequestError> {
  const text = await res.text().catch(() => "");
  try {
    const body = JSON.parse(text) as { error?: { code?: string; message?: string } };
    if (body.error?.message)
      return new ApiRequestError(res.status, body.error.code ?? "RD_ERR_API", body.error.message);
  } catch {
    // Not our error shape (a proxy in between, say): fall through to the status text.
  }
  return new ApiRequestError(
    res.status,
    "RD_ERR_API",
    text.trim().slice(0, 200) || res.statusText || "request failed",
  );
}

/** The client for this process's environment. */
export function createApiClient(): ApiClient {
  return new ApiClient(clientOptionsFromEnv());
}
