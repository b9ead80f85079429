// The sandbox container's program (the image's ENTRYPOINT, under the engine's init): it reads the
// launch spec the docker driver wrote into /run/revdial/launch.json (the sandbox's rds- key among
// it), removes that file, and hands the spec to lobby-launcher.ts on its stdin, exactly as the
// process driver does; so Xvfb, the agent and the desktop program start the same way in both.
// The key is thus never on a command line nor in the container's environment (/proc/1/environ).
//
// The launcher's start report (its first stdout line: display, desktop socket, pids) is written to
// /run/revdial/ready.json, which the driver waits for. SIGTERM (docker stop) is passed on to the
// launcher, which stops the rest; the container exits with the launcher's code.

import { spawn } from "node:child_process";
import { readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const LAUNCHER = join(dirname(fileURLToPath(import.meta.url)), "lobby-launcher.ts");
const RUN_DIR = process.env.REVDIAL_RUN_DIR || "/run/revdial";

function main(): void {
  const specFile = join(RUN_DIR, "launch.json");
  let spec: string;
  try {
    spec = readFileSync(specFile, "utf8");
  } catch (err) {
    process.stderr.write(`no launch spec at ${specFile}: ${(err as Error).message}\n`);
    process.exit(1);
  }
  rmSync(specFile, { force: true });
  const launcher = spawn(process.execPath, [LAUNCHER], {
    stdio: ["pipe", "pipe", "inherit"],
    env: { PATH: "/usr/local/bin:/usr/bin:/bin" },
  });
  launcher.stdin.on("error", () => {});
  launcher.stdin.end(`${spec.trim()}\n`);
  createInterface({ input: launcher.stdout }).once("line", (line) => {
    const tmp = join(RUN_DIR, "ready.json.tmp");
    writeFileSync(tmp, `${line}\n`, { mode: 0o600 });
    renameSync(tmp, join(RUN_DIR, "ready.json"));
  });
  for (const signal of ["SIGTERM", "SIGINT"] as const)
    process.on(signal, () => {
      if (launcher.exitCode === null) launcher.kill(signal);
    });
  launcher.once("exit", (code, signal) => process.exit(code ?? (signal ? 128 + 15 : 1)));
}

if (import.meta.main) main();
