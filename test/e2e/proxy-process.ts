// Real reverse proxies for the reverse-proxy tests, from Debian's packages, as child processes in the
// foreground: nginx (`daemon off`, its prefix, pid, logs and temp dirs in a temp dir) and HAProxy
// (`-db`). Each listens on a free 127.0.0.1 port, with the configuration block taken from
// docs/reverse-proxy.md and only its addresses and certificate paths replaced.

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import net, { type AddressInfo } from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const sbin = (name: string) => [`/usr/sbin/${name}`, `/usr/bin/${name}`].find((p) => existsSync(p)) ?? null;
export const NGINX = sbin("nginx");
export const HAPROXY = sbin("haproxy");

const DOC = fileURLToPath(new URL("../../docs/reverse-proxy.md", import.meta.url));

/** The first fenced block of `lang` (nginx, haproxy) in docs/reverse-proxy.md, as written there. */
export async function documentedBlock(lang: "nginx" | "haproxy"): Promise<string> {
  const text = await readFile(DOC, "utf8");
  const match = new RegExp(`\`\`\`${lang}\n([\\s\\S]*?)\`\`\``).exec(text);
  if (!match) throw new Error(`no ${lang} block in ${DOC}`);
  return match[1];
}

/** Replaces `pattern` exactly once, so a changed document fails here instead of testing less. */
export function replaceOnce(text: string, pattern: RegExp, replacement: string): string {
  const hits = text.match(new RegExp(pattern.source, "gm"))?.length ?? 0;
  if (hits !== 1) throw new Error(`expected one ${pattern} in the documented block, found ${hits}`);
  return text.replace(new RegExp(pattern.source, "m"), replacement);
}

/** The documented block pointed at this test's API, port and certificate. */
export function siteFor(
  block: string,
  o: { port: number; apiPort: number; certFile: string; keyFile: string },
): string {
  let site = replaceOnce(block, /^(\s*)listen 443 ssl;/, `$1listen 127.0.0.1:${o.port} ssl;`);
  site = replaceOnce(site, /^(\s*)ssl_certificate\s+\S+;/, `$1ssl_certificate ${o.certFile};`);
  site = replaceOnce(site, /^(\s*)ssl_certificate_key\s+\S+;/, `$1ssl_certificate_key ${o.keyFile};`);
  return replaceOnce(
    site,
    /^(\s*)proxy_pass http:\/\/127\.0\.0\.1:8080;/,
    `$1proxy_pass http://127.0.0.1:${o.apiPort};`,
  );
}

/** The misconfiguration: the documented block without its Upgrade and Connection headers. */
export function withoutUpgradeHeaders(block: string): string {
  const lines = block.split("\n");
  const kept = lines.filter((l) => !/^\s*proxy_set_header (Upgrade|Connection)\s/.test(l));
  if (lines.length - kept.length !== 2) throw new Error("the documented block lost its Upgrade lines");
  return kept.join("\n");
}

export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

export interface ProxyProcess {
  port: number;
  child: ChildProcess;
  /** nginx's error log, or HAProxy's output. */
  errorLog(): Promise<string>;
  stop(): Promise<void>;
}

/**
 * Starts nginx with `site(port)` in its `http` context; resolves once the port accepts connections.
 * `dir` must exist and be private to this nginx.
 */
export async function startNginx(
  dir: string,
  site: (port: number) => string,
  options: { workerConnections?: number } = {},
): Promise<ProxyProcess> {
  if (!NGINX) throw new Error("nginx is not installed");
  const port = await freePort();
  for (const d of ["body", "proxy", "fastcgi", "uwsgi", "scgi"]) await mkdir(join(dir, d));
  // As root, the workers would switch to `nobody`, who cannot enter the 0700 temp dir.
  const user = process.getuid?.() === 0 ? "user root root;\n" : "";
  const conf = join(dir, "nginx.conf");
  await writeFile(
    conf,
    `${user}worker_processes 1;
worker_rlimit_nofile ${2 * (options.workerConnections ?? 1024) + 64};
pid ${join(dir, "nginx.pid")};
error_log ${join(dir, "error.log")} info;
events { worker_connections ${options.workerConnections ?? 1024}; }
http {
  access_log ${join(dir, "access.log")};
  client_body_temp_path ${join(dir, "body")};
  proxy_temp_path ${join(dir, "proxy")};
  fastcgi_temp_path ${join(dir, "fastcgi")};
  uwsgi_temp_path ${join(dir, "uwsgi")};
  scgi_temp_path ${join(dir, "scgi")};
${site(port)}
}
`,
  );
  const child = spawn(NGINX, ["-p", dir, "-e", join(dir, "error.log"), "-c", conf, "-g", "daemon off;"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr?.on("data", (c: Buffer) => {
    stderr += c;
  });
  const exited = new Promise<void>((resolve) => child.once("close", () => resolve()));
  const errorLog = () => readFile(join(dir, "error.log"), "utf8").catch(() => "");
  try {
    await waitListening(port, child, 10_000);
  } catch (err) {
    child.kill("SIGKILL");
    await exited;
    throw new Error(`${(err as Error).message}\n${stderr}\n${await errorLog()}`);
  }
  return { port, child, errorLog, stop: () => stopChild(child, exited) };
}

/** The documented HAProxy block pointed at this test's API, port and certificate (cert+key PEM). */
export function haproxyFor(block: string, o: { port: number; apiPort: number; pemFile: string }): string {
  const conf = replaceOnce(
    block,
    /^(\s*)bind :443 ssl crt \S+/,
    `$1bind 127.0.0.1:${o.port} ssl crt ${o.pemFile}`,
  );
  return replaceOnce(conf, /^(\s*)server api1 127\.0\.0\.1:8080/, `$1server api1 127.0.0.1:${o.apiPort}`);
}

/** Starts HAProxy in the foreground with `config(port)`; resolves once the port accepts connections. */
export async function startHaproxy(dir: string, config: (port: number) => string): Promise<ProxyProcess> {
  if (!HAPROXY) throw new Error("haproxy is not installed");
  const port = await freePort();
  const conf = join(dir, "haproxy.cfg");
  await writeFile(conf, config(port));
  const child = spawn(HAPROXY, ["-db", "-f", conf], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout?.on("data", (c: Buffer) => {
    output += c;
  });
  child.stderr?.on("data", (c: Buffer) => {
    output += c;
  });
  const exited = new Promise<void>((resolve) => child.once("close", () => resolve()));
  try {
    await waitListening(port, child, 10_000);
  } catch (err) {
    child.kill("SIGKILL");
    await exited;
    throw new Error(`${(err as Error).message}\n${output}`);
  }
  return { port, child, errorLog: async () => output, stop: () => stopChild(child, exited) };
}

async function stopChild(child: ChildProcess, exited: Promise<void>): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
  await exited;
}

/** Connects until the port answers, nginx exits, or the deadline passes. */
async function waitListening(port: number, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`nginx exited with status ${child.exitCode}`);
    const up = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, "127.0.0.1");
      s.once("connect", () => {
        s.destroy();
        resolve(true);
      });
      s.once("error", () => resolve(false));
    });
    if (up) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`nginx did not listen on ${port} within ${timeoutMs} ms`);
}
