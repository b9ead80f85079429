// The request side of the API's own HTTP/1.1 clients (over v3 streams: http1-exchange.ts; over v1
// data connections: legacy-exchange.ts): the request head as one string, checked as Node's client
// checks it, and the chunked framing of a streamed body. The answer is read by http1-parser.ts.
//
// Why not http.request: a ClientRequest, its socket shims and a parser per call cost most of a small
// call's CPU; the head here is one string joined once and leaves with the body's first bytes.

import { forEachEndToEnd, isToken } from "../../tunnel/headers.ts";

const CRLF = Buffer.from("\r\n");
/** What Node's client refuses in a header value (checkInvalidHeaderChar). */
const INVALID_VALUE = /[^\t\x20-\x7e\x80-\xff]/;
/** What Node's client refuses in a request path (INVALID_PATH_REGEX). */
const INVALID_PATH = /[^\u0021-\u00ff]/;
/** Methods whose requests Node sends without a body header when they have none. */
const BODYLESS_METHODS = new Set(["GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"]);

/** How the request body travels: none, a known length, or chunked. */
export type BodyFraming = "none" | "length" | "chunked";

/**
 * The request head, or an Error naming what a caller got wrong (an invalid method, path or header:
 * the bytes would let a caller inject lines). Only the end-to-end headers of `headers` are sent
 * (headers.ts), nor those named in `drop`; names go lower-case. The body's framing decides the
 * length header: a body of known `length` (given whole) sends that length, whatever the caller's
 * Content-Length said; a streamed body with framing `length` sends the caller's Content-Length.
 */
export function requestHead(
  method: string,
  path: string,
  headers: Readonly<Record<string, string | string[] | number | undefined>> | undefined,
  body: { framing: BodyFraming; length?: number },
  connection: { host: string; keepAlive: boolean },
  drop?: ReadonlySet<string>,
): string | Error {
  if (!isToken(method)) return new Error(`invalid method ${JSON.stringify(method)}`);
  if (!path.startsWith("/") || INVALID_PATH.test(path)) return new Error("invalid request path");
  let head = `${method} ${path} HTTP/1.1\r\nhost: ${connection.host}\r\n`;
  if (!connection.keepAlive) head += "connection: close\r\n";
  const ours = body.framing === "length" && body.length !== undefined;
  let callersLength = false;
  let invalid: Error | null = null;
  forEachEndToEnd(headers, drop, (name, value) => {
    if (name === "content-length") {
      if (body.framing !== "length" || ours) return true;
      callersLength = true;
    }
    if (!isToken(name)) {
      invalid = new Error(`invalid header name ${JSON.stringify(name)}`);
      return false;
    }
    for (const v of Array.isArray(value) ? value : [String(value)]) {
      if (INVALID_VALUE.test(v)) {
        invalid = new Error(`invalid value of header ${name}`);
        return false;
      }
      head += `${name}: ${v}\r\n`;
    }
    return true;
  });
  if (invalid) return invalid;
  if (body.framing === "chunked") head += "transfer-encoding: chunked\r\n";
  else if (body.framing === "length" && !callersLength) head += `content-length: ${body.length ?? 0}\r\n`;
  else if (body.framing === "none" && !BODYLESS_METHODS.has(method)) head += "content-length: 0\r\n";
  return `${head}\r\n`;
}

/** The chunked-encoding frame of one body chunk. */
export function chunkFrame(chunk: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`${chunk.length.toString(16)}\r\n`, "latin1"), chunk, CRLF]);
}

/** The end of a chunked body (no trailers). */
export const LAST_CHUNK = Buffer.from("0\r\n\r\n", "latin1");
