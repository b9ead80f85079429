// `npm run build:web`: builds the dashboard (web/) into dist/web, the files a published package
// serves (src/api/web/web-assets.ts finds them there). Usage: node web/build.ts [OUT_DIR]

import { mkdir, rm, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { buildWebBundle } from "../src/api/web/web-bundle.ts";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const out = resolve(process.argv[2] ?? join(root, "dist", "web"));
const files = await buildWebBundle(root);
await rm(out, { recursive: true, force: true });
for (const file of files) {
  const path = join(out, file.path);
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, file.bytes);
}
const bytes = files.reduce((n, f) => n + f.bytes.length, 0);
process.stderr.write(`dashboard built: ${files.length} files, ${bytes} bytes in ${out}\n`);
