// A real cluster for the replica tests: N `revdial server --replica-id` processes on one throwaway
// Postgres database (its own, dropped afterwards, so runs never collide), behind a real nginx
// running the block of docs/replicas.md with only its addresses replaced. Replicas can be killed
// (-9), stopped (SIGTERM) and started again on the same ports and data dirs.

import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import type { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { MAIN } from "../e2e/cli-harness.ts";
import { freePort, NGINX, type ProxyProcess, replaceOnce, startNginx } from "../e2e/proxy-process.ts";

export const POSTGRES_ADMIN_URL =
  process.env.REVDIAL_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";
const DOC = fileURLToPath(new URL("../../docs/replicas.md", import.meta.url));

/** Why these tests cannot run here, or null. */
export async function clusterUnavailable(): Promise<string | null> {
  if (!NGINX) return "SKIPPED: nginx is not installed (/usr/sbin/nginx)";
  const client = new pg.Client({ connectionString: POSTGRES_ADMIN_URL, connectionTimeoutMillis: 2000 });
  try {
    await client.connect();
    return null;
  } catch (err) {
    return `SKIPPED: no Postgres server answers at ${POSTGRES_ADMIN_URL} (${(err as Error).message})`;
  } finally {
    await client.end().catch(() => {});
  }
}

export interface Replica {
  id: string;
  port: number;
  peerPort: number;
  url: string;
  child: ChildProcess | null;
  /** Everything the process wrote to stderr (its log). */
  log: string;
}

/** The nginx block of docs/replicas.md (its text `doc`) pointed at these replicas and this port. */
export function nginxSite(text: string, ports: number[], listen: number): string {
  const match = /```nginx\n([\s\S]*?)```/.exec(text);
  if (!match) throw new Error(`no nginx block in ${DOC}`);
  let site = match[1];
  const servers = site.match(/^\s*server 127\.0\.0\.1:\d+ .*;$/gm) ?? [];
  if (servers.length !== ports.length)
    throw new Error(`expected ${ports.length} upstream servers in the doc`);
  servers.forEach((line, i) => {
    site = site.replace(line, line.replace(/127\.0\.0\.1:\d+/, `127.0.0.1:${ports[i]}`));
  });
  return replaceOnce(site, /^(\s*)listen 8080;/, `$1listen 127.0.0.1:${listen};`);
}

/** The HAProxy block of docs/replicas.md (its text `doc`) pointed at these replicas and this port. */
export function haproxyConfig(text: string, ports: number[], listen: number): string {
  const match = /```haproxy\n([\s\S]*?)```/.exec(text);
  if (!match) throw new Error(`no haproxy block in ${DOC}`);
  let conf = match[1];
  const servers = conf.match(/^\s*server api-\d+ 127\.0\.0\.1:\d+ .*$/gm) ?? [];
  if (servers.length !== ports.length)
    throw new Error(`expected ${ports.length} servers in the haproxy block`);
  servers.forEach((line, i) => {
    conf = conf.replace(line, line.replace(/127\.0\.0\.1:\d+/, `127.0.0.1:${ports[i]}`));
  });
  return replaceOnce(conf, /^(\s*)bind :8080$/, `$1bind 127.0.0.1:${listen}`);
}

export { DOC as REPLICAS_DOC };

export interface ClusterOptions {
  /** False: no nginx in front (tests that call the replicas directly). */
  loadBalancer?: boolean;
  /** The replicas serve HTTPS with this pair, and advertise https:// peer endpoints (TLS peer links). */
  https?: { certFile: string; keyFile: string };
}

export class Cluster {
  readonly replicas: Replica[] = [];
  dir = "";
  database = "";
  databaseUrl = "";
  adminKey = "";
  lb: ProxyProcess | null = null;
  readonly #extraArgs: string[];
  readonly #lbConnections: number;
  readonly #options: ClusterOptions;

  /** `extraArgs` go to every replica; `lbConnections` is nginx's worker_connections. */
  constructor(extraArgs: string[] = [], lbConnections = 1024, options: ClusterOptions = {}) {
    this.#extraArgs = extraArgs;
    this.#lbConnections = lbConnections;
    this.#options = options;
  }

  get lbUrl(): string {
    if (!this.lb) throw new Error("this cluster has no load balancer");
    return `http://127.0.0.1:${this.lb.port}`;
  }

  async start(n: number): Promise<this> {
    this.dir = await mkdtemp(join(tmpdir(), "revdial-replicas-"));
    this.database = `revdial_rep_${process.pid}_${Math.random().toString(36).slice(2, 8)}`;
    const admin = new pg.Client({ connectionString: POSTGRES_ADMIN_URL });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${this.database}`);
    await admin.end();
    const u = new URL(POSTGRES_ADMIN_URL);
    u.pathname = `/${this.database}`;
    this.databaseUrl = u.toString();
    await writeFile(join(this.dir, "peer.secret"), "correct-horse-battery-staple-peer\n", { mode: 0o600 });
    for (let i = 0; i < n; i++) {
      this.replicas.push({
        id: `r${i + 1}`,
        port: await freePort(),
        peerPort: await freePort(),
        url: "",
        child: null,
        log: "",
      });
    }
    // The load balancer first: its URL is the replicas' public URL (what sandboxes dial).
    const nginxDir = join(this.dir, "nginx");
    await mkdir(nginxDir, { recursive: true, mode: 0o700 });
    const ports = this.replicas.map((r) => r.port);
    const doc = await readFile(DOC, "utf8");
    if (this.#options.loadBalancer !== false)
      this.lb = await startNginx(nginxDir, (port) => nginxSite(doc, ports, port), {
        workerConnections: this.#lbConnections,
      });
    // The first replica creates the schema and the admin key; the others start in parallel.
    await this.startReplica(this.replicas[0]);
    await Promise.all(this.replicas.slice(1).map((r) => this.startReplica(r)));
    return this;
  }

  async startReplica(r: Replica): Promise<void> {
    const scheme = this.#options.https ? "https" : "http";
    const publicUrl = this.lb ? this.lbUrl : `${scheme}://127.0.0.1:${this.replicas[0].port}`;
    const child = spawn(
      process.execPath,
      [
        MAIN,
        "server",
        "--listen",
        `127.0.0.1:${r.port}`,
        "--data-dir",
        join(this.dir, `data-${r.id}`),
        "--replica-id",
        r.id,
        "--advertise",
        `${scheme}://127.0.0.1:${r.peerPort}`,
        "--peer-secret-file",
        join(this.dir, "peer.secret"),
        "--public-url",
        publicUrl,
        "--grace-period",
        "15s",
        "--drain-timeout",
        "5s",
        ...(this.#options.https
          ? ["--tls-cert", this.#options.https.certFile, "--tls-key", this.#options.https.keyFile]
          : []),
        ...this.#extraArgs,
      ],
      {
        env: {
          ...process.env,
          DATABASE_URL: this.databaseUrl,
          REVDIAL_LOG_LEVEL: process.env.REPLICA_LOG ?? "warn",
        },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    r.child = child;
    r.log = "";
    child.stderr?.on("data", (c: Buffer) => {
      r.log += c;
      if (process.env.REPLICA_LOG) process.stderr.write(`[${r.id}] ${c}`);
    });
    const lines = createInterface({ input: child.stdout as Readable });
    const exited = once(child, "exit").then(() => {
      throw new Error(`replica ${r.id} exited before listening:\n${r.log}`);
    });
    const ready = (async () => {
      for await (const line of lines) {
        const key = /^admin API key \(.*\): (\S+)$/.exec(line)?.[1];
        if (key) this.adminKey = key;
        const url = /^listening on (\S+)/.exec(line)?.[1];
        if (url) {
          r.url = url;
          return;
        }
      }
    })();
    await Promise.race([ready, exited]);
    exited.catch(() => {});
  }

  /** kill -9, or SIGTERM (then waits for the exit). */
  async stopReplica(r: Replica, signal: NodeJS.Signals = "SIGTERM"): Promise<number | null> {
    const child = r.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return child?.exitCode ?? null;
    const exited = once(child, "exit");
    child.kill(signal);
    const [code] = (await exited) as [number | null];
    r.child = null;
    return code;
  }

  /** A call to one replica (or the load balancer) with the admin key. */
  async call(
    base: string,
    method: string,
    path: string,
    body?: unknown,
    key = this.adminKey,
  ): Promise<{ status: number; replica: string | null; body: unknown; bytes: Buffer }> {
    const res = await fetch(base + path, {
      method,
      headers: {
        authorization: `Bearer ${key}`,
        ...(body !== undefined ? { "content-type": "application/json" } : {}),
      },
      body: body !== undefined ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(30_000),
    });
    const bytes = Buffer.from(await res.arrayBuffer());
    let parsed: unknown = null;
    try {
      parsed = JSON.parse(bytes.toString("utf8"));
    } catch {}
    return { status: res.status, replica: res.headers.get("revdial-replica"), body: parsed, bytes };
  }

  async metric(r: Replica, name: string): Promise<number> {
    const text = await (await fetch(`${r.url}/metrics`)).text();
    let total = 0;
    for (const line of text.split("\n"))
      if (line.startsWith(name) && !line.startsWith("#")) total += Number(line.split(" ").pop());
    return total;
  }

  async close(): Promise<void> {
    await Promise.all(this.replicas.map((r) => this.stopReplica(r, "SIGKILL")));
    await this.lb?.stop();
    const admin = new pg.Client({ connectionString: POSTGRES_ADMIN_URL });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${this.database} WITH (FORCE)`);
    await admin.end();
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** Polls `check` until it holds, or throws after `timeoutMs`. */
export async function until(
  check: () => Promise<boolean> | boolean,
  what: string,
  timeoutMs = 15_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (
    let wait = 20;
    !(await Promise.resolve()
      .then(check)
      .catch(() => false));
    wait = Math.min(wait * 2, 250)
  ) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, wait));
  }
}
