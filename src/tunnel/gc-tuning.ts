// One V8 setting for processes that move bulk bytes through sockets: both ends of a v3 link.
//
// Why: every socket read is a fresh buffer outside the JavaScript heap, and V8 by default starts a
// full mark-compact each time such external memory has grown by 64 MiB, however small the heap. A
// 64 MiB body through the API cost one mark-compact per body (5-20 ms paused and 10-30 ms of
// marking steps on the server's 28 MB heap: 22% of its main thread during the transfer, plus the
// marking threads on the same two cores). With external memory counted in the heap's global limit
// instead, those buffers, which die young, are freed by the scavenges that run anyway (measured:
// no mark-compact in 40 bodies of 64 MiB, the server's CPU per body 100-150 ms -> 35-40 ms).
// Idempotent; a process-wide flag, set once however many links call it.

import v8 from "node:v8";

/** V8 before 13 does not know the flag (it would print an error): Node 22's V8 is 12.4. */
const HAS_FLAG = Number(process.versions.v8.split(".")[0]) >= 13;

let tuned = !HAS_FLAG;

/** Counts external memory (socket buffers) in V8's global heap limit. Never throws. */
export function tuneGcForBulk(): void {
  if (tuned) return;
  tuned = true;
  v8.setFlagsFromString("--external-memory-accounted-in-global-limit");
}
