// Reading flags' fallbacks from the environment, and turning option text into checked values, the
// same way for every command.

import { parseDuration } from "../common/duration.ts";
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from "../common/logger.ts";

/** The first non-empty environment variable of `names`, else undefined. */
export function env(...names: string[]): string | undefined {
  for (const name of names) {
    const value = process.env[name];
    if (value !== undefined && value !== "") return value;
  }
  return undefined;
}

/** A duration flag: milliseconds, or a usage error naming the flag (bad text, or above maxMs). */
export function durationOption(name: string, text: string, maxMs?: number): number {
  try {
    return parseDuration(text, { maxMs });
  } catch (err) {
    throw new CliUsageError(`${name}: ${(err as Error).message}`);
  }
}

export function logLevelOption(text: string | undefined): LogLevel {
  const level = (text ?? "info").toLowerCase();
  if (!(LOG_LEVELS as readonly string[]).includes(level)) {
    throw new CliUsageError(`--log-level must be one of ${LOG_LEVELS.join(", ")}`);
  }
  return level as LogLevel;
}

/** --log-format (env REVDIAL_LOG_FORMAT): json or pretty; undefined picks by the terminal. */
export function logFormatOption(text: string | undefined): LogFormat | undefined {
  if (text === undefined || text === "") return undefined;
  const format = text.toLowerCase();
  if (!(LOG_FORMATS as readonly string[]).includes(format))
    throw new CliUsageError(`--log-format must be one of ${LOG_FORMATS.join(", ")}`);
  return format as LogFormat;
}

/** The --log-format option, for the long-running commands (server, agent, wolf run). */
export const LOG_FORMAT_OPTION = [
  "--log-format <format>",
  "json|pretty; default pretty on a terminal, json otherwise (env REVDIAL_LOG_FORMAT)",
] as const;

export function sizeOption(name: string, text: string): number {
  const match = /^(\d+)\s*(b|kib|kb|k|mib|mb|m|gib|gb|g)?$/i.exec(text.trim());
  if (!match) throw new CliUsageError(`${name}: expected a size like 10MiB, got "${text}"`);
  const unit = (match[2] ?? "b").toLowerCase();
  const factor = unit.startsWith("g")
    ? 1024 ** 3
    : unit.startsWith("m")
      ? 1024 ** 2
      : unit.startsWith("k")
        ? 1024
        : 1;
  return Number(match[1]) * factor;
}

/** The `--transport` option of every command that runs an agent (commander's .option arguments). */
export const TRANSPORT_OPTION = [
  "--transport <ws|raw>",
  "ws: WebSocket, crosses any proxy that passes WebSockets; raw: the upgraded socket itself, faster (env REVDIAL_TRANSPORT)",
  env("REVDIAL_TRANSPORT") ?? "ws",
] as const;

/** The tunnel transport of an agent: `ws` (default) or `raw` (see src/tunnel/tunnel-link.ts). */
export function transportOption(text: string | undefined): "ws" | "raw" {
  const value = (text ?? "ws").toLowerCase();
  if (value !== "ws" && value !== "raw")
    throw new CliUsageError(`--transport must be ws or raw, got "${text}"`);
  return value;
}

export const PROTOCOL_OPTION = [
  "--protocol <v3|v2>",
  "v3: the revdial multiplexer (default; over ws an older server's v2 is followed); v2: HTTP/2 over the link (env REVDIAL_PROTOCOL)",
  env("REVDIAL_PROTOCOL") ?? "v3",
] as const;

/** The tunnel protocol of an agent: `v3` (default) or `v2` (docs/protocol.md). */
export function protocolOption(text: string | undefined): "v2" | "v3" {
  const value = (text ?? "v3").toLowerCase();
  if (value !== "v2" && value !== "v3") throw new CliUsageError(`--protocol must be v3 or v2, got "${text}"`);
  return value;
}

/** A usage mistake: printed without a stack, exit status 2. */
export class CliUsageError extends Error {}
