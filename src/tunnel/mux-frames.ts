// Protocol v3's frames (docs/protocol.md, "v3: the revdial multiplexer"): encoding, and a streaming
// decoder that needs no socket, so the codec is tested on bytes.
//
// Why v3 exists: under v2 every call crosses HTTP/2 (nghttp2 plus Node's stream machinery) and an
// HTTP/1.1 client at the agent. v3 carries byte streams only: the API opens a stream per keep-alive
// connection it wants to a target, the agent pipes it to a socket and parses nothing. A frame is a
// 10-byte header and a payload:
//
//   type u8 | flags u8 | stream id u32 (big-endian) | payload length u32 (big-endian) | payload
//
// DATA payloads are handed on in slices as they arrive (a large frame is never buffered whole);
// every other frame is small and is delivered complete, bounded by MAX_CONTROL_PAYLOAD.

export const FRAME = Object.freeze({
  /** First frame each side sends. Payload: version u16, stream window u32, max DATA payload u32. */
  HELLO: 0,
  /** API -> agent: open stream `id` to the target named by the payload (UTF-8). */
  OPEN: 1,
  /** Agent -> API: the target of stream `id` is connected. */
  OPENED: 2,
  /** Bytes of stream `id`; flag FIN ends the sender's half. */
  DATA: 3,
  /** Payload u32: more bytes the sender of this frame may now receive on stream `id`. */
  WINDOW: 4,
  /** Stream `id` is cut. Payload: code u32, then a UTF-8 message. */
  RESET: 5,
  /** Payload: 8 opaque bytes; flag ACK on the answer, which echoes them. Stream id 0. */
  PING: 6,
  /** The sender opens or accepts no new stream. Payload: code u32, then a UTF-8 reason. */
  GOAWAY: 7,
});

export const FLAG = Object.freeze({ FIN: 1, ACK: 2 });

/** RESET and GOAWAY codes. */
export const MUX_CODE = Object.freeze({
  NONE: 0,
  /** The receiver no longer wants the stream (caller gone, deadline). */
  CANCEL: 1,
  /** OPEN named a target the agent does not allow (the API answers 403). */
  REFUSED: 2,
  /** OPEN's target could not be reached (the API answers 502). */
  UNREACHABLE: 3,
  /** The peer broke the protocol. */
  PROTOCOL: 4,
  /** The peer sent past its credit. */
  FLOW_CONTROL: 5,
  INTERNAL: 6,
});

export const MUX_VERSION = 1;
export const HEADER_BYTES = 10;

/** Largest payload of any frame but DATA; a larger one is a protocol error. */
export const MAX_CONTROL_PAYLOAD = 4096;

/** Largest DATA payload a receiver must accept (it may announce more in its HELLO). */
export const MIN_MAX_DATA = 16 * 1024;

export type FrameType = (typeof FRAME)[keyof typeof FRAME];

export interface Hello {
  version: number;
  window: number;
  maxData: number;
}

export function encodeHeader(type: number, flags: number, id: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(HEADER_BYTES);
  b[0] = type;
  b[1] = flags;
  b.writeUInt32BE(id, 2);
  b.writeUInt32BE(length, 6);
  return b;
}

/** A whole small frame in one buffer. */
export function encodeFrame(type: number, flags: number, id: number, payload?: Buffer): Buffer {
  const length = payload ? payload.length : 0;
  const b = Buffer.allocUnsafe(HEADER_BYTES + length);
  b[0] = type;
  b[1] = flags;
  b.writeUInt32BE(id, 2);
  b.writeUInt32BE(length, 6);
  if (payload) payload.copy(b, HEADER_BYTES);
  return b;
}

export function encodeHello(hello: Hello): Buffer {
  const p = Buffer.allocUnsafe(10);
  p.writeUInt16BE(hello.version, 0);
  p.writeUInt32BE(hello.window, 2);
  p.writeUInt32BE(hello.maxData, 6);
  return encodeFrame(FRAME.HELLO, 0, 0, p);
}

export function decodeHello(p: Buffer): Hello | null {
  if (p.length < 10) return null;
  return { version: p.readUInt16BE(0), window: p.readUInt32BE(2), maxData: p.readUInt32BE(6) };
}

export function encodeWindow(id: number, credit: number): Buffer {
  const b = Buffer.allocUnsafe(HEADER_BYTES + 4);
  b[0] = FRAME.WINDOW;
  b[1] = 0;
  b.writeUInt32BE(id, 2);
  b.writeUInt32BE(4, 6);
  b.writeUInt32BE(credit, 10);
  return b;
}

/** RESET and GOAWAY: a code and a message, the message cut to fit MAX_CONTROL_PAYLOAD. */
export function encodeCoded(type: number, id: number, code: number, message: string): Buffer {
  const text = Buffer.from(message, "utf8").subarray(0, MAX_CONTROL_PAYLOAD - 4);
  const p = Buffer.allocUnsafe(4 + text.length);
  p.writeUInt32BE(code, 0);
  text.copy(p, 4);
  return encodeFrame(type, 0, id, p);
}

export function decodeCoded(p: Buffer): { code: number; message: string } {
  if (p.length < 4) return { code: MUX_CODE.PROTOCOL, message: "" };
  return { code: p.readUInt32BE(0), message: p.subarray(4).toString("utf8") };
}

/** What the decoder hands on; the session implements it. */
export interface FrameHandler {
  /** A complete frame other than DATA. */
  frame(type: number, flags: number, id: number, payload: Buffer): void;
  /** A slice of a DATA frame's payload; `fin` is set on the frame's last slice when it carries FIN. */
  data(id: number, chunk: Buffer, fin: boolean): void;
  /** The byte stream is not valid v3: the caller must end the link. */
  error(message: string): void;
}

/**
 * Streaming decoder: push() any slice of the byte stream, in order. Never throws; a protocol error
 * is reported once through handler.error(), and everything after it is ignored.
 */
export class FrameDecoder {
  readonly #h: FrameHandler;
  readonly #maxData: number;
  /** Header bytes gathered across pushes. */
  readonly #header = Buffer.allocUnsafe(HEADER_BYTES);
  #headerHave = 0;
  /** The frame whose payload is being read (-1: reading a header). */
  #type = -1;
  #flags = 0;
  #id = 0;
  #left = 0;
  /** A control frame's payload, gathered whole. */
  #control: Buffer | null = null;
  #controlHave = 0;
  #failed = false;

  constructor(handler: FrameHandler, options: { maxData: number }) {
    this.#h = handler;
    this.#maxData = options.maxData;
  }

  push(chunk: Buffer): void {
    let off = 0;
    const n = chunk.length;
    while (off < n && !this.#failed) {
      if (this.#type < 0) {
        if (this.#headerHave === 0 && n - off >= HEADER_BYTES) {
          this.#start(chunk, off);
          off += HEADER_BYTES;
        } else {
          const take = Math.min(HEADER_BYTES - this.#headerHave, n - off);
          chunk.copy(this.#header, this.#headerHave, off, off + take);
          this.#headerHave += take;
          off += take;
          if (this.#headerHave < HEADER_BYTES) return;
          this.#headerHave = 0;
          this.#start(this.#header, 0);
        }
        continue;
      }
      const take = Math.min(this.#left, n - off);
      if (this.#type === FRAME.DATA) {
        this.#left -= take;
        const fin = this.#left === 0 && (this.#flags & FLAG.FIN) !== 0;
        const slice = chunk.subarray(off, off + take);
        off += take;
        if (this.#left === 0) this.#type = -1;
        this.#h.data(this.#id, slice, fin);
        continue;
      }
      const control = this.#control as Buffer;
      chunk.copy(control, this.#controlHave, off, off + take);
      this.#controlHave += take;
      this.#left -= take;
      off += take;
      if (this.#left === 0) this.#endControl(control);
    }
  }

  #start(b: Buffer, at: number): void {
    const type = b[at];
    this.#flags = b[at + 1];
    this.#id = b.readUInt32BE(at + 2);
    const length = b.readUInt32BE(at + 6);
    if (type > FRAME.GOAWAY) {
      this.#fail(`unknown frame type ${type}`);
      return;
    }
    if (type === FRAME.DATA) {
      if (length > this.#maxData) {
        this.#fail(`DATA frame of ${length} bytes over ${this.#maxData}`);
        return;
      }
      if (length === 0) {
        this.#h.data(this.#id, EMPTY, (this.#flags & FLAG.FIN) !== 0);
        return;
      }
      this.#type = type;
      this.#left = length;
      return;
    }
    if (length > MAX_CONTROL_PAYLOAD) {
      this.#fail(`frame type ${type} with ${length} bytes of payload`);
      return;
    }
    this.#type = type;
    if (length === 0) {
      this.#endControl(EMPTY);
      return;
    }
    this.#left = length;
    this.#control = Buffer.allocUnsafe(length);
    this.#controlHave = 0;
  }

  #endControl(payload: Buffer): void {
    const type = this.#type;
    this.#type = -1;
    this.#control = null;
    this.#h.frame(type, this.#flags, this.#id, payload);
  }

  #fail(message: string): void {
    this.#failed = true;
    this.#h.error(message);
  }
}

const EMPTY = Buffer.alloc(0);
