// Builds the dashboard (web/) into the files the API serves: one JavaScript bundle and one
// stylesheet, each named by a hash of its content (so they can be cached for good), and index.html
// pointing at them. esbuild does the work in memory in well under a second; it is a development
// dependency, loaded only here: a published package carries the built files (dist/web) instead.
//
// Used by the server when it runs from the checkout (web-assets.ts) and by `npm run build:web`
// (web/build.ts), which writes the same files to dist/web.

import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";

/** One built file: its path under the site root (`index.html`, `ui/assets/app-HASH.js`). */
export interface WebFile {
  path: string;
  bytes: Buffer;
}

/** Where the hashed assets live, under the site root. */
export const ASSET_DIR = "ui/assets";

function hashed(name: string, ext: string, bytes: Buffer): string {
  const hash = createHash("sha256").update(bytes).digest("base64url").slice(0, 12).replace(/[-_]/g, "x");
  return `${ASSET_DIR}/${name}-${hash}.${ext}`;
}

/** Builds web/ under `rootDir` (the checkout). Throws esbuild's error when the sources do not build. */
export async function buildWebBundle(rootDir: string): Promise<WebFile[]> {
  const esbuild = await import("esbuild");
  const webDir = join(rootDir, "web");
  const result = await esbuild.build({
    entryPoints: { app: join(webDir, "src", "main.tsx") },
    absWorkingDir: rootDir,
    bundle: true,
    write: false,
    minify: true,
    format: "esm",
    target: "es2022",
    jsx: "automatic",
    jsxImportSource: "preact",
    outdir: "out",
    logLevel: "silent",
    legalComments: "none",
  });
  const byExt = new Map<string, Buffer>();
  for (const file of result.outputFiles)
    byExt.set(file.path.slice(file.path.lastIndexOf(".") + 1), Buffer.from(file.contents));
  const js = byExt.get("js");
  if (!js) throw new Error("the dashboard bundle has no JavaScript output");
  const css = await readFile(join(webDir, "src", "styles.css"));
  const jsPath = hashed("app", "js", js);
  const cssPath = hashed("app", "css", css);
  const template = await readFile(join(webDir, "index.html"), "utf8");
  const html = template.replace("%CSS%", `/${cssPath}`).replace("%JS%", `/${jsPath}`);
  return [
    { path: "index.html", bytes: Buffer.from(html) },
    { path: jsPath, bytes: js },
    { path: cssPath, bytes: css },
  ];
}
