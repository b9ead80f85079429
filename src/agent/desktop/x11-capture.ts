// The X11 screen capture: reads the root window over one long-lived X connection (x11-session.ts),
// converts its pixels to RGB, optionally draws the pointer from XFIXES over them, and encodes the result
// with sharp. The connection is opened on first use and reopened on the next capture after it dies
// (the X server restarted, or a request missed its deadline), so a passing fault costs one screenshot.

import type { Logger } from "../../common/logger.ts";
import type { CaptureRequest, ScreenCapture, Screenshot } from "./desktop-types.ts";
import { CaptureFailedError, NoDisplayError } from "./errors.ts";
import { encodeRaw } from "./image-encode.ts";
import { drawCursor, zpixmapToRgb } from "./x11-pixels.ts";
import { type RootImage, X11Session } from "./x11-session.ts";

export interface X11CaptureOptions {
  /** The X display, ":N" or "host:N". */
  display: string;
  logger: Logger;
  /** Deadline for connecting and for each X request. */
  timeoutMs: number;
}

/** Contract: captures may overlap; they share the one connection, and the X server answers in order. */
export class X11Capture implements ScreenCapture {
  readonly name = "x11";
  readonly #options: X11CaptureOptions;
  #current: X11Session | undefined;
  #opening: Promise<X11Session> | undefined;
  #closed = false;

  constructor(options: X11CaptureOptions) {
    this.#options = options;
  }

  async capture(request: CaptureRequest): Promise<Screenshot> {
    const session = await this.#connect();
    const [image, cursor] = await Promise.all([
      session.grabRoot(),
      request.includeCursor ? session.cursor() : undefined,
    ]).catch((err: unknown) => {
      throw new CaptureFailedError(`reading display ${this.#options.display}: ${(err as Error).message}`, {
        cause: err,
      });
    });
    const rgb = toRgb(image);
    if (cursor) drawCursor(rgb, image.width, image.height, cursor);
    try {
      return await encodeRaw({ pixels: rgb, width: image.width, height: image.height, channels: 3 }, request);
    } catch (err) {
      throw new CaptureFailedError(`encoding ${request.format}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Closes the X connection; idempotent. A connection still being opened is closed when it opens. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#current?.close();
    this.#current = undefined;
  }

  /** The live session; one new connection at a time when there is none or the last one died. */
  #connect(): Promise<X11Session> {
    if (this.#closed) return Promise.reject(new CaptureFailedError("the desktop service is closed"));
    if (this.#current?.alive) return Promise.resolve(this.#current);
    this.#opening ??= this.#open().finally(() => {
      this.#opening = undefined;
    });
    return this.#opening;
  }

  async #open(): Promise<X11Session> {
    const { display, logger, timeoutMs } = this.#options;
    if (this.#current) logger.warn({ display }, "X connection lost; reconnecting");
    let session: X11Session;
    try {
      session = await X11Session.open(display, timeoutMs);
    } catch (err) {
      logger.warn({ display, err }, "cannot connect to the X display");
      throw new NoDisplayError({ cause: err });
    }
    if (this.#closed) {
      session.close();
      throw new CaptureFailedError("the desktop service is closed");
    }
    this.#current = session;
    return session;
  }
}

function toRgb(image: RootImage): Buffer {
  try {
    return zpixmapToRgb(image.data, image.width, image.height, image.layout);
  } catch (err) {
    throw new CaptureFailedError((err as Error).message, { cause: err });
  }
}
