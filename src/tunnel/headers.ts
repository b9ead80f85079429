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

/**
 * Copies the end-to-end headers of `from` into `into` (names lower-cased), leaving out the names in
 * `drop` too (lower-case), and returns `into`. It only adds properties: a header object that lost
 * one to `delete` would be slow to read for every hop after it.
 */
export function copyEndToEnd<T extends Record<string, HeaderValue> = Record<string, string | string[]>>(
  from: Readonly<Record<string, HeaderValue>> | undefined,
  into: T = {} as T,
  drop?: ReadonlySet<string>,
): T {
  if (!from) return into;
  const names = Object.keys(from);
  let named: Set<string> | null = null;
  for (const name of names) {
    if (name.length === 10 && name.toLowerCase() === "connection") named = connectionTokens(from[name]);
  }
  for (const name of names) {
    const value = from[name];
    if (value === undefined) continue;
    const key = isLowerCase(name) ? name : name.toLowerCase();
    if (key.charCodeAt(0) === 58 || HOP_BY_HOP.has(key) || key === BODY_END_HEADER) continue; // 58: ":"
    if (named?.has(key) || drop?.has(key)) continue;
    (into as Record<string, HeaderValue>)[key] = value;
  }
  return into;
}

/** True when `name` has no upper-case ASCII letter (Node's parsers give names lower-cased). */
export function isLowerCase(name: string): boolean {
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c >= 65 && c <= 90) return false;
  }
  return true;
}
