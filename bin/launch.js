// Runs a TypeScript entry point on Node 24. The project ships Node 24 as the `node` package; when
// the Node that started this script is older than 22.18 (no type stripping), re-run on that one.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

function supportsTypeStripping() {
  const [major, minor] = process.versions.node.split(".").map(Number);
  return major > 22 || (major === 22 && minor >= 18);
}

export async function launch(entry, args) {
  const file = join(root, entry);
  if (supportsTypeStripping()) {
    const mod = await import(pathToFileURL(file).href);
    await mod.main(args);
    return;
  }
  const bundled = join(root, "node_modules", "node", "bin", "node");
  if (!existsSync(bundled)) {
    console.error(`revdial needs Node.js >= 22.18 (found ${process.versions.node}); run npm ci first`);
    process.exit(1);
  }
  const child = spawn(bundled, [file, ...args], { stdio: "inherit" });
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(sig, () => child.kill(sig));
  child.on("exit", (code, signal) => {
    if (signal) process.kill(process.pid, signal);
    else process.exit(code ?? 1);
  });
}
