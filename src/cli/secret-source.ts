// Where a command reads a secret (a key or a token) from, so that it need not be on a command line:
// any local user reads /proc/PID/cmdline. In order: a file (`--token-file F`, first line, trimmed),
// standard input (`--token -`), the environment, and last the command-line value itself, which is
// still accepted for compatibility but warned about. Whatever the source, the environment variables
// named are then removed from this process's environment, so the processes it starts (sandboxes,
// their apps, the tools they run) do not inherit the secret.

import { readFile } from "node:fs/promises";
import { CliUsageError } from "./env.ts";

/** Longest secret read from a file or stdin: keys are 44 characters; anything far past is a mistake. */
const MAX_SECRET_BYTES = 4096;

export interface SecretSource {
  /** The flag's own value (`--token T`); `-` means standard input. */
  value?: string;
  /** A file holding the secret (`--token-file F`). */
  file?: string;
  /** Environment variables to try, in order. */
  envNames: readonly string[];
  /** The flags' names, for messages: e.g. `--token`. */
  flag: string;
  /** Called when the secret came from the command line itself. */
  warn?: (message: string) => void;
  /** Standard input (default process.stdin). */
  stdin?: NodeJS.ReadableStream;
}

/** The secret, or undefined when no source gives one. Throws CliUsageError for an unreadable file. */
export async function readSecret(source: SecretSource): Promise<string | undefined> {
  try {
    return await readFrom(source);
  } finally {
    for (const name of source.envNames) delete process.env[name];
  }
}

async function readFrom(source: SecretSource): Promise<string | undefined> {
  if (source.file !== undefined && source.value !== undefined) {
    throw new CliUsageError(`${source.flag} and ${source.flag}-file are exclusive`);
  }
  if (source.file !== undefined) return fromFile(source.file, `${source.flag}-file`);
  if (source.value === "-") return fromStdin(source.stdin ?? process.stdin, source.flag);
  if (source.value !== undefined && source.value !== "") {
    source.warn?.(
      `${source.flag} on the command line is visible to every local user (/proc/PID/cmdline); use ${source.flag}-file, ${source.flag} - (stdin) or ${source.envNames[0]}`,
    );
    return source.value;
  }
  for (const name of source.envNames) {
    const value = process.env[name];
    if (value) return value.trim();
  }
  return undefined;
}

async function fromFile(path: string, flag: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    throw new CliUsageError(`${flag}: cannot read ${path}: ${(err as Error).message}`);
  }
  return firstLine(text, `${flag} ${path}`);
}

async function fromStdin(stdin: NodeJS.ReadableStream, flag: string): Promise<string> {
  let text = "";
  for await (const chunk of stdin) {
    text += chunk.toString();
    if (text.includes("\n") || text.length > MAX_SECRET_BYTES) break;
  }
  return firstLine(text, `${flag} - (standard input)`);
}

function firstLine(text: string, where: string): string {
  const line = text.slice(0, MAX_SECRET_BYTES).split(/\r?\n/)[0].trim();
  if (!line) throw new CliUsageError(`${where}: empty`);
  return line;
}
