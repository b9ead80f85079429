// Copies a readable into a writable with a bounded buffer of its own, for large bodies.
//
// Why not pipe(): a pipe pauses the source whenever the destination is past its high-water mark,
// which for a socket or an HTTP answer is 16 KiB, i.e. after every 64 KiB chunk a socket reads; the
// round trip through the event loop per chunk caps one transfer's throughput. Here the source
// pauses only once `bufferBytes` wait in the destination, and resumes on its `drain`.
//
// `cork`: the socket under the destination (an HTTP answer's), corked until the end of the turn
// in which a chunk came, so every chunk of the turn leaves in one writev (Node's HTTP answer would
// write each on its own). The socket is corked, not the answer: a corked answer gathers chunked
// bodies into a buffer of its own that end() writes after the last chunk (a corrupt answer).

import type { Socket } from "node:net";
import type { Readable, Writable } from "node:stream";

/** Starts the copy; the destination ends with the source, and its close destroys the source. */
export function pump(
  source: Readable,
  dest: Writable,
  bufferBytes: number,
  cork?: () => Socket | null,
): void {
  let corked: Socket | null = null;
  const uncork = () => {
    const socket = corked;
    corked = null;
    if (socket && socket.writableCorked > 0) socket.uncork();
  };
  source.on("data", (chunk: Buffer) => {
    if (cork && corked === null) {
      corked = cork();
      if (corked) {
        corked.cork();
        setImmediate(uncork);
      }
    }
    dest.write(chunk);
    if (dest.writableLength >= bufferBytes && !source.isPaused()) {
      source.pause();
      dest.once("drain", () => source.resume());
    }
  });
  source.once("end", () => {
    // end() uncorks the socket whole; the turn's uncork must not touch it after that.
    corked = null;
    dest.end();
  });
  dest.once("close", () => source.destroy());
}
