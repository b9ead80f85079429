// Which headers cross a hop. Every hop the tunnel makes (caller -> HTTP/2 stream, stream -> target,
// answer back, and the v1 data connection) keeps the end-to-end headers and drops the rest:
// HTTP/2 pseudo-headers, hop-by-hop headers (HOP_BY_HOP) and unset values.

import { HOP_BY_HOP } from "./constants.ts";

type HeaderValue = string | string[] | number | undefined;

/** Copies the end-to-end headers of `from` into `into` (names lower-cased) and returns `into`. */
export function copyEndToEnd<T extends Record<string, HeaderValue> = Record<string, string | string[]>>(
  from: Readonly<Record<string, HeaderValue>> | undefined,
  into: T = {} as T,
): T {
  if (!from) return into;
  for (const [name, value] of Object.entries(from)) {
    const key = name.toLowerCase();
    if (value === undefined || key.startsWith(":") || HOP_BY_HOP.has(key)) continue;
    (into as Record<string, HeaderValue>)[key] = value;
  }
  return into;
}
