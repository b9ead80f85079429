// The API's liveness rules for one tunnel, shared by v2 (h2-tunnel.ts) and v3 (mux-tunnel.ts): a
// PING every pingInterval, the link cut when the agent has not spoken the tunnel's protocol (its
// preface: HTTP/2 SETTINGS, or v3's HELLO) within prefaceTimeout, or has sent nothing of it for
// deadLinkTimeout. What counts as life is the tunnel's to say (`lastFrameAt`): never a WebSocket
// pong, which proves only that a WebSocket library runs.
// One timer checks both the ping schedule and the silence, at a fifth of the dead-link timeout (or
// the ping interval, if shorter); stop() is idempotent.

import type { Logger } from "../../common/logger.ts";
import type { TunnelTimings } from "../../tunnel/tunnel.ts";

/** Why a link was dropped by the liveness rules. */
export type LinkFailure = "preface_timeout" | "dead_link";

export interface LinkWatchOptions {
  timings: TunnelTimings;
  logger: Logger;
  now: () => number;
  /** What the protocol's first frames are called in logs and reasons ("HTTP/2 preface", "HELLO"). */
  prefaceName: string;
  /** When the agent last sent a frame of the tunnel's protocol. */
  lastFrameAt: () => number;
  /** Sends the protocol's PING (and the link's keepalive for proxies). */
  ping: () => void;
  /** A rule was broken: the tunnel cuts its link with `reason`. */
  fail: (kind: LinkFailure, reason: string) => void;
}

export class LinkWatch {
  readonly #o: LinkWatchOptions;
  readonly #timer: NodeJS.Timeout;
  readonly #preface: NodeJS.Timeout;
  #stopped = false;

  constructor(options: LinkWatchOptions) {
    this.#o = options;
    const { timings } = options;
    this.#preface = setTimeout(() => this.#prefaceMissing(), timings.prefaceTimeoutMs);
    this.#preface.unref();
    const check = Math.max(5, Math.min(timings.pingIntervalMs, Math.floor(timings.deadLinkTimeoutMs / 5)));
    let sinceLastPing = 0;
    this.#timer = setInterval(() => {
      sinceLastPing += check;
      if (sinceLastPing >= timings.pingIntervalMs) {
        sinceLastPing = 0;
        options.ping();
      }
      this.#checkAlive();
    }, check);
    this.#timer.unref();
  }

  /** The agent's preface came. */
  prefaceDone(): void {
    clearTimeout(this.#preface);
  }

  stop(): void {
    this.#stopped = true;
    clearInterval(this.#timer);
    clearTimeout(this.#preface);
  }

  #checkAlive(): void {
    if (this.#stopped) return;
    const silent = this.#o.now() - this.#o.lastFrameAt();
    if (silent <= this.#o.timings.deadLinkTimeoutMs) return;
    this.#o.logger.warn(
      { silent_ms: silent },
      "tunnel dead: no frame from the agent within the dead-link timeout",
    );
    this.#o.fail("dead_link", "dead link");
  }

  #prefaceMissing(): void {
    if (this.#stopped) return;
    const ms = this.#o.timings.prefaceTimeoutMs;
    this.#o.logger.warn(
      { timeout_ms: ms },
      `tunnel closed: no ${this.#o.prefaceName} from the agent in time`,
    );
    this.#o.fail("preface_timeout", `no ${this.#o.prefaceName} within ${ms} ms`);
  }
}
