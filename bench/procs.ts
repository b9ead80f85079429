// Child processes for benchmarks: start one, wait for a line that says it is ready, stop it, and
// read its resident memory. Shared by the benchmark scripts.

import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";

export interface Proc {
  child: ChildProcess;
  /** The first stdout line that matched the ready pattern. */
  line: string;
  stop(): Promise<void>;
}

/** SIGTERM, then SIGKILL after 5 s; resolves once the process has exited. */
function stopper(child: ChildProcess): () => Promise<void> {
  return () =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once("exit", () => resolve());
      child.kill("SIGTERM");
      setTimeout(() => child.kill("SIGKILL"), 5000).unref();
    });
}

/** Starts `node args…` and resolves once stdout prints a line matching `ready` (at once for null). */
export function startNode(args: string[], ready: RegExp | null, timeoutMs = 30_000): Promise<Proc> {
  return startProcess(process.execPath, args, ready, { timeoutMs });
}

/**
 * Starts `command args…` directly (no shell, so the child's pid is the program's own, the one whose
 * CPU time a benchmark reads) and resolves as startNode does.
 */
export function startProcess(
  command: string,
  args: string[],
  ready: RegExp | null,
  options: { timeoutMs?: number; cwd?: string } = {},
): Promise<Proc> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], cwd: options.cwd });
  let stderr = "";
  child.stderr?.on("data", (c: Buffer) => {
    stderr = (stderr + c.toString()).slice(-4000);
  });
  const stop = stopper(child);
  if (!ready) {
    // Nobody reads its output: drain it, or a chatty child blocks once the pipe is full.
    child.stdout?.resume();
    return Promise.resolve({ child, line: "", stop });
  }
  // A program that cannot start at all (ENOENT, EACCES) reports it here, not as an exit.
  const failed = new Promise<never>((_resolve, reject) => child.once("error", reject));
  failed.catch(() => {}); // an error after the start is not this promise's business
  const started = new Promise<Proc>((resolve, reject) => {
    const timer = setTimeout(() => {
      void stop();
      reject(new Error(`${command} ${args.join(" ")} not ready in ${timeoutMs} ms\n${stderr}`));
    }, timeoutMs);
    const lines = createInterface({ input: child.stdout! });
    lines.on("line", (line) => {
      if (!ready.test(line)) return;
      clearTimeout(timer);
      resolve({ child, line, stop });
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${command} ${args.join(" ")} exited with ${code}\n${stderr}`));
    });
  });
  return Promise.race([started, failed]);
}

export interface ProcWithStdin extends Proc {
  /** Writes `line` to the process and resolves with the next stdout line matching `answer`. */
  ask(line: string, answer: RegExp): Promise<string>;
}

/** Like startNode, with a line protocol over stdin/stdout for asking the process questions. */
export async function startNodeWithStdin(
  args: string[],
  ready: RegExp,
  timeoutMs = 30_000,
): Promise<ProcWithStdin> {
  const child = spawn(process.execPath, args, { stdio: ["pipe", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout! });
  const next = (pattern: RegExp) =>
    new Promise<string>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`${args.join(" ")}: no ${pattern} in ${timeoutMs} ms`)),
        timeoutMs,
      );
      const on = (line: string) => {
        if (!pattern.test(line)) return;
        clearTimeout(timer);
        lines.off("line", on);
        resolve(line);
      };
      lines.on("line", on);
    });
  const line = await next(ready);
  const stop = stopper(child);
  return {
    child,
    line,
    stop,
    ask(text: string, answer: RegExp) {
      const reply = next(answer);
      child.stdin!.write(`${text}\n`);
      return reply;
    },
  };
}

/** Why a start failed, in one line: "exited with 1: <the child's last stderr line>". */
export function startFailure(err: unknown): string {
  const [first, ...rest] = String((err as Error)?.message ?? err).split("\n");
  const cause = / ((?:exited with|not ready in) .*)$/.exec(first)?.[1] ?? first;
  const last = rest.filter((l) => l.trim()).at(-1);
  return last ? `${cause}: ${last.trim()}` : cause;
}
