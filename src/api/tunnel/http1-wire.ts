// The one HTTP/1.1 exchange a v1 call makes on its data connection (PROTOCOL.md v1: the API writes
// one request and reads one response on it): the request head written as one buffer, and the
// response read by a small parser that hands the body on as it arrives.
//
// Why not http.request over a Duplex: a v1 call pays for a new ClientRequest, its socket shims and an
// HTTP parser per call, and the request head leaves in a write of its own. Here the head is one
// string joined once, the response parser is a loop over the bytes, and the data connection is
// written to directly. What it reads is what Node's client accepts from a target: a status line,
// header lines, then a body framed by RFC 9112 §6.3 (none for HEAD, 1xx, 204 and 304; chunked;
// Content-Length; else up to the end of the connection). Interim 1xx answers are skipped.
//
// Bounds: the response head is at most MAX_HEAD_BYTES, a chunk-size line at most MAX_LINE_BYTES,
// a trailer line at most MAX_HEAD_BYTES (trailers are read and dropped). Past them the exchange
// fails (the caller sees 502).

const CRLF = Buffer.from("\r\n");
const HEAD_END = Buffer.from("\r\n\r\n");
/** Largest response head accepted (status line and headers). Node's own client allows 16 KiB. */
export const MAX_HEAD_BYTES = 64 * 1024;
/** Longest chunk-size line (with extensions). */
const MAX_LINE_BYTES = 4096;

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** What Node's client refuses in a header value (checkInvalidHeaderChar). */
const INVALID_VALUE = /[^\t\x20-\x7e\x80-\xff]/;
/** What Node's client refuses in a request path (INVALID_PATH_REGEX). */
const INVALID_PATH = /[^\u0021-\u00ff]/;
const STATUS_LINE = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/;
/** Methods whose requests Node sends without a body header when they have none. */
const BODYLESS_METHODS = new Set(["GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"]);

export type HeaderMap = Record<string, string | string[]>;

/** How the request body travels: none, a known length, or chunked. */
export type BodyFraming = "none" | "length" | "chunked";

/**
 * The request head, or an Error naming what a caller got wrong (an invalid method, path or header:
 * the bytes would let a caller inject lines). `headers` are end-to-end headers, names lower-case.
 */
export function requestHead(
  method: string,
  path: string,
  headers: Readonly<HeaderMap>,
  body: { framing: BodyFraming; length?: number },
): string | Error {
  if (!TOKEN.test(method)) return new Error(`invalid method ${JSON.stringify(method)}`);
  if (!path.startsWith("/") || INVALID_PATH.test(path)) return new Error("invalid request path");
  let head = `${method} ${path} HTTP/1.1\r\nhost: localhost:9876\r\nconnection: close\r\n`;
  for (const name of Object.keys(headers)) {
    if (name === "content-length" && body.framing !== "length") continue;
    if (!TOKEN.test(name)) return new Error(`invalid header name ${JSON.stringify(name)}`);
    const value = headers[name];
    for (const v of Array.isArray(value) ? value : [value]) {
      if (INVALID_VALUE.test(v)) return new Error(`invalid value of header ${name}`);
      head += `${name}: ${v}\r\n`;
    }
  }
  if (body.framing === "chunked") head += "transfer-encoding: chunked\r\n";
  else if (body.framing === "length" && headers["content-length"] === undefined)
    head += `content-length: ${body.length ?? 0}\r\n`;
  else if (body.framing === "none" && !BODYLESS_METHODS.has(method)) head += "content-length: 0\r\n";
  return `${head}\r\n`;
}

/** The chunked-encoding frame of one body chunk. */
export function chunkFrame(chunk: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`${chunk.length.toString(16)}\r\n`, "latin1"), chunk, CRLF]);
}

/** The end of a chunked body (no trailers). */
export const LAST_CHUNK = Buffer.from("0\r\n\r\n", "latin1");

export interface ResponseHead {
  status: number;
  /** Every header as received, names lower-case; repeated ones joined (set-cookie kept a list). */
  headers: HeaderMap;
}

export interface ResponseHandlers {
  head(head: ResponseHead): void;
  /** Body bytes, decoded from the framing. */
  body(chunk: Buffer): void;
  /** The body is complete. */
  end(): void;
  error(err: Error): void;
}

type State = "head" | "length" | "size" | "data" | "data-crlf" | "trailers" | "until-close" | "done";

/** Reads one HTTP/1.1 response from the bytes pushed into it; each handler but body() runs at most once. */
export class ResponseReader {
  readonly #h: ResponseHandlers;
  readonly #headRequest: boolean;
  #state: State = "head";
  #buffer: Buffer | null = null;
  #left = 0;

  constructor(method: string, handlers: ResponseHandlers) {
    this.#h = handlers;
    this.#headRequest = method === "HEAD";
  }

  get done(): boolean {
    return this.#state === "done";
  }

  /** True once the head has been read. */
  get headRead(): boolean {
    return this.#state !== "head";
  }

  /** Bytes from the connection, in order. */
  push(chunk: Buffer): void {
    let data = chunk;
    if (this.#buffer) {
      data = Buffer.concat([this.#buffer, chunk]);
      this.#buffer = null;
    }
    let at = 0;
    while (at < data.length && this.#state !== "done") {
      const next = this.#step(data, at);
      if (next < 0) {
        this.#keep(data, at);
        return;
      }
      at = next;
    }
  }

  /** The connection ended: completes a body that runs to the end, fails any other unfinished one. */
  end(): void {
    if (this.#state === "done") return;
    if (this.#state === "until-close") {
      this.#finish();
      return;
    }
    const what = this.#state === "head" ? "before the response head" : "in the middle of the body";
    this.#fail(`the connection ended ${what}`);
  }

  #keep(data: Buffer, at: number): void {
    const rest = data.subarray(at);
    const limit = this.#state === "size" ? MAX_LINE_BYTES : MAX_HEAD_BYTES;
    if (rest.length > limit) {
      this.#fail(this.#state === "size" ? "chunk-size line too long" : "response head too large");
      return;
    }
    this.#buffer = Buffer.from(rest);
  }

  /** One step of the state machine at `at`; the offset after what it took, or -1 for more bytes. */
  #step(data: Buffer, at: number): number {
    switch (this.#state) {
      case "head":
        return this.#readHead(data, at);
      case "length":
      case "data":
        return this.#readCounted(data, at);
      case "until-close":
        this.#h.body(data.subarray(at));
        return data.length;
      case "size":
        return this.#readSize(data, at);
      case "data-crlf":
        if (data.length - at < 2) return -1;
        if (data[at] !== 13 || data[at + 1] !== 10) return this.#fail("chunk not followed by CRLF");
        this.#state = "size";
        return at + 2;
      case "trailers":
        return this.#readTrailers(data, at);
      default:
        return data.length;
    }
  }

  #readHead(data: Buffer, at: number): number {
    const end = data.indexOf(HEAD_END, at);
    if (end < 0) return -1;
    if (end - at > MAX_HEAD_BYTES) return this.#fail("response head too large");
    const head = parseHead(data.toString("latin1", at, end));
    if (head instanceof Error) return this.#fail(head.message);
    const next = end + HEAD_END.length;
    // Interim answers (100 Continue, 103 Early Hints) come before the real one.
    if (head.status >= 100 && head.status < 200 && head.status !== 101) return next;
    const framing = bodyFraming(head, this.#headRequest);
    if (framing instanceof Error) return this.#fail(framing.message);
    this.#h.head(head);
    if (framing === "none") this.#finish();
    else if (framing === "chunked") this.#state = "size";
    else if (framing === "until-close") this.#state = "until-close";
    else {
      this.#left = Number(head.headers["content-length"]);
      this.#state = "length";
      if (this.#left === 0) this.#finish();
    }
    return next;
  }

  #readCounted(data: Buffer, at: number): number {
    const n = Math.min(this.#left, data.length - at);
    if (n > 0) this.#h.body(data.subarray(at, at + n));
    this.#left -= n;
    if (this.#left === 0) {
      if (this.#state === "length") this.#finish();
      else this.#state = "data-crlf";
    }
    return at + n;
  }

  #readSize(data: Buffer, at: number): number {
    const end = data.indexOf(CRLF, at);
    if (end < 0) return -1;
    if (end - at > MAX_LINE_BYTES) return this.#fail("chunk-size line too long");
    const line = data.toString("latin1", at, end);
    const size = /^([0-9A-Fa-f]{1,12})[ \t]*(?:;.*)?$/.exec(line);
    if (!size) return this.#fail("invalid chunk size");
    this.#left = Number.parseInt(size[1], 16);
    this.#state = this.#left === 0 ? "trailers" : "data";
    return end + 2;
  }

  #readTrailers(data: Buffer, at: number): number {
    // Trailers are read and dropped: TunnelResponse has none.
    const end = data.indexOf(CRLF, at);
    if (end < 0) return -1;
    if (end === at) {
      this.#finish();
      return end + 2;
    }
    return end + 2;
  }

  #finish(): void {
    this.#state = "done";
    this.#h.end();
  }

  #fail(reason: string): number {
    if (this.#state !== "done") {
      this.#state = "done";
      this.#h.error(new Error(`invalid response from the agent's target: ${reason}`));
    }
    return Number.MAX_SAFE_INTEGER;
  }
}

/** Status and headers from a response head (without its final CRLFCRLF), or an Error. */
export function parseHead(text: string): ResponseHead | Error {
  const lines = text.split("\r\n");
  const status = STATUS_LINE.exec(lines[0]);
  if (!status) return new Error("invalid status line");
  const headers: HeaderMap = {};
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    const colon = line.indexOf(":");
    if (colon <= 0) return new Error("invalid header line");
    const name = line.slice(0, colon).toLowerCase();
    if (!TOKEN.test(name)) return new Error("invalid header name");
    const value = line.slice(colon + 1).trim();
    const had = headers[name];
    if (had === undefined) headers[name] = name === "set-cookie" ? [value] : value;
    else if (Array.isArray(had)) had.push(value);
    else if (name === "content-length" && had !== value) return new Error("conflicting Content-Length");
    else if (name !== "content-length") headers[name] = `${had}, ${value}`;
  }
  return { status: Number(status[1]), headers };
}

/** How the response body is framed (RFC 9112 §6.3), or an Error for a length that is not one. */
export function bodyFraming(
  head: ResponseHead,
  headRequest: boolean,
): "none" | "chunked" | "length" | "until-close" | Error {
  const { status, headers } = head;
  if (headRequest || status === 204 || status === 304 || (status >= 100 && status < 200 && status !== 101))
    return "none";
  if (status === 101) return "until-close";
  const te = headers["transfer-encoding"];
  if (te !== undefined) {
    const codings = String(te).toLowerCase().split(",");
    return codings[codings.length - 1].trim() === "chunked" ? "chunked" : "until-close";
  }
  const length = headers["content-length"];
  if (length !== undefined) {
    if (!/^\d{1,15}$/.test(String(length))) return new Error("invalid Content-Length");
    return "length";
  }
  return "until-close";
}
