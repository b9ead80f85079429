// A small streaming WebSocket codec (RFC 6455) for protocol v3's `ws` transport: frame headers in,
// payload slices out as they arrive, unmasked in place; frames out as one header plus the payload
// buffers, masked (the agent's side) with a fresh random key per frame.
//
// Why not the `ws` library here: its receiver gathers and copies every message before handing it
// on, which caps bulk transfer at 0.6-0.9 GB/s and costs a copy per small call; the v3 byte stream
// needs no message boundaries at all (PROTOCOL.md: they mean nothing). v1 and v2 keep using `ws`.
// Extensions are never negotiated, so RSV bits are errors; text messages are errors (1003).

import { createHash, randomFillSync } from "node:crypto";
import bufferUtil from "bufferutil";

export const WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

export const WS_OPCODE = Object.freeze({
  CONTINUATION: 0x0,
  TEXT: 0x1,
  BINARY: 0x2,
  CLOSE: 0x8,
  PING: 0x9,
  PONG: 0xa,
});

/** `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`. */
export function acceptKey(key: string): string {
  return createHash("sha1")
    .update(key + WS_GUID)
    .digest("base64");
}

/** A `Sec-WebSocket-Key` is 16 random bytes in base64. */
export function isValidKey(key: unknown): key is string {
  return typeof key === "string" && /^[A-Za-z0-9+/]{22}==$/.test(key);
}

export interface WsReaderHandler {
  /** A slice of a binary (or continuation) frame's payload. */
  data(chunk: Buffer): void;
  ping(payload: Buffer): void;
  pong(): void;
  close(code: number, reason: string): void;
  /** The peer broke the protocol; `closeCode` is what to send (1002, 1003, 1009). */
  error(closeCode: number, message: string): void;
}

/**
 * Reads frames from one side of a WebSocket. `expectMasked`: frames must be masked (the server
 * reads the client's) or must not be (the client reads the server's). Never throws.
 */
export class WsReader {
  readonly #h: WsReaderHandler;
  readonly #expectMasked: boolean;
  readonly #maxFrame: number;
  readonly #head = Buffer.allocUnsafe(14);
  #headHave = 0;
  /** Payload bytes left of the current frame (-1: reading a header). */
  #left = -1;
  #opcode = 0;
  #masked = false;
  readonly #mask = Buffer.allocUnsafe(4);
  /** Payload offset within the current frame, for the mask's rotation. */
  #offset = 0;
  /** A control frame's payload, gathered whole (at most 125 bytes). */
  #control: Buffer | null = null;
  #controlHave = 0;
  #failed = false;

  constructor(handler: WsReaderHandler, options: { expectMasked: boolean; maxFrameBytes: number }) {
    this.#h = handler;
    this.#expectMasked = options.expectMasked;
    this.#maxFrame = options.maxFrameBytes;
  }

  push(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length && !this.#failed) {
      if (this.#left < 0) {
        off = this.#readHead(chunk, off);
        continue;
      }
      const take = Math.min(this.#left, chunk.length - off);
      const slice = chunk.subarray(off, off + take);
      off += take;
      this.#left -= take;
      if (this.#masked) unmaskAt(slice, this.#mask, this.#offset);
      this.#offset += take;
      if (this.#control) {
        slice.copy(this.#control, this.#controlHave);
        this.#controlHave += take;
      } else if (take > 0) this.#h.data(slice);
      if (this.#left === 0) this.#endFrame();
    }
  }

  /** Gathers a frame header; returns the new offset. */
  #readHead(chunk: Buffer, off: number): number {
    const need = () => {
      if (this.#headHave < 2) return 2;
      const len = this.#head[1] & 0x7f;
      const ext = len === 126 ? 2 : len === 127 ? 8 : 0;
      return 2 + ext + (this.#head[1] & 0x80 ? 4 : 0);
    };
    while (off < chunk.length) {
      const want = need();
      if (this.#headHave >= want) break;
      const take = Math.min(want - this.#headHave, chunk.length - off);
      chunk.copy(this.#head, this.#headHave, off, off + take);
      this.#headHave += take;
      off += take;
    }
    if (this.#headHave < 2 || this.#headHave < need()) return off;
    this.#startFrame();
    return off;
  }

  #startFrame(): void {
    const h = this.#head;
    this.#headHave = 0;
    const fin = (h[0] & 0x80) !== 0;
    if (h[0] & 0x70) {
      this.#fail(1002, "RSV bits set without an extension");
      return;
    }
    const opcode = h[0] & 0x0f;
    this.#masked = (h[1] & 0x80) !== 0;
    if (this.#masked !== this.#expectMasked) {
      this.#fail(1002, this.#expectMasked ? "unmasked frame from a client" : "masked frame from a server");
      return;
    }
    let len = h[1] & 0x7f;
    let at = 2;
    if (len === 126) {
      len = h.readUInt16BE(2);
      at = 4;
    } else if (len === 127) {
      const high = h.readUInt32BE(2);
      len = h.readUInt32BE(6);
      at = 10;
      if (high !== 0) {
        this.#fail(1009, "frame too large");
        return;
      }
    }
    if (this.#masked) h.copy(this.#mask, 0, at, at + 4);
    this.#offset = 0;
    this.#opcode = opcode;
    if (opcode >= 0x8) {
      if (!fin || len > 125) {
        this.#fail(1002, "invalid control frame");
        return;
      }
      if (opcode !== WS_OPCODE.CLOSE && opcode !== WS_OPCODE.PING && opcode !== WS_OPCODE.PONG) {
        this.#fail(1002, `unknown opcode ${opcode}`);
        return;
      }
      this.#control = Buffer.allocUnsafe(len);
      this.#controlHave = 0;
    } else {
      if (opcode === WS_OPCODE.TEXT) {
        this.#fail(1003, "text messages are not allowed");
        return;
      }
      if (opcode !== WS_OPCODE.BINARY && opcode !== WS_OPCODE.CONTINUATION) {
        this.#fail(1002, `unknown opcode ${opcode}`);
        return;
      }
      if (len > this.#maxFrame) {
        this.#fail(1009, `frame of ${len} bytes over ${this.#maxFrame}`);
        return;
      }
      this.#control = null;
    }
    this.#left = len;
    if (len === 0) this.#endFrame();
  }

  #endFrame(): void {
    this.#left = -1;
    const control = this.#control;
    this.#control = null;
    if (!control) return;
    if (this.#opcode === WS_OPCODE.PING) this.#h.ping(control);
    else if (this.#opcode === WS_OPCODE.PONG) this.#h.pong();
    else {
      const code = control.length >= 2 ? control.readUInt16BE(0) : 1005;
      this.#h.close(code, control.subarray(2).toString("utf8"));
    }
  }

  #fail(code: number, message: string): void {
    this.#failed = true;
    this.#h.error(code, message);
  }
}

/** XORs `slice` in place with `mask`, as if the slice began at payload offset `offset`. */
function unmaskAt(slice: Buffer, mask: Buffer, offset: number): void {
  const r = offset & 3;
  if (r === 0) {
    bufferUtil.unmask(slice, mask);
    return;
  }
  const rotated = Buffer.from([mask[r], mask[(r + 1) & 3], mask[(r + 2) & 3], mask[(r + 3) & 3]]);
  bufferUtil.unmask(slice, rotated);
}

/** Random mask keys, drawn from a pooled buffer refilled in bulk (one syscall per 2,048 keys). */
class MaskPool {
  readonly #pool = Buffer.allocUnsafe(8192);
  #at = 8192;
  next(): Buffer {
    if (this.#at >= this.#pool.length) {
      randomFillSync(this.#pool);
      this.#at = 0;
    }
    const key = this.#pool.subarray(this.#at, this.#at + 4);
    this.#at += 4;
    return key;
  }
}

const masks = new MaskPool();

/**
 * One frame as buffers to write in order. `mask`: the client's side, which must mask; the payload
 * buffers are then masked IN PLACE (no copy, no allocation per byte): the caller hands them over.
 */
export function encodeWsFrame(
  opcode: number,
  payload: readonly Buffer[],
  length: number,
  mask: boolean,
): Buffer[] {
  const ext = length < 126 ? 0 : length < 65536 ? 2 : 8;
  const head = Buffer.allocUnsafe(2 + ext + (mask ? 4 : 0));
  head[0] = 0x80 | opcode;
  if (ext === 0) head[1] = length;
  else if (ext === 2) {
    head[1] = 126;
    head.writeUInt16BE(length, 2);
  } else {
    head[1] = 127;
    head.writeUInt32BE(Math.floor(length / 2 ** 32), 2);
    head.writeUInt32BE(length >>> 0, 6);
  }
  if (!mask) return [head, ...payload];
  head[1] |= 0x80;
  const key = head.subarray(2 + ext);
  masks.next().copy(key);
  let offset = 0;
  for (const p of payload) {
    if (p.length > 0) unmaskAt(p, key, offset);
    offset += p.length;
  }
  return [head, ...payload];
}

/** A close frame's payload: the code, then the reason cut to fit 125 bytes. */
export function closePayload(code: number, reason: string): Buffer {
  const text = Buffer.from(reason, "utf8").subarray(0, 123);
  const p = Buffer.allocUnsafe(2 + text.length);
  p.writeUInt16BE(code, 0);
  text.copy(p, 2);
  return p;
}
