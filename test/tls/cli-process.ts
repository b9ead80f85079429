// The CLI as a user runs it, for the TLS tests: child processes of src/cli/main.ts and
// src/cli/revdial-client.ts whose output is kept (every line, for the final token grep) and can be
// waited on by pattern.

import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

const MAIN = fileURLToPath(new URL("../../src/cli/main.ts", import.meta.url));
const CLIENT = fileURLToPath(new URL("../../src/cli/revdial-client.ts", import.meta.url));

export interface CliProcess {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves with the first match of `pattern` in stdout+stderr, or rejects after timeoutMs. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpExecArray>;
  /** Resolves with the exit code. */
  exited(): Promise<number | null>;
  stop(): Promise<void>;
}

/** Every process started here, so a test can grep all the logs of the run. */
export const allProcesses: CliProcess[] = [];

/** The environment without the caller's REVDIAL_* settings, plus `extra`. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("REVDIAL_")) env[k] = v;
  return { ...env, ...extra };
}

export function startCli(args: string[], env: Record<string, string> = {}, program = MAIN): CliProcess {
  const child = spawn(process.execPath, [program, ...args], {
    env: cleanEnv(env),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  const waiters = new Set<() => void>();
  const poke = () => {
    for (const w of waiters) w();
  };
  child.stdout?.on("data", (c: Buffer) => {
    out += c;
    poke();
  });
  child.stderr?.on("data", (c: Buffer) => {
    err += c;
    poke();
  });
  const exit = new Promise<number | null>((resolve) => child.once("close", (code) => resolve(code)));
  const proc: CliProcess = {
    child,
    stdout: () => out,
    stderr: () => err,
    waitFor(pattern, timeoutMs = 20_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const m = pattern.exec(out + err);
          if (!m) return;
          done();
          resolve(m);
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`no ${pattern} within ${timeoutMs} ms; output:\n${out}\n${err}`));
        }, timeoutMs);
        const done = () => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      });
    },
    exited: () => exit,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await exit;
    },
  };
  allProcesses.push(proc);
  return proc;
}

export function startClient(args: string[], env: Record<string, string> = {}): CliProcess {
  return startCli(args, env, CLIENT);
}

/** Runs a CLI command to its end. */
export async function runCli(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const p = startCli(args, env);
  const code = await p.exited();
  return { code, stdout: p.stdout(), stderr: p.stderr() };
}
