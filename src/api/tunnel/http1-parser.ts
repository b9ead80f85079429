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

export const MAX_HEAD = 64 * 1024;
const HEAD_END = Buffer.from("\r\n\r\n");
const STATUS_LINE = /^HTTP\/1\.[01] (\d{3})(?: (.*))?$/;

/** RFC 9110 token characters, by char code (header names). */
const TOKEN_CHARS = new Uint8Array(128);
for (const c of "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
  TOKEN_CHARS[c.charCodeAt(0)] = 1;

function isToken(name: string): boolean {
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c >= 128 || TOKEN_CHARS[c] === 0) return false;
  }
  return name.length > 0;
}
const MAX_LINE = 8 * 1024;

export type BodyKind = "none" | "length" | "chunked" | "close";

export interface ResponseHead {
  status: number;
  statusMessage: string;
  /** Lower-case names; a repeated header is joined with ", " (Set-Cookie: a list), as Node does. */
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
    const statusLine = text.slice(0, eol);
    const m = STATUS_LINE.exec(statusLine);
    if (!m) {
      this.#fail(`invalid status line ${JSON.stringify(statusLine.slice(0, 80))}`);
      return;
    }
    const minor = statusLine.charCodeAt(7) - 48;
    const status = Number(m[1]);
    const headers: Record<string, string | string[]> = {};
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
      const name = text.slice(at, colon).toLowerCase();
      if (!isToken(name)) {
        this.#fail(`invalid header name ${JSON.stringify(name.slice(0, 80))}`);
        return;
      }
      const value = text.slice(colon + 1, next).trim();
      at = next + 2;
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
    const connection = tokens(headers.connection);
    const keepAlive = minor === 1 ? !connection.includes("close") : connection.includes("keep-alive");
    const head: ResponseHead = { status, statusMessage: m[2] ?? "", headers, bodyKind: "none", keepAlive };
    if (this.#head || status === 204 || status === 304) {
      this.#h.head(head);
      this.#finish();
      return;
    }
    const te = tokens(headers["transfer-encoding"]);
    if (te.length > 0) {
      if (te[te.length - 1] !== "chunked") {
        head.bodyKind = "close";
        head.keepAlive = false;
        delete headers["content-length"];
        this.#state = "close";
        this.#h.head(head);
        return;
      }
      delete headers["content-length"];
      head.bodyKind = "chunked";
      this.#state = "chunk-size";
      this.#h.head(head);
      return;
    }
    const cl = headers["content-length"];
    if (cl !== undefined) {
      const values = (Array.isArray(cl) ? cl : [cl]).flatMap((v) => v.split(",").map((s) => s.trim()));
      if (!values.every((v) => v === values[0]) || !/^\d{1,15}$/.test(values[0])) {
        this.#fail(`invalid Content-Length ${JSON.stringify(cl)}`);
        return;
      }
      headers["content-length"] = values[0];
      const length = Number(values[0]);
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

function tokens(value: string | string[] | undefined): string[] {
  if (value === undefined) return [];
  const all = Array.isArray(value) ? value.join(",") : value;
  return all
    .toLowerCase()
    .split(",")
    .map((t) => t.trim())
    .filter((t) => t.length > 0);
}
