// Which headers cross a hop. Every hop the tunnel makes (caller -> HTTP/2 stream, stream -> target,
// answer back, and the v1 data connection) keeps the end-to-end headers and drops the rest
// (RFC 9110 §7.6.1): HTTP/2 pseudo-headers, the fixed hop-by-hop set (HOP_BY_HOP: Connection,
// Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade, Proxy-Authorization,
// Proxy-Authenticate, plus Host and HTTP2-Settings, which each hop sets itself), every header the
// `Connection` header names, the tunnel's own signalling header (BODY_END_HEADER), and unset values.

import { BODY_END_HEADER, HOP_BY_HOP } from "./constants.ts";

type HeaderValue = string | string[] | number | undefined;

/** The header names listed in a `Connection` value (`close, X-Foo` -> {"close", "x-foo"}). */
export function connectionTokens(value: HeaderValue): Set<string> {
  const tokens = new Set<string>();
  if (value === undefined) return tokens;
  for (const part of Array.isArray(value) ? value : [String(value)]) {
    for (const token of part.split(",")) {
      const name = token.trim().toLowerCase();
      if (name) tokens.add(name);
    }
  }
  return tokens;
}

/** Copies the end-to-end headers of `from` into `into` (names lower-cased) and returns `into`. */
export function copyEndToEnd<T extends Record<string, HeaderValue> = Record<string, string | string[]>>(
  from: Readonly<Record<string, HeaderValue>> | undefined,
  into: T = {} as T,
): T {
  if (!from) return into;
  let named: Set<string> | null = null;
  for (const name of Object.keys(from)) {
    if (name.toLowerCase() === "connection") named = connectionTokens(from[name]);
  }
  for (const [name, value] of Object.entries(from)) {
    const key = name.toLowerCase();
    if (value === undefined || key.startsWith(":") || HOP_BY_HOP.has(key) || key === BODY_END_HEADER) {
      continue;
    }
    if (named?.has(key)) continue;
    (into as Record<string, HeaderValue>)[key] = value;
  }
  return into;
}
