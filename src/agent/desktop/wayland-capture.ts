// The Wayland screen capture: runs `grim` (wlr-screencopy) with its output on stdout. grim encodes PNG
// or JPEG itself and can draw the cursor (-c), so its bytes are served as they come; they are only
// re-encoded when their signature shows another format than the one asked for.

import type { CaptureRequest, ScreenCapture, Screenshot } from "./desktop-types.ts";
import { CaptureFailedError } from "./errors.ts";
import { convertImage } from "./image-encode.ts";
import { runTool } from "./run-tool.ts";

export interface WaylandCaptureOptions {
  /** Environment for grim: WAYLAND_DISPLAY, XDG_RUNTIME_DIR. */
  env: NodeJS.ProcessEnv;
  /** Deadline for one grim run. */
  timeoutMs: number;
  /** grim's path or name when it is not on PATH. */
  command?: string;
}

/** Most bytes accepted from grim: an 8K screen as uncompressed RGBA, far above any real PNG. */
const MAX_IMAGE_BYTES = 7680 * 4320 * 4;
const PNG_COMPRESSION_LEVEL = "1";

export class WaylandCapture implements ScreenCapture {
  readonly name = "wayland";
  readonly #options: WaylandCaptureOptions;

  constructor(options: WaylandCaptureOptions) {
    this.#options = options;
  }

  async capture(request: CaptureRequest): Promise<Screenshot> {
    const command = this.#options.command ?? "grim";
    const result = await runTool({
      command,
      args: grimArgs(request),
      env: this.#options.env,
      timeoutMs: this.#options.timeoutMs,
      maxOutputBytes: MAX_IMAGE_BYTES,
    }).catch((err: unknown) => {
      throw new CaptureFailedError((err as Error).message, { cause: err });
    });
    if (result.code !== 0)
      throw new CaptureFailedError(`${command}: ${result.stderr || `exit code ${result.code}`}`);
    try {
      return await convertImage(result.stdout, request);
    } catch (err) {
      throw new CaptureFailedError(`${command} wrote no readable image: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  /** Nothing to release: each capture is its own grim run. */
  async close(): Promise<void> {}
}

function grimArgs(request: CaptureRequest): string[] {
  const format =
    request.format === "png"
      ? ["-t", "png", "-l", PNG_COMPRESSION_LEVEL]
      : ["-t", "jpeg", "-q", String(request.quality)];
  return [...format, ...(request.includeCursor ? ["-c"] : []), "-"];
}
