// A streaming parser of HTTP/1.1 responses, for the API's own HTTP clients: over v3 streams
// (http1-exchange.ts) and over v1 data connections (legacy-exchange.ts). It parses the head only; body bytes are handed on as slices of what arrived
// (chunked framing removed), never gathered. No socket needed: tested on bytes.
//
// Why our own: Node's http.request costs tens of microseconds per call in agent, socket and stream
// machinery that a byte stream we already own does not need. Rules it keeps (RFC 9112):
// - 1xx answers (100 Continue, 103 Early Hints) are skipped; 101 is an error (no upgrades here).
// - HEAD, 204 and 304 have no body; Transfer-Encoding chunked wins over Content-Length (which is
//   then dropped); differing Content-Lengths are an error (response splitting); otherwise the body
//   runs to the end of the stream, and the connection cannot be reused.
// - Bounds: a head of at most MAX_HEAD bytes, chunk-size and trailer lines of at most MAX_LINE.

import { connectionTokens, isHopByHop, isLowerCase, isToken } from "../../tunnel/headers.ts";

export const MAX_HEAD = 64 * 1024;
const HEAD_END = Buffer.from("\r\n\r\n");

const MAX_LINE = 8 * 1024;

export type BodyKind = "none" | "length" | "chunked" | "close";

export interface ResponseHead {
  status: number;
  statusMessage: string;
  /**
   * The end-to-end headers: lower-case names, a repeated header joined with ", " (Set-Cookie: a
   * list), as Node does; never the hop-by-hop ones (headers.ts), nor those `Connection` names.
   */
  headers: Record<string, string | string[]>;
  bodyKind: BodyKind;
  /** The connection may carry another request after this answer. */
  keepAlive: boolean;
}

export interface ResponseHandler {
  head(head: ResponseHead): void;
  body(chunk: Buffer): void;
  /** The body is complete (for "close" bodies: after end()). */
  complete(): void;
  error(message: string): void;
}

type State = "head" | "length" | "chunk-size" | "chunk-data" | "chunk-crlf" | "trailers" | "close" | "done";

export class Http1ResponseParser {
  readonly #h: ResponseHandler;
  readonly #head: boolean;
  #state: State = "head";
  /** Head bytes (or a partial line) gathered across pushes. */
  #pending: Buffer | null = null;
  #left = 0;
  #failed = false;
  #overrun = false;

  /** `isHead`: the request was HEAD (no body whatever the headers say). */
  constructor(handler: ResponseHandler, isHead: boolean) {
    this.#h = handler;
    this.#head = isHead;
  }

  get done(): boolean {
    return this.#state === "done";
  }

  /** Bytes came past the complete answer: the connection must not carry another request. */
  get overrun(): boolean {
    return this.#overrun;
  }

  /** True while no byte of a response has arrived. */
  get untouched(): boolean {
    return this.#state === "head" && this.#pending === null;
  }

  push(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length && !this.#failed) {
      switch (this.#state) {
        case "head":
          off = this.#readHead(chunk, off);
          break;
        case "length": {
          const take = Math.min(this.#left, chunk.length - off);
          const slice = chunk.subarray(off, off + take);
          off += take;
          this.#left -= take;
          this.#h.body(slice);
          if (this.#left === 0) this.#finish();
          break;
        }
        case "close":
          this.#h.body(off === 0 ? chunk : chunk.subarray(off));
          off = chunk.length;
          break;
        case "chunk-data": {
          const take = Math.min(this.#left, chunk.length - off);
          const slice = chunk.subarray(off, off + take);
          off += take;
          this.#left -= take;
          if (this.#left === 0) this.#state = "chunk-crlf";
          this.#h.body(slice);
          break;
        }
        case "chunk-size":
        case "chunk-crlf":
        case "trailers":
          off = this.#readLine(chunk, off);
          break;
        case "done":
          // Bytes past a complete answer (a target sending beyond its length, or answering ahead):
          // the answer stands, the connection cannot be trusted with another one.
          this.#overrun = true;
          return;
      }
    }
  }

  /** The stream ended: completes a close-delimited body, else it was cut short. */
  end(): void {
    if (this.#failed || this.#state === "done") return;
    if (this.#state === "close") this.#finish();
    else
      this.#fail(
        this.#state === "head"
          ? "the connection ended before the response head"
          : "the connection ended in the middle of the body",
      );
  }

  #readHead(chunk: Buffer, off: number): number {
    const data = this.#pending ? Buffer.concat([this.#pending, chunk.subarray(off)]) : chunk.subarray(off);
    const end = data.indexOf(HEAD_END);
    if (end < 0) {
      if (data.length > MAX_HEAD) this.#fail(`response head too large (over ${MAX_HEAD} bytes)`);
      else this.#pending = Buffer.from(data);
      return chunk.length;
    }
    const consumedFromChunk = end + 4 - (this.#pending ? this.#pending.length : 0);
    this.#pending = null;
    if (end + 4 > MAX_HEAD) {
      this.#fail(`response head too large (over ${MAX_HEAD} bytes)`);
      return chunk.length;
    }
    this.#parseHead(data.toString("latin1", 0, end));
    return off + consumedFromChunk;
  }

  #parseHead(text: string): void {
    // A scan over the text, not split() and a regex per line: this runs once per call.
    let eol = text.indexOf("\r\n");
    if (eol < 0) eol = text.length;
    const status = statusOf(text, eol);
    if (status < 0) {
      this.#fail(`invalid status line ${JSON.stringify(text.slice(0, Math.min(eol, 80)))}`);
      return;
    }
    const minor = text.charCodeAt(7) - 48;
    const headers: Record<string, string | string[]> = {};
    // The framing headers, noted as they pass (values as joined, names lower-case).
    let connection: string | undefined;
    let transferEncoding: string | undefined;
    let at = eol + 2;
    while (at < text.length) {
      let next = text.indexOf("\r\n", at);
      if (next < 0) next = text.length;
      const colon = text.indexOf(":", at);
      const first = text.charCodeAt(at);
      if (colon < 0 || colon >= next || colon === at || first === 32 || first === 9) {
        this.#fail(`invalid header line ${JSON.stringify(text.slice(at, Math.min(next, at + 80)))}`);
        return;
      }
      const raw = text.slice(at, colon);
      if (!isToken(raw)) {
        this.#fail(`invalid header name ${JSON.stringify(raw.toLowerCase().slice(0, 80))}`);
        return;
      }
      const name = isLowerCase(raw) ? raw : raw.toLowerCase();
      const value = trimOws(text, colon + 1, next);
      at = next + 2;
      if (isHopByHop(name)) {
        // The framing headers are read here and never handed on.
        if (name === "connection") connection = connection === undefined ? value : `${connection}, ${value}`;
        else if (name === "transfer-encoding")
          transferEncoding = transferEncoding === undefined ? value : `${transferEncoding}, ${value}`;
        continue;
      }
      const had = headers[name];
      if (had === undefined) headers[name] = name === "set-cookie" ? [value] : value;
      else if (Array.isArray(had)) had.push(value);
      else if (name !== "content-length") headers[name] = `${had}, ${value}`;
      else if (had !== value) {
        this.#fail("conflicting Content-Length");
        return;
      }
    }
    if (status >= 100 && status < 200) {
      if (status === 101) {
        this.#fail("the target switched protocols on a plain request");
        return;
      }
      return; // 100 Continue, 103 Early Hints: the real answer follows.
    }
    const named = connectionTokens(connection);
    const keepAlive = minor === 1 ? !named.has("close") : named.has("keep-alive");
    const statusMessage = eol > 13 ? text.slice(13, eol) : "";
    const head: ResponseHead = {
      status,
      statusMessage,
      headers: withoutNamed(headers, named),
      bodyKind: "none",
      keepAlive,
    };
    if (this.#head || status === 204 || status === 304) {
      this.#h.head(head);
      this.#finish();
      return;
    }
    if (transferEncoding !== undefined) {
      const te = tokens(transferEncoding);
      if (te.length > 0) {
        if (te[te.length - 1] !== "chunked") {
          head.bodyKind = "close";
          head.keepAlive = false;
          delete head.headers["content-length"];
          this.#state = "close";
          this.#h.head(head);
          return;
        }
        delete head.headers["content-length"];
        head.bodyKind = "chunked";
        this.#state = "chunk-size";
        this.#h.head(head);
        return;
      }
    }
    const cl = head.headers["content-length"];
    if (cl !== undefined) {
      const length = contentLength(cl);
      if (length < 0) {
        this.#fail(`invalid Content-Length ${JSON.stringify(cl)}`);
        return;
      }
      head.headers["content-length"] = String(length);
      head.bodyKind = "length";
      this.#h.head(head);
      if (length === 0) this.#finish();
      else {
        this.#left = length;
        this.#state = "length";
      }
      return;
    }
    head.bodyKind = "close";
    head.keepAlive = false;
    this.#state = "close";
    this.#h.head(head);
  }

  /** Chunk-size lines, the CRLF after chunk data, and trailer lines. */
  #readLine(chunk: Buffer, off: number): number {
    const nl = chunk.indexOf(10, off);
    if (nl < 0) {
      const part = chunk.subarray(off);
      this.#pending = this.#pending ? Buffer.concat([this.#pending, part]) : Buffer.from(part);
      if (this.#pending.length > MAX_LINE) this.#fail("chunk line too long");
      return chunk.length;
    }
    let line = chunk.subarray(off, nl + 1);
    if (this.#pending) {
      line = Buffer.concat([this.#pending, line]);
      this.#pending = null;
    }
    if (line.length > MAX_LINE) {
      this.#fail("chunk line too long");
      return chunk.length;
    }
    const text = line.toString("latin1").replace(/\r?\n$/, "");
    this.#line(text);
    return nl + 1;
  }

  #line(text: string): void {
    if (this.#state === "chunk-crlf") {
      if (text !== "") {
        this.#fail("missing CRLF after chunk data");
        return;
      }
      this.#state = "chunk-size";
      return;
    }
    if (this.#state === "trailers") {
      if (text === "") this.#finish();
      return; // Trailers are not passed on (the caller's answer is already under way).
    }
    const size = /^([0-9a-fA-F]{1,12})[ \t]*(?:;.*)?$/.exec(text);
    if (!size) {
      this.#fail(`invalid chunk size line ${JSON.stringify(text.slice(0, 40))}`);
      return;
    }
    const n = Number.parseInt(size[1], 16);
    if (n === 0) this.#state = "trailers";
    else {
      this.#left = n;
      this.#state = "chunk-data";
    }
  }

  #finish(): void {
    this.#state = "done";
    this.#h.complete();
  }

  #fail(message: string): void {
    if (this.#failed) return;
    this.#failed = true;
    this.#h.error(message);
  }
}

/**
 * `headers` without those a `Connection` value names (RFC 9110 §7.6.1): the same object when it
 * names none of them (`keep-alive` and `close` are options, not names, in nearly every answer).
 */
function withoutNamed(
  headers: Record<string, string | string[]>,
  named: ReadonlySet<string>,
): Record<string, string | string[]> {
  let any = false;
  for (const name of named) if (headers[name] !== undefined) any = true;
  if (!any) return headers;
  const out: Record<string, string | string[]> = {};
  for (const name of Object.keys(headers)) if (!named.has(name)) out[name] = headers[name];
  return out;
}

/**
 * The status of a status line `HTTP/1.x DDD[ reason]` (text[0, eol)), or -1 when it is not one:
 * what STATUS_LINE matches, by char codes (the reason may hold anything but CR and LF).
 */
function statusOf(text: string, eol: number): number {
  if (eol < 12 || !text.startsWith("HTTP/1.")) return -1;
  const minor = text.charCodeAt(7);
  if ((minor !== 48 && minor !== 49) || text.charCodeAt(8) !== 32) return -1;
  let status = 0;
  for (let i = 9; i < 12; i++) {
    const d = text.charCodeAt(i) - 48;
    if (d < 0 || d > 9) return -1;
    status = status * 10 + d;
  }
  if (eol > 12 && text.charCodeAt(12) !== 32) return -1;
  return status;
}

/** text[from, to) without the optional whitespace (SP, HTAB) around a field value. */
function trimOws(text: string, from: number, to: number): string {
  while (from < to && isOws(text.charCodeAt(from))) from++;
  while (to > from && isOws(text.charCodeAt(to - 1))) to--;
  return text.slice(from, to);
}

function isOws(c: number): boolean {
  return c === 32 || c === 9;
}

/**
 * A Content-Length value (repeated values joined with ", ", all equal, RFC 9110 §8.6), or -1 when
 * it is not one: up to 15 digits.
 */
function contentLength(value: string | string[]): number {
  const text = Array.isArray(value) ? value.join(",") : value;
  let length = -1;
  let digits = 0;
  let n = 0;
  for (let i = 0; i <= text.length; i++) {
    const c = i < text.length ? text.charCodeAt(i) : 44;
    if (c >= 48 && c <= 57) {
      if (++digits > 15) return -1;
      n = n * 10 + (c - 48);
    } else if (c === 44) {
      if (digits === 0 || (length >= 0 && n !== length)) return -1;
      length = n;
      n = 0;
      digits = 0;
    } else if (!isOws(c)) return -1;
    else if (digits > 0) {
      // Whitespace only around a value, never inside it: after a value's digits, only a comma.
      while (i + 1 < text.length && isOws(text.charCodeAt(i + 1))) i++;
      const after = i + 1 < text.length ? text.charCodeAt(i + 1) : 44;
      if (after !== 44) return -1;
    }
  }
  return length;
}

function tokens(value: string | string[] | undefined): string[] {
  if (value === undefined) return [];
  const all = Array.isArray(value) ? value.join(",") : value;
  return all
    .toLowerCase()
    .split(",")
    .map((t) => t.trim())
    .filter((t) => t.length > 0);
}
