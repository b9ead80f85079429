// Runs the revdial CLI as a user does: a child process on the same Node, with REVDIAL_URL and
// REVDIAL_API_KEY set, and returns its exit code and output.

import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";

export const MAIN = fileURLToPath(new URL("../../src/cli/main.ts", import.meta.url));

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

export function revdial(args: string[], env: Record<string, string>, cwd?: string): Promise<Run> {
  const full = { ...process.env, REVDIAL_API_KEY: "", REVDIAL_DATA_DIR: "", ...env };
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...args], { env: full, cwd }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}
