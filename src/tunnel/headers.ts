// Which headers cross a hop. Every hop the tunnel makes (caller -> HTTP/2 stream, stream -> target,
// answer back, and the v1 data connection) keeps the end-to-end headers and drops the rest
// (RFC 9110 §7.6.1): HTTP/2 pseudo-headers, the fixed hop-by-hop set (HOP_BY_HOP: Connection,
// Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade, Proxy-Authorization,
// Proxy-Authenticate, plus Host and HTTP2-Settings, which each hop sets itself), every header the
// `Connection` header names, the tunnel's own signalling header (BODY_END_HEADER), and unset values.

import { BODY_END_HEADER, HOP_BY_HOP } from "./constants.ts";

type HeaderValue = string | string[] | number | undefined;

/** What nearly every `Connection` value is, as a set made once: no split and no Set per message. */
const ONE_TOKEN: ReadonlyMap<string, ReadonlySet<string>> = new Map(
  ["keep-alive", "close", "upgrade"].map((t) => [t, new Set([t])]),
);

/** The header names listed in a `Connection` value (`close, X-Foo` -> {"close", "x-foo"}). */
export function connectionTokens(value: HeaderValue): ReadonlySet<string> {
  if (typeof value === "string" && value.length <= 10) {
    const one = ONE_TOKEN.get(value.toLowerCase());
    if (one) return one;
  }
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
 * Calls `fn` with each end-to-end header of `from` (its name lower-cased), in order, leaving out the
 * names in `drop` too (lower-case). Stops as soon as `fn` returns false.
 */
export function forEachEndToEnd(
  from: Readonly<Record<string, HeaderValue>> | undefined,
  drop: ReadonlySet<string> | undefined,
  fn: (name: string, value: string | string[] | number) => unknown,
): void {
  if (!from) return;
  const names = Object.keys(from);
  let named: ReadonlySet<string> | null = null;
  for (const name of names) {
    if (name.length === 10 && name.toLowerCase() === "connection") named = connectionTokens(from[name]);
  }
  for (const name of names) {
    const value = from[name];
    if (value === undefined) continue;
    const key = isLowerCase(name) ? name : name.toLowerCase();
    if (key.charCodeAt(0) === 58 || isHopByHop(key)) continue; // 58: ":"
    if (named?.has(key) || drop?.has(key)) continue;
    if (fn(key, value) === false) return;
  }
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
  forEachEndToEnd(from, drop, (name, value) => {
    (into as Record<string, HeaderValue>)[name] = value;
  });
  return into;
}

/** The value copyEndToEnd(from) would hold for `name` (lower-case), without making the copy. */
export function endToEndHeader(
  from: Readonly<Record<string, HeaderValue>> | undefined,
  name: string,
): string | string[] | number | undefined {
  let found: string | string[] | number | undefined;
  forEachEndToEnd(from, undefined, (key, value) => {
    if (key === name) found = value;
  });
  return found;
}

/** RFC 9110 token characters, by char code (methods, header names). */
const TOKEN_CHARS = new Uint8Array(128);
for (const c of "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
  TOKEN_CHARS[c.charCodeAt(0)] = 1;

/** True when `text` is an RFC 9110 token (a header name, a method): what a regex would say, by char codes. */
export function isToken(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 128 || TOKEN_CHARS[c] === 0) return false;
  }
  return text.length > 0;
}

/** HOP_BY_HOP and BODY_END_HEADER by name length: a header name is compared, not hashed, per call. */
const HOP_BY_LENGTH: string[][] = [];
for (const name of [...HOP_BY_HOP, BODY_END_HEADER]) {
  HOP_BY_LENGTH[name.length] ??= [];
  HOP_BY_LENGTH[name.length].push(name);
}

/** True for a (lower-case) header name that never crosses a hop, whatever `Connection` says. */
export function isHopByHop(name: string): boolean {
  const same = HOP_BY_LENGTH[name.length];
  if (same === undefined) return false;
  for (const hop of same) if (hop === name) return true;
  return false;
}

/** True when `name` has no upper-case ASCII letter (Node's parsers give names lower-cased). */
export function isLowerCase(name: string): boolean {
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c >= 65 && c <= 90) return false;
  }
  return true;
}
