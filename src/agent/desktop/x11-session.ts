// One connection to an X server through the `x11` protocol library, with the few requests a screenshot
// needs as promises: the root window's size, its pixels (GetImage, ZPixmap), and the pointer image
// (XFIXES GetCursorImage). No process is spawned per screenshot.
//
// Every request has a deadline. A request that misses it, or a connection that errors or ends, makes
// the session dead: all pending requests fail at once and the owner (x11-capture.ts) opens a new one.
// Replies arrive in request order on one socket, so a session that lost a reply cannot be trusted again.

import type { X11Callback, X11Client, X11CursorImage, X11Display, X11FixesExt, X11Screen } from "x11";
import { loadX11 } from "./native-modules.ts";
import type { CursorImage, PixelLayout } from "./x11-pixels.ts";

const Z_PIXMAP = 2;
const ALL_PLANES = 0xffffffff;

export interface RootImage {
  width: number;
  height: number;
  data: Buffer;
  layout: PixelLayout;
}

/** Contract: requests may overlap; each settles exactly once, by reply, X error, deadline or death. */
export class X11Session {
  readonly #client: X11Client;
  readonly #display: X11Display;
  readonly #screen: X11Screen;
  readonly #timeoutMs: number;
  readonly #pending = new Set<(err: Error) => void>();
  #dead: Error | undefined;
  #fixes: Promise<X11FixesExt | undefined> | undefined;

  /** Connects to `display` (":N"); rejects after `timeoutMs`. */
  static async open(display: string, timeoutMs: number): Promise<X11Session> {
    const x11 = await loadX11();
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const client = x11.createClient({ display, shm: false }, (err, xDisplay) => {
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(new X11Session(client, xDisplay, timeoutMs));
      });
      // Until the session takes over, a connection error arrives through the callback above.
      client.on("error", () => {});
      timer = setTimeout(() => {
        client.stream?.destroy();
        reject(new Error(`no answer from X display ${display} in ${timeoutMs} ms`));
      }, timeoutMs);
    });
  }

  private constructor(client: X11Client, display: X11Display, timeoutMs: number) {
    this.#client = client;
    this.#display = display;
    this.#screen = display.screen[Number(client.screenNum)] ?? display.screen[0];
    this.#timeoutMs = timeoutMs;
    client.on("error", (err: Error) => this.#die(err));
    client.on("end", () => this.#die(new Error("the X server closed the connection")));
    client.stream.on("close", () => this.#die(new Error("the X connection closed")));
  }

  get alive(): boolean {
    return this.#dead === undefined;
  }

  /** The whole root window: its current size (it can change with RandR) and its pixels. */
  async grabRoot(): Promise<RootImage> {
    const root = this.#screen.root;
    const geometry = await this.#request<{ width: number; height: number }>((cb) =>
      this.#client.GetGeometry(root, cb),
    );
    const { width, height } = geometry;
    const image = await this.#request<{ depth: number; visualId: number; data: Buffer }>((cb) =>
      this.#client.GetImage(Z_PIXMAP, root, 0, 0, width, height, ALL_PLANES, cb),
    );
    return { width, height, data: image.data, layout: this.#layout(image.depth, image.visualId) };
  }

  /** The pointer's image and position, or undefined when the server has no XFIXES. */
  async cursor(): Promise<CursorImage | undefined> {
    const fixes = await this.#fixesExtension();
    if (!fixes) return undefined;
    const c = await this.#request<X11CursorImage>((cb) => fixes.GetCursorImage(cb));
    return {
      x: c.x,
      y: c.y,
      xhot: c.xhot,
      yhot: c.yhot,
      width: c.width,
      height: c.height,
      argb: c.cursorImage,
    };
  }

  /** Closes the connection; idempotent. */
  close(): void {
    this.#die(new Error("the X session was closed"));
  }

  #fixesExtension(): Promise<X11FixesExt | undefined> {
    this.#fixes ??= this.#request<X11FixesExt | undefined>((cb) =>
      this.#client.require("fixes", (err, ext) => cb(null, err ? undefined : ext)),
    );
    return this.#fixes;
  }

  #layout(depth: number, visualId: number): PixelLayout {
    const format = this.#display.format[depth];
    const visual = this.#screen.depths[depth]?.[visualId];
    if (!format || !visual)
      throw new Error(`the X server reported an unknown depth ${depth} or visual ${visualId}`);
    return {
      bitsPerPixel: format.bits_per_pixel,
      byteOrder: this.#display.image_byte_order === 1 ? 1 : 0,
      scanlinePad: format.scanline_pad,
      redMask: visual.red_mask,
      greenMask: visual.green_mask,
      blueMask: visual.blue_mask,
    };
  }

  /** Sends one request and settles by reply, X error, deadline, or the session's death. */
  #request<T>(send: (cb: X11Callback<T>) => void): Promise<T> {
    if (this.#dead) return Promise.reject(this.#dead);
    return new Promise<T>((resolve, reject) => {
      const fail = (err: Error) => settle(() => reject(err));
      const timer = setTimeout(
        () => this.#die(new Error(`the X server did not answer in ${this.#timeoutMs} ms`)),
        this.#timeoutMs,
      );
      const settle = (finish: () => void) => {
        if (!this.#pending.delete(fail)) return;
        clearTimeout(timer);
        finish();
      };
      this.#pending.add(fail);
      try {
        send((err, result) => {
          settle(() => (err ? reject(xError(err)) : resolve(result)));
          return true;
        });
      } catch (err) {
        fail(err as Error);
      }
    });
  }

  #die(err: Error): void {
    if (this.#dead) return;
    this.#dead = err;
    for (const fail of [...this.#pending]) fail(err);
    this.#client.stream?.destroy();
  }
}

function xError(err: Error & { error?: number }): Error {
  return new Error(`X error ${err.error ?? "?"}: ${err.message || "request failed"}`, { cause: err });
}
