// What the desktop service needs from a display server, as types: a screen capture and a clipboard.
// The implementations (x11-capture.ts, wayland-capture.ts, clipboard-*.ts) and the choice between
// them (providers.ts) import these, so no implementation imports the module that picks it.

export type ImageFormat = "png" | "jpeg";

export interface CaptureRequest {
  format: ImageFormat;
  /** JPEG quality 1-100; PNG ignores it (it is lossless). */
  quality: number;
  includeCursor: boolean;
}

export interface Screenshot {
  /** The encoded image; `format` is what the bytes are, checked by their signature. */
  data: Buffer;
  format: ImageFormat;
  width: number;
  height: number;
}

export interface ScreenCapture {
  /** Short name shown by /health: "x11", "wayland" or "none". */
  readonly name: string;
  capture(request: CaptureRequest): Promise<Screenshot>;
  /** Releases connections; idempotent. */
  close(): Promise<void>;
}

export type ClipboardContent = { type: "text"; data: string } | { type: "image"; data: Buffer };

export interface Clipboard {
  /** Short name shown by /health: "xclip", "wl-clipboard" or "none". */
  readonly name: string;
  /** The clipboard's content; an empty clipboard is empty text. Images are PNG bytes. */
  read(): Promise<ClipboardContent>;
  /** Replaces the clipboard's content; resolves once the new content is being served. */
  write(content: ClipboardContent): Promise<void>;
}

export interface DesktopProviders {
  capture: ScreenCapture;
  clipboard: Clipboard;
}
