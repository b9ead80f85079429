// Log lines for a person at a terminal: pino's JSON line turned into
//   15:04:05.123 INFO  revdial-server: sandbox started  session_id=ses_… pid=4242
// with the level coloured (unless NO_COLOR is set), the fields after the message as key=value,
// and an error's stack below its line. Machines get the JSON itself (logger.ts decides which).

import { writeSync } from "node:fs";

const LEVELS: Record<number, { label: string; colour: string }> = {
  10: { label: "TRACE", colour: "\x1b[90m" },
  20: { label: "DEBUG", colour: "\x1b[36m" },
  30: { label: "INFO ", colour: "\x1b[32m" },
  40: { label: "WARN ", colour: "\x1b[33m" },
  50: { label: "ERROR", colour: "\x1b[31m" },
  60: { label: "FATAL", colour: "\x1b[35m" },
};
const DIM = "\x1b[2m";
const BOLD = "\x1b[1m";
const RESET = "\x1b[0m";

interface ErrorField {
  message?: string;
  stack?: string;
  type?: string;
}

/** One pino JSON line as one readable line (plus an error's stack); other text passes unchanged. */
export function prettyLine(line: string, colour: boolean): string {
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line.endsWith("\n") ? line : `${line}\n`;
  }
  const { level, time, name, msg, err, ...fields } = entry;
  const paint = (code: string, text: string) => (colour ? `${code}${text}${RESET}` : text);
  const info = LEVELS[level as number] ?? { label: String(level).padEnd(5), colour: "" };
  const clock = typeof time === "string" ? time.slice(11, 23) : new Date().toISOString().slice(11, 23);
  let out = `${paint(DIM, clock)} ${paint(info.colour, info.label)} `;
  if (name) out += paint(DIM, `${name}: `);
  out += colour && (level as number) >= 40 ? paint(BOLD, String(msg ?? "")) : String(msg ?? "");
  const error = err as ErrorField | undefined;
  if (error?.message) fields.err = error.message;
  for (const [key, value] of Object.entries(fields)) out += `  ${paint(DIM, `${key}=`)}${show(value)}`;
  out += "\n";
  if (error?.stack && (level as number) >= 50) {
    const stack = error.stack.split("\n").slice(1).join("\n");
    if (stack) out += `${paint(DIM, stack)}\n`;
  }
  return out;
}

function show(value: unknown): string {
  if (typeof value === "string") return /^[^\s"=]+$/.test(value) ? value : JSON.stringify(value);
  return JSON.stringify(value) ?? String(value);
}

/** A pino destination that writes pretty lines synchronously to `fd`. */
export function prettyDestination(fd: number, colour: boolean): { write(chunk: string): boolean } {
  return {
    write(chunk: string): boolean {
      const text = chunk
        .split("\n")
        .filter((l) => l.length > 0)
        .map((l) => prettyLine(l, colour))
        .join("");
      let buffer = Buffer.from(text);
      for (let tries = 0; buffer.length > 0 && tries < 100; tries++) {
        try {
          buffer = buffer.subarray(writeSync(fd, buffer));
        } catch (err) {
          // A non-blocking terminal that is full: try again; anything else (it is gone): give up.
          if ((err as NodeJS.ErrnoException).code !== "EAGAIN") break;
        }
      }
      return true;
    },
  };
}
