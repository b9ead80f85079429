// `npm run build:agent`: the sandbox agent as one file, then as one executable.
//   dist/revdial-agent.mjs  one ES module with everything the tunnel needs (run: node revdial-agent.mjs);
//                           the desktop's packages (sharp, x11) stay outside and load only for --desktop
//   dist/revdial-agent      Linux x64: a single executable application (Node's SEA) made of the Node 24
//                           binary the `node` dev dependency brings and the same bundle (as CommonJS,
//                           which Node 24's SEA runs), injected with postject; runs without Node
// Usage: node scripts/build-agent.ts [--out-dir DIR] [--no-executable]

import { execFileSync, spawnSync } from "node:child_process";
import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { build } from "esbuild";

const ROOT = resolve(import.meta.dirname, "..");
/** Node's SEA fuse (docs: Single executable applications). */
const SEA_FUSE = "NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2";

const { values } = parseArgs({
  options: { "out-dir": { type: "string" }, "no-executable": { type: "boolean" } },
});
const outDir = resolve(values["out-dir"] ?? join(ROOT, "dist"));
mkdirSync(outDir, { recursive: true });

const common = {
  stdin: {
    contents: 'import { main } from "./src/cli/revdial-agent.ts";\nawait main(process.argv.slice(2));\n',
    resolveDir: ROOT,
    sourcefile: "revdial-agent-entry.ts",
    loader: "ts" as const,
  },
  bundle: true,
  platform: "node" as const,
  target: "node22.18",
  // Loaded at run time, only for --desktop (src/agent/desktop/native-modules.ts).
  external: ["sharp", "x11"],
  // bufferutil's JavaScript half: the native one cannot travel in a bundle.
  alias: { bufferutil: "bufferutil/fallback.js" },
  // Modules guarded by `if (import.meta.main)` must not start as if they were the program.
  define: { "import.meta.main": "false" },
  legalComments: "none" as const,
  logLevel: "warning" as const,
  minifySyntax: true,
  minifyWhitespace: true,
};

const mjs = join(outDir, "revdial-agent.mjs");
await build({
  ...common,
  outfile: mjs,
  format: "esm",
  // The bundled CommonJS packages require Node's built-ins.
  banner: {
    js: '#!/usr/bin/env node\nimport { createRequire as __rdCreateRequire } from "node:module";\nconst require = __rdCreateRequire(import.meta.url);',
  },
});
chmodSync(mjs, 0o755);
report(mjs);

if (!values["no-executable"]) await buildExecutable();

async function buildExecutable(): Promise<void> {
  if (process.platform !== "linux" || process.arch !== "x64") {
    process.stdout.write(
      `revdial-agent executable: skipped (Linux x64 only; this is ${process.platform}-${process.arch})\n`,
    );
    return;
  }
  const node = nodeBinary();
  const work = join(outDir, ".sea");
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const cjs = join(work, "revdial-agent.cjs");
  await build({
    ...common,
    stdin: {
      ...common.stdin,
      contents: 'const { main } = require("./src/cli/revdial-agent.ts");\nmain(process.argv.slice(2));\n',
    },
    outfile: cjs,
    format: "cjs",
    // import.meta.url is only read by modules the agent does not run; silence the CommonJS warning.
    logOverride: { "empty-import-meta": "silent" },
  });
  const blob = join(work, "sea-prep.blob");
  writeFileSync(
    join(work, "sea-config.json"),
    JSON.stringify({ main: cjs, output: blob, disableExperimentalSEAWarning: true, useCodeCache: false }),
  );
  execFileSync(node, ["--experimental-sea-config", join(work, "sea-config.json")], { stdio: "ignore" });
  const exe = join(outDir, "revdial-agent");
  rmSync(exe, { force: true });
  copyFileSync(node, exe);
  chmodSync(exe, 0o755);
  const injected = spawnSync(
    process.execPath,
    [
      join(ROOT, "node_modules", "postject", "dist", "cli.js"),
      exe,
      "NODE_SEA_BLOB",
      blob,
      "--sentinel-fuse",
      SEA_FUSE,
    ],
    { encoding: "utf8" },
  );
  if (injected.status !== 0)
    throw new Error(`postject failed (${injected.status}):\n${injected.stdout}${injected.stderr}`);
  rmSync(work, { recursive: true, force: true });
  report(exe);
}

/** The Node 24 binary to build the executable from: the `node` dev dependency's (an ELF file). */
function nodeBinary(): string {
  const candidates = [join(ROOT, "node_modules", "node", "bin", "node"), process.execPath];
  for (const candidate of candidates) {
    try {
      const path = realpathSync(candidate);
      const head = readFileSync(path).subarray(0, 4);
      if (!head.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) continue;
      const version = execFileSync(path, ["--version"], { encoding: "utf8" }).trim();
      if (version.startsWith("v24.")) return path;
    } catch {}
  }
  throw new Error("no Node 24 binary found (npm ci brings one as the `node` dev dependency)");
}

function report(file: string): void {
  const bytes = statSync(file).size;
  process.stdout.write(`${file}: ${(bytes / 1024 / 1024).toFixed(1)} MiB (${bytes} bytes)\n`);
}
