// The desktop service's errors. Each failure has its own class with a stable RD_ERR_DESKTOP_* code that
// callers (the API behind the tunnel, the CLI) match on, and this module holds the one table that maps
// those codes to HTTP status, so the service never decides a status anywhere else.

import { RevdialError } from "../../common/errors.ts";

/** Base of every desktop error. */
export class DesktopError extends RevdialError {}

/** Neither WAYLAND_DISPLAY nor DISPLAY is set (or the X server is gone): there is no screen to serve. */
export class NoDisplayError extends DesktopError {
  constructor(options?: { cause?: unknown }) {
    super("RD_ERR_DESKTOP_NO_DISPLAY", "no display available", options);
  }
}

/** The screen could not be read or encoded. */
export class CaptureFailedError extends DesktopError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("RD_ERR_DESKTOP_CAPTURE_FAILED", `screenshot failed: ${message}`, options);
  }
}

/** The clipboard tool failed, timed out, or is not installed. */
export class ClipboardFailedError extends DesktopError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("RD_ERR_DESKTOP_CLIPBOARD_FAILED", `clipboard failed: ${message}`, options);
  }
}

/** A query parameter or body field has the wrong value or shape; the message names it. */
export class BadRequestError extends DesktopError {
  constructor(message: string) {
    super("RD_ERR_DESKTOP_BAD_REQUEST", message);
  }
}

/** The request body is not JSON at all. */
export class InvalidJsonError extends DesktopError {
  constructor(options?: { cause?: unknown }) {
    super("RD_ERR_DESKTOP_INVALID_JSON", "Invalid JSON", options);
  }
}

/** The request body is larger than the service's bodyLimit. */
export class BodyTooLargeError extends DesktopError {
  constructor(limit: number) {
    super("RD_ERR_DESKTOP_BODY_TOO_LARGE", `request body is larger than ${limit} bytes`);
  }
}

/** Too many screenshots are already being taken or waiting; the caller should retry later. */
export class DesktopBusyError extends DesktopError {
  constructor(what: string) {
    super("RD_ERR_DESKTOP_BUSY", `too many ${what} requests in progress; retry later`);
  }
}

/** An external tool (xclip, grim, wl-paste...) could not be run to completion. */
export class ToolFailedError extends DesktopError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("RD_ERR_DESKTOP_TOOL_FAILED", message, options);
  }
}

/** No route for this method and path. */
export class RouteNotFoundError extends DesktopError {
  constructor(method: string, path: string) {
    super("RD_ERR_DESKTOP_NOT_FOUND", `no route ${method} ${path}`);
  }
}

/** The path exists but not for this method. */
export class MethodNotAllowedError extends DesktopError {
  readonly allow: string;

  constructor(method: string, path: string, allow: string) {
    super("RD_ERR_DESKTOP_METHOD_NOT_ALLOWED", `${method} is not allowed on ${path} (use ${allow})`);
    this.allow = allow;
  }
}

/** HTTP status for each desktop error code; anything not listed is a 500. */
export const DESKTOP_ERROR_STATUS: Readonly<Record<string, number>> = Object.freeze({
  RD_ERR_DESKTOP_NO_DISPLAY: 501,
  RD_ERR_DESKTOP_CAPTURE_FAILED: 500,
  RD_ERR_DESKTOP_CLIPBOARD_FAILED: 500,
  RD_ERR_DESKTOP_BAD_REQUEST: 400,
  RD_ERR_DESKTOP_INVALID_JSON: 400,
  RD_ERR_DESKTOP_BODY_TOO_LARGE: 413,
  RD_ERR_DESKTOP_BUSY: 503,
  RD_ERR_DESKTOP_TOOL_FAILED: 500,
  RD_ERR_DESKTOP_NOT_FOUND: 404,
  RD_ERR_DESKTOP_METHOD_NOT_ALLOWED: 405,
});

/** The HTTP status for `err`: its code's entry in DESKTOP_ERROR_STATUS, else 500. */
export function desktopStatusOf(err: unknown): number {
  return err instanceof RevdialError ? (DESKTOP_ERROR_STATUS[err.code] ?? 500) : 500;
}
