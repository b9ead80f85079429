// Runs one external desktop tool (xclip, wl-paste, wl-copy, grim) with bounds on everything: a deadline,
// a cap on captured output, stdin written in full and closed. Never through a shell.
//
// Tools that copy (xclip -i, wl-copy) fork a child that keeps serving the selection after the tool
// itself exits, and that child inherits the tool's stdout and stderr. Waiting for those pipes to close
// would hang until someone else takes the selection, so `detaches` tools are finished at process exit:
// their stdout is not captured at all, and stderr is only awaited when the exit code reports a failure
// (then no child was forked).

import { spawn } from "node:child_process";
import { ToolFailedError } from "./errors.ts";

export interface RunToolOptions {
  command: string;
  args: readonly string[];
  env: NodeJS.ProcessEnv;
  /** Written to stdin, which is then closed; without it stdin is /dev/null. */
  input?: Buffer;
  timeoutMs: number;
  /** The most stdout bytes kept; more fails the run. */
  maxOutputBytes: number;
  /** The tool forks a child that outlives it (see header): done at exit, stdout not captured. */
  detaches?: boolean;
}

export interface ToolResult {
  /** Exit code; null when the tool was ended by a signal. */
  code: number | null;
  stdout: Buffer;
  /** At most STDERR_LIMIT bytes, trimmed. */
  stderr: string;
}

const STDERR_LIMIT = 4096;

/** Runs the tool to completion. A non-zero exit is a result, not an error; not starting, timing out
 * or overflowing the output cap throws ToolFailedError. */
export function runTool(options: RunToolOptions): Promise<ToolResult> {
  return new Promise((resolve, reject) => new ToolRun(options, resolve, reject).start());
}

/** One run's state; settles exactly once. */
class ToolRun {
  readonly #options: RunToolOptions;
  readonly #resolve: (result: ToolResult) => void;
  readonly #reject: (err: Error) => void;
  readonly #stdout: Buffer[] = [];
  #stdoutBytes = 0;
  #stderr = "";
  #code: number | null | undefined;
  #openPipes = 0;
  #settled = false;
  #timer: NodeJS.Timeout | undefined;
  #child: ReturnType<typeof spawn> | undefined;

  constructor(options: RunToolOptions, resolve: (r: ToolResult) => void, reject: (e: Error) => void) {
    this.#options = options;
    this.#resolve = resolve;
    this.#reject = reject;
  }

  start(): void {
    const { command, args, env, input, detaches } = this.#options;
    const child = spawn(command, args, {
      env,
      stdio: [input ? "pipe" : "ignore", detaches ? "ignore" : "pipe", "pipe"],
    });
    this.#child = child;
    this.#timer = setTimeout(
      () => this.#fail(`${command} did not finish in ${this.#options.timeoutMs} ms`),
      this.#options.timeoutMs,
    );
    child.on("error", (err: NodeJS.ErrnoException) => this.#fail(spawnMessage(command, err), err));
    child.on("exit", (code) => this.#onExit(code));
    child.stdout?.on("data", (chunk: Buffer) => this.#onStdout(chunk));
    child.stderr?.on("data", (chunk: Buffer) => this.#onStderr(chunk));
    for (const pipe of [child.stdout, child.stderr]) {
      if (!pipe) continue;
      this.#openPipes++;
      pipe.on("close", () => this.#onPipeClosed());
    }
    if (input) writeInput(child, input);
  }

  #onStdout(chunk: Buffer): void {
    this.#stdoutBytes += chunk.length;
    if (this.#stdoutBytes > this.#options.maxOutputBytes) {
      this.#fail(`${this.#options.command} wrote more than ${this.#options.maxOutputBytes} bytes`);
      return;
    }
    this.#stdout.push(chunk);
  }

  #onStderr(chunk: Buffer): void {
    if (this.#stderr.length < STDERR_LIMIT) this.#stderr += chunk.toString("utf8").slice(0, STDERR_LIMIT);
  }

  #onExit(code: number | null): void {
    this.#code = code;
    // A detached tool that succeeded left a child holding stderr open: stop listening to it.
    if (this.#options.detaches && code === 0) this.#child?.stderr?.destroy();
    this.#maybeFinish();
  }

  #onPipeClosed(): void {
    this.#openPipes--;
    this.#maybeFinish();
  }

  #maybeFinish(): void {
    if (this.#settled || this.#code === undefined || this.#openPipes > 0) return;
    this.#settled = true;
    clearTimeout(this.#timer);
    this.#resolve({ code: this.#code, stdout: Buffer.concat(this.#stdout), stderr: this.#stderr.trim() });
  }

  #fail(message: string, cause?: unknown): void {
    if (this.#settled) return;
    this.#settled = true;
    clearTimeout(this.#timer);
    this.#child?.kill("SIGKILL");
    this.#child?.stdout?.destroy();
    this.#child?.stderr?.destroy();
    this.#reject(new ToolFailedError(message, { cause }));
  }
}

function writeInput(child: ReturnType<typeof spawn>, input: Buffer): void {
  // EPIPE when the tool exits before reading everything; its exit code tells the story.
  child.stdin?.on("error", () => {});
  child.stdin?.end(input);
}

function spawnMessage(command: string, err: NodeJS.ErrnoException): string {
  if (err.code === "ENOENT") return `${command} is not installed (not found on PATH)`;
  return `${command} could not be started: ${err.message}`;
}
