// Copies a readable into a writable with a bounded buffer of its own, for large bodies.
//
// Why not pipe(): a pipe pauses the source whenever the destination is past its high-water mark,
// which for a socket or an HTTP answer is 16 KiB, i.e. after every 64 KiB chunk a socket reads; the
// round trip through the event loop per chunk caps one transfer's throughput. Here the source
// pauses only once `bufferBytes` wait in the destination, and resumes on its `drain`.

import type { Readable, Writable } from "node:stream";

/** Starts the copy; the destination ends with the source, and its close destroys the source. */
export function pump(source: Readable, dest: Writable, bufferBytes: number): void {
  source.on("data", (chunk: Buffer) => {
    dest.write(chunk);
    if (dest.writableLength >= bufferBytes && !source.isPaused()) {
      source.pause();
      dest.once("drain", () => source.resume());
    }
  });
  source.once("end", () => dest.end());
  dest.once("close", () => source.destroy());
}
