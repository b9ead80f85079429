// `revdial image build`: the docker driver's sandbox image, built through the engine's API from a
// local base, never a registry:
//   1. the base: an image the operator names (--from), else revdial-base:bookworm, made once with
//      `debootstrap --variant=minbase bookworm` (Debian's mirror) and imported through the engine's
//      import API; kept in the engine and reused by every later build;
//   2. the repo's Containerfile on it: the desktop layer (Xvfb, xclip, xterm; cached by the engine
//      across builds since it depends on the base alone), then Node 24 and the project's agent.
// The build context is laid out here, deterministically: `node` (the binary of node_modules/node)
// and `revdial/` (package.json, bin/, src/, and the production packages of package-lock.json). Its
// content hash is the image's label revdial.content-hash: an image whose label matches is up to
// date and not rebuilt, so a second build, with nothing changed, costs one hash of the files.

import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  copyFileSync,
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { type DockerEngine, DockerEngineError } from "./docker-engine.ts";

export const DEFAULT_IMAGE = "revdial-sandbox";
export const BASE_IMAGE = "revdial-base:bookworm";
export const CONTENT_HASH_LABEL = "revdial.content-hash";
const PROJECT_ROOT = dirname(dirname(dirname(fileURLToPath(import.meta.url))));
const DEBIAN_MIRROR = "http://deb.debian.org/debian";

export interface BuildImageOptions {
  engine: DockerEngine;
  /** Image name, `name` or `name:tag` (default revdial-sandbox, i.e. revdial-sandbox:latest). */
  tag?: string;
  /** A base image already in the engine (any Debian bookworm); default: revdial-base:bookworm, made when missing. */
  from?: string | null;
  /** Rebuild even when the image's content hash matches. */
  force?: boolean;
  /** Progress lines (without their newline). */
  progress?: (line: string) => void;
  /** The project to put in the image (default: this one). */
  projectRoot?: string;
}

export interface BuiltImage {
  tag: string;
  id: string;
  size: number;
  contentHash: string;
  /** False when the image was already up to date. */
  built: boolean;
  /** The base image used. */
  base: string;
}

/** `name` → `name:latest`; `name:tag` and `host:port/name:tag` as they are. */
export function fullTag(name: string): string {
  const last = name.slice(name.lastIndexOf("/") + 1);
  return last.includes(":") ? name : `${name}:latest`;
}

/** The files of the build context: [path in the context, path on disk], sorted. */
export function contextFiles(root = PROJECT_ROOT): [string, string][] {
  const out: [string, string][] = [["node", join(root, "node_modules", "node", "bin", "node")]];
  const add = (rel: string) => {
    const abs = join(root, rel);
    const st = lstatSync(abs);
    if (st.isDirectory()) {
      for (const entry of readdirSync(abs).sort()) add(join(rel, entry));
    } else out.push([join("revdial", rel), abs]);
  };
  add("package.json");
  add("bin");
  add("src");
  const lock = JSON.parse(readFileSync(join(root, "package-lock.json"), "utf8")) as {
    packages: Record<string, { dev?: boolean; devOptional?: boolean }>;
  };
  for (const [path, pkg] of Object.entries(lock.packages).sort(([a], [b]) => (a < b ? -1 : 1))) {
    if (!path || pkg.dev || path === "node_modules/node") continue;
    // Nested packages are inside their parent's directory; optional ones of other platforms are absent.
    if (!existsSync(join(root, path))) continue;
    const parent = Object.keys(lock.packages).find((p) => p && p !== path && path.startsWith(`${p}/`));
    if (parent && !lock.packages[parent]?.dev) continue;
    add(path);
  }
  const seen = new Set<string>();
  return out.filter(([rel]) => !seen.has(rel) && seen.add(rel)).sort(([a], [b]) => (a < b ? -1 : 1));
}

/** sha256 over the Containerfile and every context file's path, mode and bytes. */
export function contentHash(files: [string, string][], containerfile: string): string {
  const h = createHash("sha256").update("revdial-sandbox-image/1\0").update(containerfile).update("\0");
  for (const [rel, abs] of files) {
    const st = lstatSync(abs);
    h.update(`${rel}\0${st.isSymbolicLink() ? "l" : st.mode & 0o111 ? "x" : "f"}\0`);
    h.update(st.isSymbolicLink() ? readlinkSync(abs) : readFileSync(abs));
    h.update("\0");
  }
  return h.digest("hex");
}

/** Lays the context out in `dir` (hard links where it can, else copies). */
export function writeContext(dir: string, files: [string, string][], containerfile: string): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "Containerfile"), containerfile);
  for (const [rel, abs] of files) {
    const to = join(dir, rel);
    mkdirSync(dirname(to), { recursive: true });
    const st = lstatSync(abs);
    if (st.isSymbolicLink()) symlinkSync(readlinkSync(abs), to);
    else
      try {
        linkSync(abs, to);
      } catch {
        copyFileSync(abs, to);
      }
  }
}

/** A deterministic tar of `dir` on stdout (GNU tar: sorted names, fixed times and owners). */
function tarOf(dir: string, extra: string[] = []) {
  const child = spawn(
    "tar",
    [
      "-C",
      dir,
      "--sort=name",
      "--mtime=@0",
      "--owner=0",
      "--group=0",
      "--numeric-owner",
      ...extra,
      "-c",
      ".",
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let stderr = "";
  child.stderr.on("data", (c: Buffer) => {
    stderr = (stderr + c.toString()).slice(-2000);
  });
  const done = new Promise<void>((resolve, reject) => {
    child.once("error", (err) => reject(new Error(`tar: ${err.message} (is GNU tar installed?)`)));
    child.once("exit", (code) =>
      code === 0 ? resolve() : reject(new Error(`tar exited ${code}: ${stderr.trim()}`)),
    );
  });
  return { stream: child.stdout, done };
}

/** Makes revdial-base:bookworm: debootstrap minbase into a temp dir, imported through the engine. */
async function makeBase(engine: DockerEngine, say: (line: string) => void): Promise<void> {
  if (process.getuid?.() !== 0)
    throw new Error("making the base image needs root (debootstrap); or give --from IMAGE");
  const dir = mkdtempSync(join(tmpdir(), "revdial-rootfs-"));
  const rootfs = join(dir, "rootfs");
  try {
    say(`base: debootstrap --variant=minbase bookworm from ${DEBIAN_MIRROR} (about 200 MB, once)`);
    const started = Date.now();
    await new Promise<void>((resolve, reject) => {
      const child = spawn("debootstrap", ["--variant=minbase", "bookworm", rootfs, DEBIAN_MIRROR], {
        stdio: ["ignore", "pipe", "pipe"],
        env: { ...process.env, PATH: `${process.env.PATH ?? ""}:/usr/sbin:/sbin` },
      });
      let tail = "";
      let last = 0;
      const onLine = (chunk: Buffer) => {
        tail = (tail + chunk.toString()).slice(-4000);
        for (const line of chunk.toString().split("\n")) {
          const m = /^I: (Retrieving|Validating|Extracting|Unpacking|Configuring|Installing|Base)/.exec(line);
          // Each phase's first line, then one line in 5 s at most: progress without a flood.
          if (m && (Date.now() - last > 5_000 || /Base|Installing/.test(m[1]))) {
            last = Date.now();
            say(`base: ${line.slice(3).trim()}`);
          }
        }
      };
      child.stdout.on("data", onLine);
      child.stderr.on("data", onLine);
      child.once("error", (err) =>
        reject(new Error(`debootstrap: ${err.message} (apt-get install debootstrap, or give --from IMAGE)`)),
      );
      child.once("exit", (code) =>
        code === 0
          ? resolve()
          : reject(new Error(`debootstrap exited ${code}: ${tail.trim().split("\n").slice(-5).join(" | ")}`)),
      );
    });
    say(`base: rootfs made in ${((Date.now() - started) / 1000).toFixed(0)} s; importing as ${BASE_IMAGE}`);
    rmSync(join(rootfs, "var/cache/apt/archives"), { recursive: true, force: true });
    mkdirSync(join(rootfs, "var/cache/apt/archives/partial"), { recursive: true });
    const tar = tarOf(rootfs);
    const [repo, tag] = BASE_IMAGE.split(":");
    const imported = Date.now();
    await Promise.all([engine.importImage(tar.stream, repo, tag, () => {}), tar.done]);
    say(`base: imported in ${((Date.now() - imported) / 1000).toFixed(0)} s`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function buildImage(o: BuildImageOptions): Promise<BuiltImage> {
  const say = o.progress ?? (() => {});
  const tag = fullTag(o.tag ?? DEFAULT_IMAGE);
  const root = o.projectRoot ?? PROJECT_ROOT;
  const containerfile = readFileSync(join(root, "Containerfile"), "utf8");
  const engine = o.engine;
  await engine.ping();

  let base = o.from ?? BASE_IMAGE;
  if (o.from) {
    if (!(await engine.image(o.from)))
      throw new Error(`--from ${o.from}: no such image in the engine at ${engine.endpoint}`);
    say(`base: ${o.from}`);
  } else if (await engine.image(BASE_IMAGE)) say(`base: ${BASE_IMAGE} (cached)`);
  else await makeBase(engine, say);
  const baseId = (await engine.image(base))?.Id ?? base;
  base = o.from ?? BASE_IMAGE;

  const files = contextFiles(root);
  const hash = contentHash(files, `${containerfile}\0${baseId}`);
  const current = await engine.image(tag);
  if (!o.force && current?.Config?.Labels?.[CONTENT_HASH_LABEL] === hash) {
    say(`${tag}: up to date (content ${hash.slice(0, 12)})`);
    return { tag, id: current.Id, size: current.Size, contentHash: hash, built: false, base };
  }
  const dir = mkdtempSync(join(tmpdir(), "revdial-image-"));
  try {
    writeContext(dir, files, containerfile);
    say(`${tag}: building from ${base}: ${files.length} files (content ${hash.slice(0, 12)})`);
    const tar = tarOf(dir, ["--hard-dereference"]);
    await Promise.all([
      engine.build(
        tar.stream,
        { tag, buildArgs: { BASE: base }, labels: { [CONTENT_HASH_LABEL]: hash } },
        (e) => {
          const text = (e.stream ?? "").trimEnd();
          for (const line of text.split("\n"))
            if (/^(STEP|-->|COMMIT|Successfully)/.test(line)) say(`build: ${line}`);
        },
      ),
      tar.done,
    ]);
  } catch (err) {
    if (err instanceof DockerEngineError) throw new Error(`the image build failed: ${err.message}`);
    throw err;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const image = await engine.image(tag);
  if (!image) throw new Error(`the build reported success but the engine has no ${tag}`);
  // The image this one replaces, unless a container still runs it: its layers are not kept forever.
  if (current && current.Id !== image.Id)
    await engine.removeImage(current.Id).then(
      () => say(`${tag}: removed the previous image ${current.Id.replace(/^sha256:/, "").slice(0, 12)}`),
      () => {},
    );
  return { tag, id: image.Id, size: image.Size, contentHash: hash, built: true, base };
}

/** `revdial image build --save-context DIR`: the context for building the Containerfile by hand. */
export function saveContext(dir: string, root = PROJECT_ROOT): number {
  if (existsSync(dir) && readdirSync(dir).length > 0) throw new Error(`${dir} is not empty`);
  const files = contextFiles(root);
  writeContext(dir, files, readFileSync(join(root, "Containerfile"), "utf8"));
  return files.length;
}

export function formatSize(bytes: number): string {
  return bytes >= 1e9 ? `${(bytes / 1e9).toFixed(2)} GB` : `${(bytes / 1e6).toFixed(0)} MB`;
}
