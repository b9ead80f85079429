// The agent program the sync bridge runs in a sandbox (`revdial agent --agent-command CMD`): CMD
// runs under `sh -c`, reads one JSON line per message on its stdin and prints one JSON line per
// event on its stdout. This file keeps it running: a program that exits is started again after a
// backoff with jitter (reset once it has run for stableAfterMs), its stderr goes to the agent's log
// line by line, and its stdout is cut into lines for the bridge.
//
// The program stays in the agent's process group (it is not detached), so stopping the sandbox's
// group stops it too. close() ends its stdin (a well-behaved program exits on end of input), sends
// SIGTERM to the shell, and SIGKILL past stopTimeoutMs.
//
// Bounds: a stdout line longer than maxLineBytes (default 1 MiB, the sync socket's frame limit) is
// dropped and logged; lines written while no program runs wait, at most maxPendingLines (default
// 1000, the oldest dropped); a program that leaves more than maxStdinBytes (default 4 MiB) unread
// on its stdin gets no more lines until it reads (they are dropped and logged).

import { type ChildProcess, spawn } from "node:child_process";
import { Backoff } from "../common/backoff.ts";
import { InvalidOptionError } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";
import { positiveIntegerOptions } from "../common/options.ts";

export interface AgentProgramOptions {
  /** The command, run as `sh -c COMMAND`. */
  command: string;
  logger: Logger;
  /** Called with each line the program prints on stdout (without the newline). */
  onLine: (line: string) => void;
  /** The program's environment (default: the agent's, without REVDIAL_TOKEN). */
  env?: NodeJS.ProcessEnv;
  backoffBaseMs?: number;
  backoffCapMs?: number;
  stableAfterMs?: number;
  maxLineBytes?: number;
  maxPendingLines?: number;
  maxStdinBytes?: number;
  stopTimeoutMs?: number;
}

export const AGENT_PROGRAM_DEFAULTS = Object.freeze({
  backoffBaseMs: 500,
  backoffCapMs: 30_000,
  stableAfterMs: 10_000,
  maxLineBytes: 1024 * 1024,
  maxPendingLines: 1000,
  maxStdinBytes: 4 * 1024 * 1024,
  stopTimeoutMs: 5_000,
});

type Limits = typeof AGENT_PROGRAM_DEFAULTS;

/** Longest stderr line passed to the log. */
const MAX_LOG_LINE = 2000;

/** The environment a program gets by default: the agent's, minus its credentials. */
export function programEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const out = { ...env };
  delete out.REVDIAL_TOKEN;
  delete out.REVDIAL_RUNNER_TOKEN;
  delete out.REVDIAL_API_KEY;
  return out;
}

/** Cuts a byte stream into lines, dropping (and reporting) any line longer than `max` bytes. */
export class LineSplitter {
  readonly #max: number;
  readonly #onLine: (line: string) => void;
  readonly #onTooLong: (bytes: number) => void;
  #parts: Buffer[] = [];
  #size = 0;
  #skipping = false;

  constructor(max: number, onLine: (line: string) => void, onTooLong: (bytes: number) => void) {
    this.#max = max;
    this.#onLine = onLine;
    this.#onTooLong = onTooLong;
  }

  push(chunk: Buffer): void {
    let start = 0;
    for (let nl = chunk.indexOf(10, start); nl >= 0; nl = chunk.indexOf(10, start)) {
      this.#take(chunk.subarray(start, nl));
      this.#end();
      start = nl + 1;
    }
    if (start < chunk.length) this.#take(chunk.subarray(start));
  }

  #take(part: Buffer): void {
    if (this.#skipping) {
      this.#size += part.length;
      return;
    }
    this.#size += part.length;
    if (this.#size > this.#max) {
      this.#skipping = true;
      this.#parts = [];
      return;
    }
    this.#parts.push(part);
  }

  #end(): void {
    if (this.#skipping) this.#onTooLong(this.#size);
    else {
      const line = Buffer.concat(this.#parts).toString("utf8").replace(/\r$/, "");
      if (line.trim()) this.#onLine(line);
    }
    this.#parts = [];
    this.#size = 0;
    this.#skipping = false;
  }
}

export class AgentProgram {
  readonly #command: string;
  readonly #log: Logger;
  readonly #onLine: (line: string) => void;
  readonly #env: NodeJS.ProcessEnv;
  readonly #o: Limits;
  readonly #backoff: Backoff;
  readonly #pending: string[] = [];
  #child: ChildProcess | null = null;
  #restart: NodeJS.Timeout | null = null;
  #closing: Promise<void> | null = null;
  /** How many times the program has been started (1 after start()). */
  starts = 0;

  constructor(options: AgentProgramOptions) {
    if (!options?.command || typeof options.command !== "string")
      throw new InvalidOptionError("command", "is required");
    if (!options.logger) throw new InvalidOptionError("logger", "is required");
    if (typeof options.onLine !== "function") throw new InvalidOptionError("onLine", "is required");
    const o: Limits = positiveIntegerOptions(AGENT_PROGRAM_DEFAULTS, options);
    this.#o = o;
    this.#command = options.command;
    this.#log = options.logger.child({ agent_program: true });
    this.#onLine = options.onLine;
    this.#env = options.env ?? programEnv();
    this.#backoff = new Backoff({ baseMs: o.backoffBaseMs, capMs: o.backoffCapMs });
  }

  /** Starts the program (and keeps it running until close()). */
  start(): void {
    if (this.#closing || this.#child) return;
    const startedAt = Date.now();
    const child = spawn("/bin/sh", ["-c", this.#command], {
      stdio: ["pipe", "pipe", "pipe"],
      env: this.#env,
    });
    this.#child = child;
    this.starts++;
    this.#log.info({ pid: child.pid, starts: this.starts }, "agent program started");
    child.stdin?.on("error", (err) => this.#log.debug({ err: err.message }, "agent program stdin error"));
    const out = new LineSplitter(this.#o.maxLineBytes, this.#onLine, (bytes) =>
      this.#log.warn({ bytes, max: this.#o.maxLineBytes }, "agent program line too long: dropped"),
    );
    child.stdout?.on("data", (chunk: Buffer) => out.push(chunk));
    const err = new LineSplitter(
      64 * 1024,
      (line) => this.#log.info({ line: line.slice(0, MAX_LOG_LINE) }, "agent program stderr"),
      () => {},
    );
    child.stderr?.on("data", (chunk: Buffer) => err.push(chunk));
    child.once("error", (e) => this.#log.warn({ err: e.message }, "agent program could not start"));
    child.once("exit", (code, signal) => this.#exited(child, startedAt, code, signal));
    for (const line of this.#pending.splice(0)) this.#writeNow(line);
  }

  #exited(child: ChildProcess, startedAt: number, code: number | null, signal: string | null): void {
    if (this.#child === child) this.#child = null;
    if (this.#closing) return;
    if (Date.now() - startedAt >= this.#o.stableAfterMs) this.#backoff.reset();
    const wait = this.#backoff.next();
    this.#log.warn({ code, signal, restart_in_ms: wait }, "agent program exited: restarting");
    this.#restart = setTimeout(() => {
      this.#restart = null;
      this.start();
    }, wait);
  }

  /** Writes one line (a newline is added) to the program's stdin, or keeps it until one runs. */
  write(line: string): void {
    if (this.#closing) return;
    if (this.#child?.stdin?.writable) {
      this.#writeNow(line);
      return;
    }
    this.#pending.push(line);
    if (this.#pending.length > this.#o.maxPendingLines) {
      this.#pending.shift();
      this.#log.warn(
        { max: this.#o.maxPendingLines },
        "agent program not running: oldest waiting line dropped",
      );
    }
  }

  #writeNow(line: string): void {
    const stdin = this.#child?.stdin;
    if (!stdin) return;
    if (stdin.writableLength > this.#o.maxStdinBytes) {
      this.#log.warn({ unread: stdin.writableLength }, "agent program does not read its stdin: line dropped");
      return;
    }
    stdin.write(`${line}\n`);
  }

  /** Stops the program and does not start it again. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#stop();
    return this.#closing;
  }

  async #stop(): Promise<void> {
    if (this.#restart) clearTimeout(this.#restart);
    const child = this.#child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    // "exit", not "close": a grandchild of the shell may hold the pipes open after it.
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.stdin?.end();
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), this.#o.stopTimeoutMs);
    await exited;
    clearTimeout(timer);
  }
}
