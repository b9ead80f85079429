// The choice of the desktop service's screen capture and clipboard (their interfaces are in
// desktop-types.ts) from the environment: Wayland (grim, wl-clipboard)
// when WAYLAND_DISPLAY is set, X11 (the x11 protocol library, xclip) when DISPLAY is set, and a
// "none" pair that fails every call with NoDisplayError when neither is. The choice is made once, at
// construction; a sandbox does not change display server while its agent runs.

import type { Logger } from "../../common/logger.ts";
import { WaylandClipboard } from "./clipboard-wayland.ts";
import { X11Clipboard } from "./clipboard-x11.ts";
import type { Clipboard, DesktopProviders, ScreenCapture } from "./desktop-types.ts";
import { NoDisplayError } from "./errors.ts";
import { WaylandCapture } from "./wayland-capture.ts";
import { X11Capture } from "./x11-capture.ts";

export interface ProviderOptions {
  /** X11 display (":N"); overrides DISPLAY. */
  display: string | undefined;
  /** The environment tools run in and the display is chosen from. */
  env: NodeJS.ProcessEnv;
  logger: Logger;
  /** Deadline for one tool run or X request round. */
  toolTimeoutMs: number;
  /** Cap on a clipboard read, in bytes. */
  maxClipboardBytes: number;
}

/** Picks the providers for the environment (see header). */
export function chooseProviders(options: ProviderOptions): DesktopProviders {
  const { env } = options;
  if (!options.display && env.WAYLAND_DISPLAY) return waylandProviders(options);
  const display = options.display ?? env.DISPLAY;
  if (display) return x11Providers({ ...options, display });
  return { capture: noCapture(), clipboard: noClipboard() };
}

function waylandProviders(options: ProviderOptions): DesktopProviders {
  const common = { env: options.env, timeoutMs: options.toolTimeoutMs, maxBytes: options.maxClipboardBytes };
  return { capture: new WaylandCapture(common), clipboard: new WaylandClipboard(common) };
}

function x11Providers(options: ProviderOptions & { display: string }): DesktopProviders {
  const env: NodeJS.ProcessEnv = { ...options.env, DISPLAY: options.display };
  delete env.WAYLAND_DISPLAY;
  const logger = options.logger;
  return {
    capture: new X11Capture({ display: options.display, logger, timeoutMs: options.toolTimeoutMs }),
    clipboard: new X11Clipboard({
      env,
      timeoutMs: options.toolTimeoutMs,
      maxBytes: options.maxClipboardBytes,
    }),
  };
}

function noCapture(): ScreenCapture {
  return {
    name: "none",
    capture: () => Promise.reject(new NoDisplayError()),
    close: () => Promise.resolve(),
  };
}

function noClipboard(): Clipboard {
  const fail = () => Promise.reject(new NoDisplayError());
  return { name: "none", read: fail, write: fail };
}
