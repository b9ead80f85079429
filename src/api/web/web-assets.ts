// The dashboard's files as the API serves them, found once and held in memory (a few hundred KiB):
//
//   - running from the checkout (this module is a .ts file and web/ exists beside src/): built from
//     web/ with esbuild at the first request (web-bundle.ts), so `npm start` and `npm test` need no
//     build step and always serve the current sources;
//   - otherwise (the published package, compiled to dist/): the files `npm run build:web` wrote to
//     dist/web, found by walking up from this module to the package root.
// When neither is there, every dashboard path answers 503 RD_ERR_DASHBOARD_UNAVAILABLE saying why.
//
// Each file carries its Content-Type and a strong ETag (SHA-256 of its bytes).

import { access, readdir, readFile } from "node:fs/promises";
import { dirname, extname, join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";
import type { Logger } from "../../common/logger.ts";
import { etagOf } from "../routes/etag.ts";
import { buildWebBundle, type WebFile } from "./web-bundle.ts";

export interface WebAsset {
  bytes: Buffer;
  contentType: string;
  etag: string;
}

const CONTENT_TYPES: Readonly<Record<string, string>> = Object.freeze({
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".json": "application/json; charset=utf-8",
  ".map": "application/json; charset=utf-8",
});

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/** The directory holding package.json, from this module up. */
async function packageRoot(from: string): Promise<string | null> {
  for (let dir = from; ; dir = dirname(dir)) {
    if (await exists(join(dir, "package.json"))) return dir;
    if (dirname(dir) === dir) return null;
  }
}

async function readTree(dir: string): Promise<WebFile[]> {
  const out: WebFile[] = [];
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const full = join(entry.parentPath, entry.name);
    out.push({ path: relative(dir, full).split(sep).join("/"), bytes: await readFile(full) });
  }
  return out;
}

function toAssets(files: WebFile[]): Map<string, WebAsset> {
  const map = new Map<string, WebAsset>();
  for (const f of files) {
    const contentType = CONTENT_TYPES[extname(f.path)] ?? "application/octet-stream";
    map.set(f.path, { bytes: f.bytes, contentType, etag: etagOf(f.bytes) });
  }
  return map;
}

/** Finds (or builds) the dashboard's files; where they came from, for the log. */
export async function loadWebAssets(): Promise<{ assets: Map<string, WebAsset>; source: string }> {
  const here = fileURLToPath(import.meta.url);
  const root = await packageRoot(dirname(here));
  if (!root) throw new Error("no package.json above the server's files");
  const fromSource = here.endsWith(".ts") && (await exists(join(root, "web", "src", "main.tsx")));
  if (fromSource) return { assets: toAssets(await buildWebBundle(root)), source: "built from web/" };
  const built = join(root, "dist", "web");
  if (await exists(join(built, "index.html")))
    return { assets: toAssets(await readTree(built)), source: built };
  throw new Error(`the dashboard is not built: no ${join(built, "index.html")} (run npm run build:web)`);
}

/** Loads the assets once, at the first call; a failure is remembered (and logged) too. */
export function lazyWebAssets(logger: Logger): () => Promise<Map<string, WebAsset>> {
  let loading: Promise<Map<string, WebAsset>> | null = null;
  return () => {
    loading ??= loadWebAssets().then(
      ({ assets, source }) => {
        logger.info({ files: assets.size, source }, "dashboard ready");
        return assets;
      },
      (err: unknown) => {
        logger.error({ err }, "dashboard unavailable");
        throw err;
      },
    );
    return loading;
  };
}
