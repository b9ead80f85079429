// A small client of the Docker Engine API (v1.41), over its socket with plain HTTP: what the docker
// driver and `revdial image build` need of Docker or of podman's compatible service
// (`podman system service`). Every call has a deadline; an engine that answers with an error is a
// DockerEngineError carrying its status and the engine's own message.
//
// Endpoints: unix:///path/to.sock (DOCKER_HOST's usual form), tcp://host:port or http://host:port.

import http from "node:http";
import type { Readable } from "node:stream";
import { InvalidOptionError } from "../common/errors.ts";

export const DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock";
const API = "/v1.41";

export class DockerEngineError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.name = "DockerEngineError";
    this.status = status;
  }
}

export interface EngineVersion {
  /** "Docker Engine - Community", "Podman Engine", … */
  name: string;
  version: string;
  apiVersion: string;
}

export interface ContainerSummary {
  Id: string;
  Names: string[];
  Image: string;
  State: string;
  Labels: Record<string, string> | null;
  /** Unix seconds. */
  Created?: number;
}

export interface ContainerInspect {
  Id: string;
  Name: string;
  State: { Status: string; Running: boolean; ExitCode: number; Pid: number; OOMKilled?: boolean };
  Config: { Labels: Record<string, string> | null; Image: string };
}

export interface ImageInspect {
  Id: string;
  Size: number;
  Config?: { Labels?: Record<string, string> | null };
  RepoTags?: string[];
}

/** The engine's build/import progress: one JSON object per line. */
export interface ProgressEvent {
  stream?: string;
  status?: string;
  error?: string;
  aux?: { ID?: string };
}

interface CallOptions {
  method?: string;
  query?: Record<string, string | number | boolean | undefined>;
  body?: unknown;
  /** A stream body (tar), sent as is with `contentType`. */
  stream?: Readable;
  contentType?: string;
  timeoutMs?: number;
}

export function endpointOptions(endpoint: string): http.RequestOptions {
  if (endpoint.startsWith("unix://")) return { socketPath: endpoint.slice("unix://".length) };
  if (/^(tcp|http):\/\//.test(endpoint)) {
    const url = new URL(endpoint.replace(/^tcp:/, "http:"));
    return { host: url.hostname, port: Number(url.port || 2375) };
  }
  throw new InvalidOptionError("dockerHost", `expected unix:///path or tcp://host:port, got "${endpoint}"`);
}

export class DockerEngine {
  readonly endpoint: string;
  readonly #target: http.RequestOptions;
  readonly #timeoutMs: number;

  constructor(endpoint = process.env.DOCKER_HOST || DEFAULT_DOCKER_HOST, timeoutMs = 30_000) {
    this.endpoint = endpoint;
    this.#target = endpointOptions(endpoint);
    this.#timeoutMs = timeoutMs;
  }

  /** Sends one request; resolves with the status and the response (unread). */
  #send(path: string, o: CallOptions): Promise<http.IncomingMessage> {
    const query = Object.entries(o.query ?? {})
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
      .join("&");
    const headers: Record<string, string> = {};
    let payload: Buffer | null = null;
    if (o.body !== undefined) {
      payload = Buffer.from(JSON.stringify(o.body));
      headers["content-type"] = "application/json";
      headers["content-length"] = String(payload.length);
    } else if (o.stream) headers["content-type"] = o.contentType ?? "application/x-tar";
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          ...this.#target,
          method: o.method ?? "GET",
          path: `${path.startsWith("/_") ? "" : API}${path}${query ? `?${query}` : ""}`,
          headers,
          timeout: o.timeoutMs ?? this.#timeoutMs,
        },
        resolve,
      );
      req.once("timeout", () =>
        req.destroy(new Error(`no answer from the engine in ${o.timeoutMs ?? this.#timeoutMs} ms`)),
      );
      req.once("error", reject);
      if (o.stream) {
        o.stream.once("error", (err) => req.destroy(err));
        o.stream.pipe(req);
      } else req.end(payload ?? undefined);
    });
  }

  /** A JSON call: the parsed answer, or DockerEngineError with the engine's message. */
  async call<T>(path: string, o: CallOptions = {}): Promise<T> {
    const res = await this.#send(path, o);
    const text = await readAll(res);
    const status = res.statusCode ?? 0;
    if (status >= 400)
      throw new DockerEngineError(status, `${o.method ?? "GET"} ${path}: ${engineMessage(status, text)}`);
    if (!text) return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch {
      return text as T;
    }
  }

  /** A streaming call (build, import): each progress event to `onEvent`; rejects on an error event. */
  async progress(
    path: string,
    o: CallOptions,
    onEvent: (e: ProgressEvent) => void,
  ): Promise<ProgressEvent[]> {
    const res = await this.#send(path, o);
    const status = res.statusCode ?? 0;
    if (status >= 400) {
      const text = await readAll(res);
      throw new DockerEngineError(status, `${o.method ?? "POST"} ${path}: ${engineMessage(status, text)}`);
    }
    const events: ProgressEvent[] = [];
    let rest = "";
    for await (const chunk of res) {
      rest += chunk.toString();
      let nl = rest.indexOf("\n");
      for (; nl >= 0; nl = rest.indexOf("\n")) {
        const line = rest.slice(0, nl).trim();
        rest = rest.slice(nl + 1);
        if (!line) continue;
        let event: ProgressEvent;
        try {
          event = JSON.parse(line) as ProgressEvent;
        } catch {
          event = { stream: `${line}\n` };
        }
        events.push(event);
        onEvent(event);
      }
    }
    if (rest.trim()) {
      try {
        const event = JSON.parse(rest) as ProgressEvent;
        events.push(event);
        onEvent(event);
      } catch {}
    }
    const failed = events.find((e) => e.error);
    if (failed) throw new DockerEngineError(500, String(failed.error).trim());
    return events;
  }

  async ping(timeoutMs = 3_000): Promise<void> {
    await this.call<string>("/_ping", { timeoutMs });
  }

  async version(): Promise<EngineVersion> {
    const v = await this.call<{
      Version: string;
      ApiVersion: string;
      Components?: { Name: string; Version: string }[];
    }>("/version");
    const name = v.Components?.[0]?.Name ?? "Docker Engine";
    return { name, version: v.Version, apiVersion: v.ApiVersion };
  }

  /** The image, or null when the engine has none of that name. */
  async image(name: string): Promise<ImageInspect | null> {
    try {
      return await this.call<ImageInspect>(`/images/${encodeURIComponent(name)}/json`);
    } catch (err) {
      if (err instanceof DockerEngineError && err.status === 404) return null;
      throw err;
    }
  }

  /** Removes an image; without `force`, the engine refuses while a container uses it. */
  async removeImage(name: string, force = false): Promise<void> {
    await this.call(`/images/${encodeURIComponent(name)}`, { method: "DELETE", query: { force } });
  }

  /**
   * Imports a root filesystem tarball (POST /images/create?fromSrc=-) and tags it `repo:tag`
   * (a tag of its own call: podman's import names the image after `repo` alone). Returns its id.
   */
  async importImage(tar: Readable, repo: string, tag: string, onEvent: (e: ProgressEvent) => void) {
    const events = await this.progress(
      "/images/create",
      { method: "POST", query: { fromSrc: "-", repo, tag }, stream: tar, timeoutMs: 600_000 },
      onEvent,
    );
    const id = [...events].reverse().find((e) => e.status?.startsWith("sha256:") || e.aux?.ID);
    const imageId = id?.aux?.ID ?? id?.status;
    if (!imageId) throw new DockerEngineError(500, "the engine's import answered no image id");
    await this.tagImage(imageId, repo, tag);
    return imageId;
  }

  async tagImage(image: string, repo: string, tag: string): Promise<void> {
    await this.call(`/images/${encodeURIComponent(image)}/tag`, { method: "POST", query: { repo, tag } });
  }

  /** Builds a tar build context (POST /build); progress events to onEvent. */
  build(
    context: Readable,
    o: {
      tag: string;
      dockerfile?: string;
      buildArgs?: Record<string, string>;
      labels?: Record<string, string>;
    },
    onEvent: (e: ProgressEvent) => void,
  ) {
    return this.progress(
      "/build",
      {
        method: "POST",
        query: {
          t: o.tag,
          dockerfile: o.dockerfile ?? "Containerfile",
          buildargs: o.buildArgs ? JSON.stringify(o.buildArgs) : undefined,
          labels: o.labels ? JSON.stringify(o.labels) : undefined,
          rm: true,
          forcerm: true,
        },
        stream: context,
        timeoutMs: 1_800_000,
      },
      onEvent,
    );
  }

  listContainers(labels: Record<string, string>, all = true): Promise<ContainerSummary[]> {
    const label = Object.entries(labels).map(([k, v]) => `${k}=${v}`);
    return this.call<ContainerSummary[]>("/containers/json", {
      query: { all, filters: JSON.stringify({ label }) },
    });
  }

  async createContainer(name: string, spec: Record<string, unknown>): Promise<string> {
    const made = await this.call<{ Id: string }>("/containers/create", {
      method: "POST",
      query: { name },
      body: spec,
    });
    return made.Id;
  }

  async startContainer(id: string): Promise<void> {
    await this.call(`/containers/${id}/start`, { method: "POST" });
  }

  inspectContainer(id: string): Promise<ContainerInspect> {
    return this.call<ContainerInspect>(`/containers/${id}/json`);
  }

  /** SIGTERM to its init, SIGKILL after `seconds`; resolves once it is stopped (or was). */
  async stopContainer(id: string, seconds: number): Promise<void> {
    try {
      await this.call(`/containers/${id}/stop`, {
        method: "POST",
        query: { t: seconds },
        timeoutMs: (seconds + 30) * 1000,
      });
    } catch (err) {
      if (!(err instanceof DockerEngineError && (err.status === 304 || err.status === 404))) throw err;
    }
  }

  async killContainer(id: string, signal = "SIGKILL"): Promise<void> {
    await this.call(`/containers/${id}/kill`, { method: "POST", query: { signal } });
  }

  /** Removes the container and its anonymous volumes, running or not; a missing one is not an error. */
  async removeContainer(id: string): Promise<void> {
    try {
      await this.call(`/containers/${id}`, {
        method: "DELETE",
        query: { force: true, v: true },
        timeoutMs: 60_000,
      });
    } catch (err) {
      if (!(err instanceof DockerEngineError && err.status === 404)) throw err;
    }
  }

  /** Resolves with the exit code once the container is no longer running (long poll). */
  async waitContainer(id: string, signal?: AbortSignal): Promise<number> {
    const res = await this.#send(`/containers/${id}/wait`, {
      method: "POST",
      query: { condition: "not-running" },
      timeoutMs: 0,
    });
    const onAbort = () => res.destroy();
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      const text = await readAll(res);
      if ((res.statusCode ?? 0) >= 400)
        throw new DockerEngineError(
          res.statusCode ?? 0,
          `wait ${id}: ${engineMessage(res.statusCode ?? 0, text)}`,
        );
      return Number((JSON.parse(text) as { StatusCode: number }).StatusCode);
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }

  /**
   * Runs `cmd` in the container (as `user`, default its own) and returns its exit code and output
   * (stdout and stderr demultiplexed), bounded by `timeoutMs`.
   */
  async exec(
    id: string,
    cmd: string[],
    o: { user?: string; timeoutMs?: number } = {},
  ): Promise<{ code: number; stdout: string; stderr: string }> {
    const made = await this.call<{ Id: string }>(`/containers/${id}/exec`, {
      method: "POST",
      body: {
        Cmd: cmd,
        AttachStdout: true,
        AttachStderr: true,
        Tty: false,
        ...(o.user ? { User: o.user } : {}),
      },
    });
    const res = await this.#send(`/exec/${made.Id}/start`, {
      method: "POST",
      body: { Detach: false, Tty: false },
      timeoutMs: o.timeoutMs ?? 60_000,
    });
    const raw = Buffer.from(await readAll(res, true), "latin1");
    if ((res.statusCode ?? 0) >= 400)
      throw new DockerEngineError(
        res.statusCode ?? 0,
        `exec: ${engineMessage(res.statusCode ?? 0, raw.toString())}`,
      );
    const out = demux(raw);
    const inspected = await this.call<{ ExitCode: number | null; Running: boolean }>(`/exec/${made.Id}/json`);
    return { code: inspected.ExitCode ?? -1, ...out };
  }

  /** The last `tail` lines the container wrote (all with tail "all"), stdout and stderr together unless asked. */
  async logs(
    id: string,
    tail: number | "all" = 20,
    streams = { stdout: true, stderr: true },
  ): Promise<string> {
    const res = await this.#send(`/containers/${id}/logs`, { query: { ...streams, tail } });
    const raw = Buffer.from(await readAll(res, true), "latin1");
    if ((res.statusCode ?? 0) >= 400)
      throw new DockerEngineError(
        res.statusCode ?? 0,
        `logs: ${engineMessage(res.statusCode ?? 0, raw.toString())}`,
      );
    const out = demux(raw);
    return out.stdout + out.stderr;
  }

  /** The container's memory use in bytes (cgroup, from one stats sample). */
  async memoryUsage(id: string): Promise<number> {
    const s = await this.call<{ memory_stats?: { usage?: number; stats?: Record<string, number> } }>(
      `/containers/${id}/stats`,
      { query: { stream: false } },
    );
    const usage = s.memory_stats?.usage ?? 0;
    const cache = s.memory_stats?.stats?.inactive_file ?? s.memory_stats?.stats?.cache ?? 0;
    return Math.max(0, usage - cache);
  }
}

/** The engine's multiplexed stream (8-byte frame headers: kind, 0, 0, 0, size) to stdout and stderr. */
function demux(raw: Buffer): { stdout: string; stderr: string } {
  const out = { stdout: [] as Buffer[], stderr: [] as Buffer[] };
  // A stream without frames (a TTY, or an engine that does not multiplex) is stdout as is.
  if (raw.length > 0 && ![0, 1, 2].includes(raw[0])) return { stdout: raw.toString(), stderr: "" };
  for (let at = 0; at + 8 <= raw.length; ) {
    const size = raw.readUInt32BE(at + 4);
    (raw[at] === 2 ? out.stderr : out.stdout).push(raw.subarray(at + 8, at + 8 + size));
    at += 8 + size;
  }
  return { stdout: Buffer.concat(out.stdout).toString(), stderr: Buffer.concat(out.stderr).toString() };
}

function readAll(res: http.IncomingMessage, binary = false): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    res.on("data", (c: Buffer) => chunks.push(c));
    res.once("end", () => resolve(Buffer.concat(chunks).toString(binary ? "latin1" : "utf8")));
    res.once("error", reject);
    res.once("close", () => resolve(Buffer.concat(chunks).toString(binary ? "latin1" : "utf8")));
  });
}

function engineMessage(status: number, text: string): string {
  try {
    const parsed = JSON.parse(text) as { message?: string; cause?: string };
    if (parsed.message) return `${status} ${parsed.message}`;
  } catch {}
  return `${status} ${text.trim().slice(0, 500) || http.STATUS_CODES[status] || ""}`;
}
