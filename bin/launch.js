// Runs one of revdial's entry points. An installed package runs its build (dist/*.js) on the Node
// that started this script; a checkout (src/ present, no build needed) runs the TypeScript sources
// on Node 24, which the checkout brings as the `node` dev dependency: when the Node that started
// this script is older than 22.18 (no type stripping), the sources are re-run on that one.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

function atLeast22_18() {
  const [major, minor] = process.versions.node.split(".").map(Number);
  return major > 22 || (major === 22 && minor >= 18);
}

/** `entry` is a module path under src/ (or dist/) without its extension, e.g. "cli/main". */
export async function launch(entry, args) {
  const source = join(root, "src", `${entry}.ts`);
  if (!existsSync(source)) {
    if (!atLeast22_18()) {
      console.error(`revdial needs Node.js >= 22.18 (this is ${process.versions.node})`);
      process.exit(1);
    }
    const mod = await import(pathToFileURL(join(root, "dist", `${entry}.js`)).href);
    await mod.main(args);
    return;
  }
  if (atLeast22_18()) {
    const mod = await import(pathToFileURL(source).href);
    await mod.main(args);
    return;
  }
  const bundled = join(root, "node_modules", "node", "bin", "node");
  if (!existsSync(bundled)) {
    console.error(`revdial needs Node.js >= 22.18 (found ${process.versions.node}); run npm ci first`);
    process.exit(1);
  }
  const child = spawn(bundled, [source, ...args], { stdio: "inherit" });
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(sig, () => child.kill(sig));
  child.on("exit", (code, signal) => {
    if (signal) process.kill(process.pid, signal);
    else process.exit(code ?? 1);
  });
}
