// Structured logging. Every component receives a pino logger from its caller (never a global);
// children carry runner_id, session_id and wolf_id fields. Credentials are redacted by path.
// Lines are JSON, except on a terminal: when both standard output and standard error are TTYs (and
// no format was asked for with --log-format or REVDIAL_LOG_FORMAT), they are pretty and coloured.

import { isatty } from "node:tty";
import { type Logger, pino } from "pino";
import { prettyDestination } from "./log-pretty.ts";

export type { Logger };

export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

const REDACT = [
  "token",
  "api_key",
  "authorization",
  "headers.authorization",
  'headers["x-api-key"]',
  "req.headers.authorization",
  'req.headers["x-api-key"]',
];

export const LOG_FORMATS = ["json", "pretty"] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

/** The format when none is asked for: pretty on a terminal, JSON when either stream is not a TTY. */
export function defaultLogFormat(): LogFormat {
  return isatty(1) && isatty(2) ? "pretty" : "json";
}

export interface LoggerOptions {
  level?: LogLevel;
  name?: string;
  /** Where lines go; standard error by default so that command output stays clean. */
  destination?: NodeJS.WritableStream | number;
  /** JSON lines, or pretty ones for a person (fd destinations only); default defaultLogFormat(). */
  format?: LogFormat;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const destination = options.destination ?? 2;
  const format = options.format ?? (typeof destination === "number" ? defaultLogFormat() : "json");
  const stream =
    typeof destination !== "number"
      ? destination
      : format === "pretty"
        ? prettyDestination(destination, !process.env.NO_COLOR && isatty(destination))
        : pino.destination({ fd: destination, sync: true });
  return pino(
    {
      level: options.level ?? "info",
      name: options.name,
      redact: { paths: REDACT, censor: "[redacted]" },
      base: undefined,
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    stream,
  );
}

/** A logger that drops everything: the default for library use and tests. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
