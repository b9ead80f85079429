// Recycled read buffers for sockets whose bytes only ever go out on a link: the agent's target
// sockets (mux-pump.ts). A socket made with `onread: pool.onread(...)` reads into a slab of the
// pool; the slab comes back once the link's socket has taken every byte of that read
// (MuxLink.onWritten), and the next read of any socket may fill it again.
//
// Why: each plain socket read is a fresh 64 KiB buffer, external memory that the garbage collector
// must reclaim: on a 64 MiB body through the agent that was a full mark-compact every 16-60 MiB,
// 13% of the agent's main thread and as much again in marking threads on the same two cores.
//
// Contracts (a slab given out while its bytes are still in use would corrupt data silently):
// - A slab holds one read. It is free again only when written() has been told of ALL of that
//   read's bytes, each byte once. Bytes that never reach the link (a stream reset, a queue dropped,
//   a link gone) keep their slab out of the pool for good: it is left to the garbage collector,
//   never recycled. So a consumer that keeps a slice, or drops one, costs memory, never bytes.
// - Only the link's completed writes release bytes; nothing else may call written().
// - The pool keeps at most `maxFree` free slabs; a socket holds one slab for its next read.
// No state outside the instance.

export interface ReadPoolOptions {
  /** Bytes per slab: the most one read takes. Default 64 KiB (what a plain socket read takes). */
  slabBytes?: number;
  /** Free slabs kept for reuse; past it a released slab is left to the garbage collector. Default 64. */
  maxFree?: number;
}

const DEFAULTS = Object.freeze({ slabBytes: 64 * 1024, maxFree: 64 });

interface Slab {
  readonly buffer: Buffer;
  /** Bytes of the current read not yet written by the link (-1: free or waiting for a read). */
  pending: number;
}

export class ReadPool {
  readonly #slabBytes: number;
  readonly #maxFree: number;
  readonly #free: Slab[] = [];
  /** Every slab this pool made, by its memory (slices of a slab share its ArrayBuffer). */
  readonly #slabs = new WeakMap<ArrayBufferLike, Slab>();
  /** Reads handed on and slabs recycled: for tests and benchmarks. */
  reads = 0;
  recycled = 0;

  constructor(options: ReadPoolOptions = {}) {
    const o = { ...DEFAULTS, ...options };
    if (!Number.isInteger(o.slabBytes) || o.slabBytes < 1024) {
      throw new RangeError(`slabBytes must be an integer >= 1024 (got ${o.slabBytes})`);
    }
    if (!Number.isInteger(o.maxFree) || o.maxFree < 0) {
      throw new RangeError(`maxFree must be an integer >= 0 (got ${o.maxFree})`);
    }
    this.#slabBytes = o.slabBytes;
    this.#maxFree = o.maxFree;
  }

  /**
   * The `onread` option of net.connect: each read's bytes go to `onBytes` as a slice of a slab
   * (valid until the link has written them: pass them to the link, or drop them, never keep them);
   * `onBytes` returning false pauses the socket, as `onread` does.
   */
  onread(onBytes: (chunk: Buffer) => boolean): {
    buffer: () => Buffer;
    callback: (n: number, buf: Uint8Array) => boolean;
  } {
    return {
      buffer: () => this.#take(),
      callback: (n, buf) => onBytes(this.#filled(buf as Buffer, n)),
    };
  }

  /** The link's socket has taken these buffers (MuxLink.onWritten): their slabs' bytes are done. */
  written(chunks: readonly Buffer[]): void {
    for (const c of chunks) {
      if (c.length === 0) continue;
      const slab = this.#slabs.get(c.buffer);
      if (slab === undefined || slab.pending <= 0) continue;
      slab.pending -= c.length;
      if (slab.pending === 0) this.#release(slab);
    }
  }

  #take(): Buffer {
    const slab = this.#free.pop();
    if (slab !== undefined) {
      this.recycled++;
      return slab.buffer;
    }
    const buffer = Buffer.allocUnsafeSlow(this.#slabBytes);
    this.#slabs.set(buffer.buffer, { buffer, pending: -1 });
    return buffer;
  }

  #filled(buf: Buffer, n: number): Buffer {
    const slab = this.#slabs.get(buf.buffer) as Slab;
    slab.pending = n;
    this.reads++;
    return buf.subarray(0, n);
  }

  #release(slab: Slab): void {
    slab.pending = -1;
    if (this.#free.length < this.#maxFree) this.#free.push(slab);
  }
}
