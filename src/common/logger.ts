// Structured logging. Every component receives a pino logger from its caller (never a global);
// children carry runner_id, session_id and wolf_id fields. Credentials are redacted by path.

import { type Logger, pino } from "pino";

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

export interface LoggerOptions {
  level?: LogLevel;
  name?: string;
  /** Where lines go; standard error by default so that command output stays clean. */
  destination?: NodeJS.WritableStream | number;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const destination = options.destination ?? 2;
  const stream =
    typeof destination === "number" ? pino.destination({ fd: destination, sync: true }) : destination;
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
