// Types for the parts of the `x11` package (pure-JS X11 protocol client, no bundled types) that
// x11-session.ts uses. Callbacks return true to tell the library an error was handled.

declare module "x11" {
  import type { EventEmitter } from "node:events";
  import type { Duplex } from "node:stream";

  export interface X11Visual {
    red_mask: number;
    green_mask: number;
    blue_mask: number;
  }

  export interface X11Screen {
    root: number;
    pixel_width: number;
    pixel_height: number;
    root_depth: number;
    depths: Record<number, Record<number, X11Visual>>;
  }

  export interface X11Display {
    image_byte_order: number;
    format: Record<number, { bits_per_pixel: number; scanline_pad: number }>;
    screen: X11Screen[];
    client: X11Client;
  }

  export type X11Callback<T> = (
    err: (Error & { error?: number }) | null | undefined,
    result: T,
  ) => boolean | undefined;

  export interface X11CursorImage {
    x: number;
    y: number;
    width: number;
    height: number;
    xhot: number;
    yhot: number;
    /** width*height premultiplied ARGB32 pixels. */
    cursorImage: Buffer;
  }

  export interface X11FixesExt {
    GetCursorImage(cb: X11Callback<X11CursorImage>): void;
  }

  export interface X11Client extends EventEmitter {
    screenNum: number | string;
    stream: Duplex;
    GetImage(
      format: number,
      drawable: number,
      x: number,
      y: number,
      width: number,
      height: number,
      planeMask: number,
      cb: X11Callback<{ depth: number; visualId: number; data: Buffer }>,
    ): void;
    GetGeometry(drawable: number, cb: X11Callback<{ width: number; height: number; depth: number }>): void;
    require(name: "fixes", cb: (err: Error | null | undefined, ext: X11FixesExt) => void): void;
    terminate(): void;
  }

  export interface CreateClientOptions {
    display?: string;
    shm?: boolean;
  }

  export function createClient(
    options: CreateClientOptions,
    cb: (err: Error | undefined, display: X11Display) => void,
  ): X11Client;

  const x11: { createClient: typeof createClient };
  export default x11;
}
