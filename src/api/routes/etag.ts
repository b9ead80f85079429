// Entity tags for the screenshot endpoint: a strong tag from the bytes' SHA-256, and the
// If-None-Match comparison (a list, weak tags compared weakly, `*`), per RFC 9110 §13.1.2.

import { createHash } from "node:crypto";

export function etagOf(bytes: Buffer): string {
  return `"${createHash("sha256").update(bytes).digest("base64url").slice(0, 32)}"`;
}

function opaque(tag: string): string {
  return tag.trim().replace(/^W\//, "");
}

/** True when the If-None-Match header value matches `etag` (so the answer is 304). */
export function ifNoneMatchHits(header: string | string[] | undefined, etag: string): boolean {
  if (!header) return false;
  const value = Array.isArray(header) ? header.join(",") : header;
  if (value.trim() === "*") return true;
  const wanted = opaque(etag);
  return value.split(",").some((tag) => opaque(tag) === wanted);
}
