// The agent's side of protocol v3: each stream the API opens becomes one socket to a target of the
// agent's map, and the agent moves bytes both ways, parsing nothing. The API's HTTP client keeps
// these streams as pooled keep-alive connections, so a call costs the agent two socket writes and
// no HTTP work; raw streams (the API's open()) are the same thing.
//
// A target the map does not allow: RESET REFUSED (the API answers 403). One that cannot be reached:
// RESET UNREACHABLE (502). Backpressure both ways: the stream's credit pauses the target socket, and
// the socket's buffer holds back the credit the API gets (MuxStream.consumed).
//
// The target's bytes are read into recycled slabs (read-pool.ts): they go nowhere but the link, so a
// slab is known to be free once the link has written them (MuxLink.onWritten, wired in attach()).

import net from "node:net";
import type { Logger } from "../common/logger.ts";
import { MUX_CODE } from "../tunnel/mux-frames.ts";
import type { MuxLink } from "../tunnel/mux-link.ts";
import type { MuxSession, MuxStream } from "../tunnel/mux-session.ts";
import { ReadPool } from "../tunnel/read-pool.ts";
import { formatTargetAddress, type TargetAddress, type TargetMap } from "./target-map.ts";

export interface MuxPumpOptions {
  targets: TargetMap;
  logger: Logger;
}

export class MuxPump {
  readonly #targets: TargetMap;
  readonly #log: Logger;
  readonly #sockets = new Set<net.Socket>();
  readonly #pool = new ReadPool();

  constructor(options: MuxPumpOptions) {
    this.#targets = options.targets;
    this.#log = options.logger;
  }

  /** Every link whose session this pump serves must be attached: its writes free the read slabs. */
  attach(link: MuxLink): void {
    link.onWritten((chunks) => this.#pool.written(chunks));
  }

  /** Target reads so far, and how many of them went into a recycled slab. */
  get readStats(): { reads: number; recycled: number } {
    return { reads: this.#pool.reads, recycled: this.#pool.recycled };
  }

  /** Serves one stream the API opened. Never throws. */
  open(session: MuxSession, stream: MuxStream, name: string): void {
    const target = this.#targets.resolve(name);
    if (!target) {
      stream.reset(MUX_CODE.REFUSED, `target "${name}" is not allowed by this agent`);
      return;
    }
    this.#pipe(session, stream, target);
  }

  #pipe(session: MuxSession, stream: MuxStream, target: TargetAddress): void {
    // The stream's credit pauses the socket (false from onread), its onDrain resumes it.
    const onread = this.#pool.onread((chunk) => stream.write(chunk));
    const socket =
      target.kind === "tcp"
        ? net.connect({ port: target.port, host: target.host, onread })
        : net.connect({ path: target.path, onread });
    this.#sockets.add(socket);
    socket.setNoDelay(true);
    let connected = false;
    /** The API's bytes the socket still buffers: their credit goes back once it drains. */
    let held = 0;
    socket.once("connect", () => {
      connected = true;
      session.opened(stream, target.kind === "tcp" ? formatTargetAddress(target) : "localhost");
    });
    stream.onData = (chunk) => {
      if (socket.write(chunk)) stream.consumed(chunk.length);
      else held += chunk.length;
    };
    socket.on("drain", () => {
      if (held === 0) return;
      const n = held;
      held = 0;
      stream.consumed(n);
    });
    stream.onEnd = () => socket.end();
    stream.onReset = () => socket.destroy();
    stream.onDrain = () => socket.resume();
    socket.on("end", () => stream.end());
    socket.on("error", (err) => {
      if (connected) stream.reset(MUX_CODE.INTERNAL, `target ${formatTargetAddress(target)}: ${err.message}`);
      else {
        this.#log.debug({ err: err.message, target: formatTargetAddress(target) }, "target unreachable");
        stream.reset(
          MUX_CODE.UNREACHABLE,
          `target ${formatTargetAddress(target)} unreachable: ${err.message}`,
        );
      }
    });
    socket.once("close", () => {
      this.#sockets.delete(socket);
      // The target is gone while the API may still write: it must know, not wait for credit.
      if (!stream.closed) stream.reset(MUX_CODE.CANCEL, "target closed the connection");
    });
  }

  /** Target sockets open now. */
  get size(): number {
    return this.#sockets.size;
  }

  /** Cuts every target socket. */
  close(): void {
    for (const s of this.#sockets) s.destroy();
    this.#sockets.clear();
  }
}
